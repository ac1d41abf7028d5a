package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"agentplane/server/internal/fleet"
	"agentplane/server/internal/pki"
	"agentplane/server/internal/replica"
	"agentplane/server/internal/rpc"
)

// syncBuffer is a log sink safe for concurrent use.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// testConfig is the flags' defaults with fresh loopback ports and data dir.
func testConfig(t *testing.T) config {
	return config{
		dataDir: t.TempDir(), grpcAddr: "127.0.0.1:0", httpAddr: "127.0.0.1:0", advertise: "127.0.0.1",
		heartbeat: 10 * time.Second, lostAfter: 30 * time.Second, shutdownWait: 5 * time.Second,
		agentCertTTL: pki.DefaultAgentCertTTL, agentMsgRate: rpc.DefaultAgentMsgsPerSec, agentMsgBurst: rpc.DefaultAgentMsgBurst,
		agentMaxStreams: fleet.DefaultMaxStreamsPerHost, agentReplacements: fleet.DefaultMaxReplacementsPerMin,
		maxHandshakes: rpc.DefaultMaxHandshakes, replicaLease: replica.DefaultLease,
	}
}

// running is a server run by run in the test's process.
type running struct {
	logs   *syncBuffer
	cancel context.CancelFunc // stops it
	done   chan error         // run's error, once it returned
}

// startServer runs the server with c until it has started, and stops it
// when the test ends.
func startServer(t *testing.T, c config) running {
	t.Helper()
	logs := &syncBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	done := make(chan error, 1)
	go func() { done <- run(ctx, c, zerolog.New(logs)) }()
	deadline := time.Now().Add(60 * time.Second)
	for started := ""; started == ""; started, _ = logField(logs.String(), "server started", "http_addr") {
		if time.Now().After(deadline) {
			t.Fatalf("the server did not start:\n%s", logs.String())
		}
		select {
		case err := <-done:
			t.Fatalf("run = %v:\n%s", err, logs.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
	return running{logs: logs, cancel: cancel, done: done}
}

// stop stops the server and waits for run to return.
func (r running) stop(t *testing.T) {
	t.Helper()
	r.cancel()
	select {
	case err := <-r.done:
		if err != nil && !errors.Is(err, context.Canceled) {
			t.Fatalf("run = %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the server did not stop")
	}
}

// logField returns field of the first JSON log line whose message starts
// with msg, and its level.
func logField(logs, msg, field string) (value, level string) {
	for _, line := range strings.Split(logs, "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) != nil {
			continue
		}
		if s, _ := m["message"].(string); strings.HasPrefix(s, msg) {
			v, _ := m[field].(string)
			l, _ := m["level"].(string)
			return v, l
		}
	}
	return "", ""
}

func get(url string) (int, string, error) {
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true, TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, // only a status is read
	}}
	resp, err := c.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

func TestPprofServedWhileRunningOnly(t *testing.T) {
	c := testConfig(t)
	c.pprofAddr = "127.0.0.1:0"
	srv := startServer(t, c)
	logs := srv.logs
	httpAddr, _ := logField(logs.String(), "server started", "http_addr")
	addr, level := logField(logs.String(), "pprof enabled", "pprof_addr")
	if addr == "" || level != "warn" {
		t.Fatalf("no WARN line with pprof_addr in the log:\n%s", logs.String())
	}
	code, body, err := get("http://" + addr + "/debug/pprof/goroutine?debug=1")
	if err != nil || code != http.StatusOK || !strings.Contains(body, "agentplane-server.serveGRPC+") {
		t.Fatalf("goroutine profile: %d, %v:\n%.3000s", code, err, body)
	}
	// Not on the API listener.
	if code, body, err := get("https://" + httpAddr + "/debug/pprof/goroutine?debug=1"); err != nil || code == http.StatusOK || strings.Contains(body, "goroutine profile") {
		t.Fatalf("REST listener answered /debug/pprof/goroutine: %d, %v: %.200s", code, err, body)
	}
	srv.stop(t)
	if _, _, err := get("http://" + addr + "/debug/pprof/"); err == nil {
		t.Fatal("pprof still served after the server stopped")
	}
}

func TestPprofRefusesNonLoopback(t *testing.T) {
	for _, addr := range []string{":0", "0.0.0.0:0", "[::]:0"} {
		c := testConfig(t)
		c.pprofAddr = addr
		err := run(context.Background(), c, zerolog.Nop())
		if err == nil || !strings.Contains(err.Error(), "--pprof-addr") || !strings.Contains(err.Error(), "not a loopback address") {
			t.Errorf("--pprof-addr %s: run = %v, want a refusal", addr, err)
		}
	}
}

func TestMetricsAddrRefused(t *testing.T) {
	c := testConfig(t)
	c.metricsAddr = "127.0.0.1:99999"
	if err := run(context.Background(), c, zerolog.Nop()); err == nil || !strings.Contains(err.Error(), "--metrics-addr") {
		t.Errorf("--metrics-addr %s: run = %v, want its error", c.metricsAddr, err)
	}
}
