package metrics

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

func TestBounded(t *testing.T) {
	b := NewBounded(3)
	for _, v := range []string{"a", "b", "a", "c"} {
		if got := b.Value(v); got != v {
			t.Errorf("Value(%q) = %q within the bound", v, got)
		}
	}
	if got := b.Value("d"); got != Other {
		t.Errorf("Value(d) past the bound = %q, want %q", got, Other)
	}
	if got := b.Value("a"); got != "a" {
		t.Errorf("Value(a) = %q, want a kept", got)
	}
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() { b.Value(fmt.Sprint(i)) })
	}
	wg.Wait()
	if len(b.seen) != 3 {
		t.Errorf("%d values kept, want 3", len(b.seen))
	}
}

func TestServe(t *testing.T) {
	reg := NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Namespace: Namespace, Name: "test_events_total", Help: "Test events."})
	reg.MustRegister(c)
	c.Add(3)
	s, err := Start(context.Background(), "127.0.0.1:0", reg, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + s.Addr() + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	code, body := get(Path)
	if code != http.StatusOK {
		t.Fatalf("GET %s: %d", Path, code)
	}
	for _, want := range []string{"agentplane_test_events_total 3", "go_goroutines ", "process_resident_memory_bytes ", "promhttp_metric_handler_errors_total"} {
		if !strings.Contains(body, want) {
			t.Errorf("scrape lacks %q", want)
		}
	}
	if code, _ := get("/debug/pprof/"); code != http.StatusNotFound {
		t.Errorf("GET /debug/pprof/ on the metrics listener: %d, want 404", code)
	}
	if err := s.Close(); err != nil {
		t.Error(err)
	}
	if _, err := http.Get("http://" + s.Addr() + Path); err == nil {
		t.Error("metrics still served after Close")
	}

	stop, err := Serve(context.Background(), "", reg, zerolog.Nop())
	if err != nil || stop == nil {
		t.Fatalf("Serve with no address: %v", err)
	}
	stop()
	if _, err := Serve(context.Background(), "127.0.0.1:99999", reg, zerolog.Nop()); err == nil || !strings.Contains(err.Error(), "--metrics-addr") {
		t.Errorf("Serve on a bad address: %v, want a --metrics-addr error", err)
	}
}
