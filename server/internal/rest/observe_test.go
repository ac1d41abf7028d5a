package rest

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// requests records what the handler reports.
type requests struct {
	mu   sync.Mutex
	seen []string
}

func (r *requests) ObserveRequest(method, route string, code int, took time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if took < 0 {
		code = -1
	}
	r.seen = append(r.seen, method+" "+route+" "+http.StatusText(code))
}

// Each request is reported once, with the route template that served it,
// not its path; one refused before routing or routed nowhere says so.
func TestObserver(t *testing.T) {
	obs := &requests{}
	env := &testEnv{hosts: &fakeHosts{}, tasks: &fakeTasks{}, logs: &syncBuffer{}}
	env.srv = httptest.NewServer(NewHandler(Config{Hosts: env.hosts, Tasks: env.tasks, Users: fakeUsers{},
		Log: zerolog.New(env.logs), MaxBodyBytes: 1024, Observer: obs}))
	t.Cleanup(env.srv.Close)

	env.do(t, req{method: http.MethodPost, path: fmt.Sprintf("/api/v2/compute/hosts/%d/agent/stop", hostOK), user: "admin"})
	env.do(t, req{method: http.MethodPost, path: fmt.Sprintf("/compute/hosts/%d/agent/stop", hostOK), user: "admin"})
	env.do(t, req{method: http.MethodGet, path: "/api/v2/tasks/instances/7", user: "nobody"})
	env.do(t, req{method: http.MethodGet, path: "/api/v2/no/such/thing", user: "admin"})
	want := []string{
		"POST /api/v2/compute/hosts/{hostId}/agent/stop OK",
		"POST /compute/hosts/{hostId}/agent/stop OK",
		"GET  Unauthorized",
		"GET / Not Found",
	}
	obs.mu.Lock()
	defer obs.mu.Unlock()
	if len(obs.seen) != len(want) {
		t.Fatalf("observed %q, want %q", obs.seen, want)
	}
	for i := range want {
		if obs.seen[i] != want[i] {
			t.Errorf("request %d observed as %q, want %q", i, obs.seen[i], want[i])
		}
	}
}
