// Package console is the web console: HTML pages and a small script, served
// by the server on its HTTPS listener under /ui/ (and / redirecting there),
// beside the REST API. It is an adapter like rest and rpc: it signs users in
// with the same auth.Authenticator (under the same Throttle), puts their
// Principal in each request's context and calls the same domain services,
// which check the roles. Its own concerns are the session (session.go: a
// sealed cookie), CSRF and origin checks on every mutation, the security
// headers (a strict Content-Security-Policy, no inline script or style), the
// pages (pages.go), the live task and log streams (events.go, server-sent
// events fed by WatchTask's change notifications and the LogNotifier) and
// the actions (actions.go). Its assets are embedded (go:embed), so it works
// offline.
package console

import (
	"embed"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"net/http"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"agentplane/server/internal/api"
	"agentplane/server/internal/auth"
)

//go:embed assets
var assets embed.FS

// Tasks is what the console needs of the task service.
type Tasks interface {
	api.Tasks
	api.TaskWatcher
}

// Config wires the console. Hosts, Tasks, Users, Throttle and Secret are
// required.
type Config struct {
	Hosts api.Hosts
	Tasks Tasks
	// Users checks passwords at sign-in, through an auth.Authenticator
	// under Throttle (share the adapters' one).
	Users    auth.PasswordChecker
	Throttle *auth.Throttle
	// Secret keys the session cookies (at least 32 bytes); every replica
	// of a store must have the same one, so that a cookie one sealed opens
	// on all of them (the server passes its access-key sealing key).
	Secret []byte
	// Insecure: the listener is plaintext (--insecure); the cookie cannot
	// be Secure nor carry the __Host- prefix.
	Insecure bool
	// IdleTimeout ends a session its user has not used for that long;
	// MaxAge ends every session that long after sign-in. Defaults
	// DefaultIdleTimeout and DefaultMaxAge.
	IdleTimeout, MaxAge time.Duration
	// Audit records sign-ins, sign-outs and actions; nil: none.
	Audit api.AuditRecorder
	// Logs tells the log streams when lines were appended; nil: a log
	// stream wakes at its task's changes only.
	Logs *LogNotifier
	// Log receives errors; each request's failures are logged with its
	// user.
	Log zerolog.Logger
	// Now is the clock; default time.Now.
	Now func() time.Time
}

// Console is the console's handler.
type Console struct {
	cfg   Config
	ss    *sessions
	auth  auth.Authenticator
	mux   *http.ServeMux
	pages map[string]*template.Template
	files http.Handler
}

// New returns the console.
func New(cfg Config) (*Console, error) {
	if cfg.Hosts == nil || cfg.Tasks == nil || cfg.Users == nil || cfg.Throttle == nil {
		return nil, errors.New("console: Hosts, Tasks, Users and Throttle are required")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = DefaultIdleTimeout
	}
	if cfg.MaxAge <= 0 {
		cfg.MaxAge = DefaultMaxAge
	}
	ss, err := newSessions(cfg.Secret, cfg.Insecure, cfg.IdleTimeout, cfg.MaxAge, cfg.Now)
	if err != nil {
		return nil, err
	}
	pages, err := parsePages()
	if err != nil {
		return nil, err
	}
	static, err := fs.Sub(assets, "assets/static")
	if err != nil {
		return nil, err
	}
	c := &Console{
		cfg: cfg, ss: ss, mux: http.NewServeMux(), pages: pages,
		auth:  auth.Authenticator{Users: cfg.Users, Throttle: cfg.Throttle},
		files: http.StripPrefix(prefix+"/static/", http.FileServerFS(static)),
	}
	c.routes()
	return c, nil
}

// prefix is where the console lives; "/" redirects there.
const prefix = "/ui"

// maxBody bounds request bodies.
const maxBody = 64 << 10

func (c *Console) routes() {
	m := c.mux
	m.HandleFunc("GET /{$}", c.home)
	m.HandleFunc("GET "+prefix+"/{$}", c.home)
	m.HandleFunc("GET "+prefix+"/login", c.signInPage)
	m.HandleFunc("POST "+prefix+"/login", c.signIn)
	m.HandleFunc("POST "+prefix+"/logout", c.mutation(c.signOut))
	m.HandleFunc("GET "+prefix+"/hosts", c.page(c.hostsPage))
	m.HandleFunc("GET "+prefix+"/tasks", c.page(c.tasksPage))
	m.HandleFunc("GET "+prefix+"/tasks/{taskId}", c.page(c.taskPage))
	m.HandleFunc("GET "+prefix+"/tasks/{taskId}/events", c.stream(c.taskEvents))
	m.HandleFunc("GET "+prefix+"/tasks/{taskId}/subtasks/{subtaskId}/log", c.stream(c.logEvents))
	m.HandleFunc("POST "+prefix+"/api/hosts/{hostId}/agent/{op}", c.mutation(c.hostAction))
	m.HandleFunc("POST "+prefix+"/api/tasks/{taskId}/{op}", c.mutation(c.taskAction))
	m.HandleFunc("POST "+prefix+"/api/tasks/{taskId}/subtasks/{subtaskId}/{op}", c.mutation(c.subtaskAction))
	m.HandleFunc("GET "+prefix+"/static/", c.static)
	m.HandleFunc(prefix+"/", c.notFound)
}

// Owns reports whether the console serves path: "/" and everything under
// /ui/. The server routes the rest to the REST API.
func Owns(path string) bool {
	return path == "/" || path == prefix || strings.HasPrefix(path, prefix+"/")
}

// Wrap returns a handler that serves the console's paths (Owns) and hands
// every other request to next (the REST API).
func (c *Console) Wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if Owns(r.URL.Path) {
			c.ServeHTTP(w, r)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// csp allows this origin's scripts, styles, images and connections only:
// no inline script or style, no eval, no framing, no plugins, forms posted
// only here.
const csp = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; " +
	"object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"

// ServeHTTP sets the security headers of every answer and routes.
func (c *Console) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Security-Policy", csp)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "same-origin")
	h.Set("Cross-Origin-Opener-Policy", "same-origin")
	h.Set("Cross-Origin-Resource-Policy", "same-origin")
	if !c.cfg.Insecure {
		h.Set("Strict-Transport-Security", "max-age=31536000")
	}
	if r.Body != nil {
		r.Body = http.MaxBytesReader(w, r.Body, maxBody) // a sign-in form is the largest
	}
	if r.URL.Path == prefix {
		http.Redirect(w, r, prefix+"/", http.StatusMovedPermanently)
		return
	}
	c.mux.ServeHTTP(w, r)
}

// home sends the user to the hosts page.
func (c *Console) home(w http.ResponseWriter, r *http.Request) {
	http.Redirect(w, r, prefix+"/hosts", http.StatusSeeOther)
}

// static serves the embedded assets; they change only with the binary.
func (c *Console) static(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-cache")
	c.files.ServeHTTP(w, r)
}

// notFound answers a console path that does not exist.
func (c *Console) notFound(w http.ResponseWriter, r *http.Request) {
	s, _ := c.ss.get(r)
	c.render(w, r, http.StatusNotFound, "error", c.data(s, "Not found", fmt.Sprintf("There is no page at %s.", r.URL.Path)))
}
