// Package rest is the OCP-compatible REST adapter: it serves OCP's paths
// (bare and under /api/v2) over net/http, authenticates callers with HTTP
// Basic, translates between JSON and the domain types, and renders OCP's
// success and error envelopes. Authorization stays in the domain services.
package rest

import (
	"context"
	"net/http"
	"time"

	"github.com/rs/zerolog"

	"agentplane/server/auth"
	"agentplane/server/host"
	"agentplane/server/task"
)

// Hosts is what the adapter needs from the host service. Each method checks
// the caller's role itself (auth.Require).
type Hosts interface {
	StopAgent(ctx context.Context, hostID int64) (*task.Task, error)
	GetHost(ctx context.Context, id int64) (*host.Host, error)
	ListHosts(ctx context.Context, q host.ListQuery) (host.Page, error)
}

// Tasks is what the adapter needs from the task service.
type Tasks interface {
	GetTask(ctx context.Context, id int64) (*task.Task, error)
}

// Users is what the adapter needs from the user service (auth.Service).
type Users interface {
	Authenticate(ctx context.Context, username, password string) (auth.Principal, error)
	CreateUser(ctx context.Context, username, password string, roles []auth.Role) (auth.User, error)
}

var _ Users = (*auth.Service)(nil)

// DefaultMaxBodyBytes is the request body limit when Config leaves it zero.
const DefaultMaxBodyBytes = 1 << 20

// Config wires the handler. Hosts, Tasks and Users are required.
type Config struct {
	Hosts Hosts
	Tasks Tasks
	Users Users
	// Log receives the access log and errors; each request's logger (with
	// trace_id) is also put in the request context for zerolog.Ctx.
	Log zerolog.Logger
	// MaxBodyBytes bounds request bodies; larger ones get 413.
	MaxBodyBytes int64
	// Now is the clock for timestamps and durations; default time.Now.
	Now func() time.Time
}

// apiPrefix is where OCP serves its API; every route is also served bare.
const apiPrefix = "/api/v2"

// NewHandler returns the REST API handler.
func NewHandler(cfg Config) http.Handler {
	if cfg.MaxBodyBytes <= 0 {
		cfg.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	s := &server{cfg: cfg, mux: http.NewServeMux()}
	s.routes()
	return s
}

// server is the handler NewHandler returns.
type server struct {
	cfg Config
	mux *http.ServeMux
}

// route is one endpoint.
type route struct {
	method, path string
	h            http.HandlerFunc
}

// routes registers every endpoint at its bare path and under apiPrefix, a
// 405 handler per path for the other methods, and a 404 handler for the
// rest, so that every answer is an OCP envelope.
func (s *server) routes() {
	rs := []route{
		{http.MethodPost, "/compute/hosts/{hostId}/agent/stop", s.stopAgent},
		{http.MethodGet, "/compute/hosts", s.listHosts},
		{http.MethodGet, "/compute/hosts/{hostId}", s.getHost},
		{http.MethodGet, "/tasks/instances/{taskInstanceId}", s.getTask},
		{http.MethodPost, "/iam/users", s.createUser},
	}
	allow := map[string][]string{}
	var paths []string
	for _, r := range rs {
		if _, ok := allow[r.path]; !ok {
			paths = append(paths, r.path)
		}
		allow[r.path] = append(allow[r.path], r.method)
		if r.method == http.MethodGet {
			allow[r.path] = append(allow[r.path], http.MethodHead)
		}
		for _, prefix := range []string{"", apiPrefix} {
			s.mux.HandleFunc(r.method+" "+prefix+r.path, r.h)
		}
	}
	for _, p := range paths {
		h := s.methodNotAllowed(allow[p])
		for _, prefix := range []string{"", apiPrefix} {
			s.mux.HandleFunc(prefix+p, h)
		}
	}
	s.mux.HandleFunc("/", s.notFound)
}
