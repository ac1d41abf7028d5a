package rest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"runtime/debug"
	"time"

	"github.com/rs/zerolog"

	"agentplane/server/auth"
	"agentplane/server/errs"
)

// TraceHeader carries the request's trace id in every response.
const TraceHeader = "X-Trace-Id"

// realm is announced in WWW-Authenticate on 401.
const realm = "agentplane"

// reqState is what the envelope writers need to know about a request.
type reqState struct {
	traceID string
	start   time.Time
	server  string // IP of the local address that answered
	log     zerolog.Logger
	user    string // set once authenticated
}

type stateKey struct{}

func stateFrom(ctx context.Context) *reqState {
	if st, ok := ctx.Value(stateKey{}).(*reqState); ok {
		return st
	}
	return &reqState{}
}

// ServeHTTP gives each request a trace id and a logger carrying it,
// recovers panics into a 500 envelope, authenticates the caller with HTTP
// Basic, bounds the body, routes, and writes one access log line.
func (s *server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	st := &reqState{traceID: newTraceID(), start: s.cfg.Now(), server: localIP(r)}
	st.log = s.cfg.Log.With().Str("trace_id", st.traceID).Logger()
	ctx := st.log.WithContext(context.WithValue(r.Context(), stateKey{}, st))
	r = r.WithContext(ctx)
	rec := &statusRecorder{ResponseWriter: w}
	rec.Header().Set(TraceHeader, st.traceID)

	defer func() {
		if v := recover(); v != nil {
			if v == http.ErrAbortHandler {
				panic(v)
			}
			st.log.Error().Str("panic", fmt.Sprint(v)).Bytes("stack", debug.Stack()).Msg("handler panicked")
			if rec.status == 0 {
				s.writeError(rec, r, fmt.Errorf("panic: %v", v), "")
			}
		}
		st.log.Info().
			Str("method", r.Method).
			Str("path", r.URL.Path).
			Int("status", rec.status).
			Int64("duration_ms", s.cfg.Now().Sub(st.start).Milliseconds()).
			Str("user", st.user).
			Msg("http request")
	}()

	username, password, ok := r.BasicAuth()
	if !ok {
		s.writeError(rec, r, fmt.Errorf("basic authentication required: %w", errs.ErrUnauthenticated), "")
		return
	}
	p, err := s.cfg.Users.Authenticate(ctx, username, password)
	if err != nil {
		s.writeError(rec, r, err, "")
		return
	}
	st.user = p.Username
	r = r.WithContext(auth.WithPrincipal(ctx, p))
	if r.Body != nil {
		r.Body = http.MaxBytesReader(w, r.Body, s.cfg.MaxBodyBytes)
	}
	s.mux.ServeHTTP(rec, r)
}

// statusRecorder remembers the status written, for the access log and for
// knowing whether a panic can still be answered.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (w *statusRecorder) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusRecorder) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (w *statusRecorder) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// newTraceID returns 16 random lowercase hex characters.
func newTraceID() string {
	var b [8]byte
	_, _ = rand.Read(b[:]) // never fails
	return hex.EncodeToString(b[:])
}

// localIP returns the IP of the local address that accepted r's connection,
// or "" when unknown.
func localIP(r *http.Request) string {
	addr, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
	if !ok || addr == nil {
		return ""
	}
	if tcp, ok := addr.(*net.TCPAddr); ok {
		return tcp.IP.String()
	}
	if host, _, err := net.SplitHostPort(addr.String()); err == nil {
		return host
	}
	return addr.String()
}
