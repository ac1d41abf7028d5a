// Package rest is the OCP-compatible REST adapter: it serves OCP's paths
// (bare and under /api/v2) over net/http, authenticates callers (HTTP Basic
// or an OCP access-key signature, through auth.Authenticator), translates
// between JSON and the domain types (the interfaces of package api), and
// renders OCP's success and error envelopes, mapping errors once
// (apiErrorOf). Authorization stays in the domain services.
package rest

import (
	"net/http"
	"time"

	"github.com/rs/zerolog"

	"agentplane/server/internal/api"
	"agentplane/server/internal/auth"
)

// DefaultMaxBodyBytes is the request body limit when Config leaves it zero.
const DefaultMaxBodyBytes = 1 << 20

// Config wires the handler. Hosts, Tasks and Users are required.
type Config struct {
	Hosts api.Hosts
	Tasks api.Tasks
	Users api.Users
	// Log receives the access log and errors; each request's logger (with
	// trace_id) is also put in the request context for zerolog.Ctx.
	Log zerolog.Logger
	// MaxBodyBytes bounds request bodies; larger ones get 413.
	MaxBodyBytes int64
	// Now is the clock for timestamps and durations; default time.Now.
	Now func() time.Time
	// AccessKeys verifies access-key signatures and serves /iam/accessKeys
	// (iam.go); nil: neither (signed requests get 401).
	AccessKeys api.AccessKeys
	// Throttle slows down and locks out callers that keep failing to
	// authenticate; share one with the gRPC adapter. Default: a Throttle of
	// its own with auth's default limits.
	Throttle *auth.Throttle
	// Enroll serves POST /agent/joinTokens and POST
	// /compute/hosts/{hostId}/revoke (enroll.go); nil: neither.
	Enroll api.Enrollment
	// Audit records every mutating call and serves GET /audit/events
	// (auditlog.go, audit.go); nil: neither.
	Audit api.Auditor
	// Replicas serves GET /replicas (cluster.go); nil: no such path.
	Replicas api.Replicas
	// Store serves GET /health, without credentials (health.go); nil: no
	// such path.
	Store api.StoreHealth
	// Observer, when set, is told of each request answered (observe.go).
	Observer Observer
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
	if cfg.Throttle == nil {
		cfg.Throttle = auth.NewThrottle(auth.ThrottleConfig{})
	}
	s := &server{cfg: cfg, mux: http.NewServeMux()}
	s.auth = auth.Authenticator{Users: cfg.Users, Keys: cfg.AccessKeys, Throttle: cfg.Throttle}
	s.routes()
	return s.audited(s)
}

// server is the handler NewHandler returns.
type server struct {
	cfg  Config
	mux  *http.ServeMux
	auth auth.Authenticator
}

// route is one endpoint.
type route struct {
	method, path string
	h            http.HandlerFunc
}

// routes registers every path, bare and under apiPrefix, with a handler
// that dispatches on the method (HEAD served as GET) and answers the other
// methods with 405; a 404 handler takes the rest, so that every answer is an
// OCP envelope. Patterns carry no method, so a literal segment always wins
// over a wildcard whatever the method: GET /compute/hosts/batchStopAgents is
// a 405, not getHost with hostId "batchStopAgents".
func (s *server) routes() {
	rs := []route{
		{http.MethodGet, "/compute/hosts", s.listHosts},
		{http.MethodGet, "/compute/hosts/{hostId}", s.getHost},
		{http.MethodGet, "/compute/hosts/{hostId}/agent", s.getHostAgent},
		{http.MethodPost, "/compute/hosts/{hostId}/agent/stop", s.hostOp(s.cfg.Hosts.StopAgent)},
		{http.MethodPost, "/compute/hosts/{hostId}/agent/start", s.hostOp(s.cfg.Hosts.StartAgent)},
		{http.MethodPost, "/compute/hosts/{hostId}/agent/restart", s.hostOp(s.cfg.Hosts.RestartAgent)},
		{http.MethodPost, "/compute/hosts/batchStopAgents", s.batchOp(s.cfg.Hosts.BatchStopAgents)},
		{http.MethodPost, "/compute/hosts/batchStartAgents", s.batchOp(s.cfg.Hosts.BatchStartAgents)},
		{http.MethodPost, "/compute/hosts/batchRestartAgents", s.batchOp(s.cfg.Hosts.BatchRestartAgents)},
		{http.MethodGet, "/tasks/instances", s.listTasks},
		{http.MethodGet, "/tasks/instances/{taskInstanceId}", s.getTask},
		{http.MethodPost, "/tasks/instances/{taskInstanceId}/retry", s.taskOp(s.cfg.Tasks.RetryTask)},
		{http.MethodPost, "/tasks/instances/{taskInstanceId}/rollback", s.taskOp(s.cfg.Tasks.RollbackTask)},
		{http.MethodPost, "/tasks/instances/{taskInstanceId}/subtasks/{subtaskInstanceId}/retry", s.subtaskOp(s.cfg.Tasks.RetrySubtask)},
		{http.MethodPost, "/tasks/instances/{taskInstanceId}/subtasks/{subtaskInstanceId}/skip", s.subtaskOp(s.cfg.Tasks.SkipSubtask)},
		{http.MethodPost, "/tasks/instances/{taskInstanceId}/subtasks/{subtaskInstanceId}/cancel", s.subtaskOp(s.cfg.Tasks.CancelSubtask)},
		{http.MethodGet, "/tasks/instances/{taskInstanceId}/subtasks/{subtaskInstanceId}/log", s.subtaskLog},
		{http.MethodPost, "/iam/users", s.createUser},
	}
	// Security routes, each group in its own file.
	rs = append(rs, s.enrollRoutes()...)
	rs = append(rs, s.iamRoutes()...)
	rs = append(rs, s.auditRoutes()...)
	rs = append(rs, s.clusterRoutes()...)
	byPath := map[string]*pathRoutes{}
	var paths []string
	for _, r := range rs {
		pr, ok := byPath[r.path]
		if !ok {
			pr = &pathRoutes{byMethod: map[string]http.HandlerFunc{}}
			byPath[r.path] = pr
			paths = append(paths, r.path)
		}
		pr.byMethod[r.method] = r.h
		pr.allow = append(pr.allow, r.method)
		if r.method == http.MethodGet {
			pr.allow = append(pr.allow, http.MethodHead)
		}
	}
	for _, p := range paths {
		h := s.dispatch(byPath[p])
		for _, prefix := range []string{"", apiPrefix} {
			s.mux.HandleFunc(prefix+p, h)
		}
	}
	s.mux.HandleFunc("/", s.notFound)
}

// pathRoutes is the handlers of one path, by method.
type pathRoutes struct {
	byMethod map[string]http.HandlerFunc
	allow    []string // in table order, HEAD after GET
}

// dispatch calls the path's handler for the request's method (GET's for
// HEAD), or answers 405 listing the allowed methods.
func (s *server) dispatch(pr *pathRoutes) http.HandlerFunc {
	notAllowed := s.methodNotAllowed(pr.allow)
	return func(w http.ResponseWriter, r *http.Request) {
		h, ok := pr.byMethod[r.Method]
		if !ok && r.Method == http.MethodHead {
			h, ok = pr.byMethod[http.MethodGet]
		}
		if !ok {
			notAllowed(w, r)
			return
		}
		h(w, r)
	}
}
