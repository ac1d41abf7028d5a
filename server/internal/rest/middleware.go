package rest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"path"
	"runtime/debug"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"agentplane/server/internal/audit"
	"agentplane/server/internal/auth"
	"agentplane/server/internal/errs"
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
	key     string // the access key that signed the request, if one did
}

type stateKey struct{}

func stateFrom(ctx context.Context) *reqState {
	if st, ok := ctx.Value(stateKey{}).(*reqState); ok {
		return st
	}
	return &reqState{}
}

// ServeHTTP gives each request a trace id and a logger carrying it,
// recovers panics into a 500 envelope, authenticates the caller (HTTP Basic
// or an access-key signature, throttled: see authenticate), bounds the body,
// routes, and writes one access log line.
func (s *server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	st := &reqState{traceID: newTraceID(), start: s.cfg.Now(), server: localIP(r)}
	st.log = s.cfg.Log.With().Str("trace_id", st.traceID).Logger()
	ctx := st.log.WithContext(context.WithValue(r.Context(), stateKey{}, st))
	r = r.WithContext(ctx)
	rec := &statusRecorder{ResponseWriter: w}
	rec.Header().Set(TraceHeader, st.traceID)

	defer func() {
		if v := recover(); v != nil {
			if err, ok := v.(error); ok && errors.Is(err, http.ErrAbortHandler) {
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
			Str("access_key_id", st.key).
			Msg("http request")
		s.observe(r, rec.status, st.start)
	}()

	if s.cfg.Store != nil && healthPaths[r.URL.Path] {
		s.health(rec, r) // for load balancers and probes: no credentials
		return
	}
	p, err := s.authenticate(rec, r)
	if err != nil {
		s.writeError(rec, r, err, "")
		return
	}
	st.user, st.key = p.Username, p.AccessKeyID
	audit.SetPrincipal(ctx, p.Username, p.AccessKeyID, p.Addr)
	r = r.WithContext(auth.WithPrincipal(ctx, p))
	if r.Body != nil {
		r.Body = http.MaxBytesReader(w, r.Body, s.cfg.MaxBodyBytes)
	}
	if !canonicalPath(r.URL.Path) {
		// ServeMux would redirect to the cleaned path with an HTML body; no
		// API path is written so, and every answer is an envelope.
		s.notFound(rec, r)
		return
	}
	s.mux.ServeHTTP(rec, r)
}

// canonicalPath reports whether p is a path as ServeMux serves it without
// a redirect: rooted, with no empty, "." or ".." segment (a trailing "/"
// aside).
func canonicalPath(p string) bool {
	if p == "" || p[0] != '/' {
		return false
	}
	c := path.Clean(p)
	if strings.HasSuffix(p, "/") && c != "/" {
		c += "/"
	}
	return c == p
}

// authenticate returns the caller of r (auth.Authenticator.Authenticate)
// from its one Authorization header. For an access-key signature the body
// is read first, up to MaxBodyBytes (larger: a 413, never a silent
// truncation), to hash it; the handler then reads the same bytes. The
// signature covers r's method, body, Content-Type, Date, Host, OCP headers,
// path as sent and query (see auth.StringToSign).
func (s *server) authenticate(w http.ResponseWriter, r *http.Request) (auth.Principal, error) {
	vals := r.Header.Values("Authorization")
	switch {
	case len(vals) == 0:
		return auth.Principal{}, fmt.Errorf("credentials required: HTTP Basic or %s: %w", auth.SignatureScheme, errs.ErrUnauthenticated)
	case len(vals) > 1:
		return auth.Principal{}, fmt.Errorf("the Authorization header is sent %d times, at most once allowed: %w", len(vals), errs.ErrUnauthenticated)
	}
	return s.auth.Authenticate(r.Context(), auth.Credentials{
		Authorization: vals[0],
		Addr:          r.RemoteAddr,
		Signed: func(context.Context) (*auth.SignedRequest, func() error, error) {
			body, err := s.bufferBody(w, r)
			if err != nil {
				return nil, nil, err
			}
			return &auth.SignedRequest{
				Method:      r.Method,
				Body:        body,
				ContentType: r.Header.Get("Content-Type"),
				Date:        r.Header.Get("Date"),
				Host:        r.Host,
				Headers:     spelledHeaders(r), // x-ocp-* names as sent, where the listener saw them
				Path:        requestPath(r),
				RawQuery:    r.URL.RawQuery,
			}, nil, nil
		},
	})
}

// bufferBody reads r's whole body, at most MaxBodyBytes (an
// *http.MaxBytesError beyond; an ErrInvalidArgument error when it cannot be
// read), and replaces it with the bytes read.
func (s *server) bufferBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.cfg.MaxBodyBytes))
	var tooLarge *http.MaxBytesError
	if errors.As(err, &tooLarge) {
		return nil, err
	}
	if err != nil {
		return nil, fmt.Errorf("reading the request body: %w: %w", err, errs.ErrInvalidArgument)
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	return body, nil
}

// requestPath is the path a signature covers: as the request line sent it,
// percent-escapes kept (r.URL.EscapedPath() for a request line that is not
// a plain path).
func requestPath(r *http.Request) string {
	if p, _, _ := strings.Cut(r.RequestURI, "?"); strings.HasPrefix(p, "/") {
		return p
	}
	return r.URL.EscapedPath()
}

// statusRecorder remembers the status written, for the access log, the
// audit record and knowing whether a panic can still be answered.
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
