package pprofserver

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/rs/zerolog"
)

func TestCheckAddr(t *testing.T) {
	for _, ok := range []string{"127.0.0.1:6060", "127.0.0.1:0", "[::1]:6060", "localhost:6060", "127.1.2.3:1"} {
		if err := CheckAddr(ok); err != nil {
			t.Errorf("CheckAddr(%q) = %v, want nil", ok, err)
		}
	}
	for _, bad := range []string{":6060", "0.0.0.0:6060", "[::]:6060", "10.0.0.1:6060", "example.com:6060", "127.0.0.1", ""} {
		if err := CheckAddr(bad); err == nil {
			t.Errorf("CheckAddr(%q) = nil, want an error", bad)
		}
	}
}

func TestStartRefusesNonLoopback(t *testing.T) {
	if s, err := Start(t.Context(), "0.0.0.0:0", zerolog.Nop()); err == nil {
		s.Close()
		t.Fatal("Start listened on 0.0.0.0")
	} else if !strings.Contains(err.Error(), "loopback") {
		t.Fatalf("err = %v, want it to say loopback", err)
	}
}

// get fetches path from a pprof server at addr without keeping the
// connection (so nothing outlives the test).
func get(t *testing.T, addr, path string) (int, []byte) {
	t.Helper()
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get("http://" + addr + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, b
}

func TestServesProfilesUntilClosed(t *testing.T) {
	var logs bytes.Buffer
	s, err := Start(t.Context(), "127.0.0.1:0", zerolog.New(&logs))
	if err != nil {
		t.Fatal(err)
	}
	addr := s.Addr()
	var line struct {
		Level string `json:"level"`
		Addr  string `json:"pprof_addr"`
	}
	if err := json.Unmarshal(logs.Bytes(), &line); err != nil || line.Level != "warn" || line.Addr != addr {
		t.Fatalf("log %q: want one warn line naming %s", logs.String(), addr)
	}
	for path, want := range map[string]string{
		"/debug/pprof/":                     "goroutine",
		"/debug/pprof/goroutine?debug=1":    "goroutine profile",
		"/debug/pprof/heap?debug=1":         "heap profile",
		"/debug/pprof/profile?seconds=1":    "", // gzipped protobuf
		"/debug/pprof/trace?seconds=0.1":    "",
		"/debug/pprof/symbol":               "num_symbols",
		"/debug/pprof/allocs?debug=1":       "heap profile",
		"/debug/pprof/threadcreate?debug=1": "threadcreate profile",
	} {
		code, body := get(t, addr, path)
		if code != http.StatusOK || len(body) == 0 || !strings.Contains(string(body), want) {
			t.Errorf("GET %s = %d, %d bytes (%.80q), want 200 with %q", path, code, len(body), body, want)
		}
	}
	// The command line may hold a secret: not served.
	if code, _ := get(t, addr, "/debug/pprof/cmdline"); code != http.StatusNotFound {
		t.Errorf("GET /debug/pprof/cmdline = %d, want 404", code)
	}
	// Nothing else is served there.
	if code, _ := get(t, addr, "/api/v2/compute/hosts"); code != http.StatusNotFound {
		t.Errorf("GET /api/v2/compute/hosts = %d, want 404", code)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := http.Get("http://" + addr + "/debug/pprof/"); err == nil {
		t.Fatal("pprof still answers after Close")
	}
}
