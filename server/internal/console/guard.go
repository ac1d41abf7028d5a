package console

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"strings"

	"github.com/rs/zerolog"

	"agentplane/server/internal/audit"
	"agentplane/server/internal/auth"
	"agentplane/server/internal/errs"
)

// Messages for a request whose session or token does not hold; each says
// that nothing changed.
const (
	msgSignIn  = "You are not signed in. Sign in, then try again; nothing was changed."
	msgExpired = "Your session has expired. Sign in again, then try again; nothing was changed."
	msgCSRF    = "This page is out of date: its security token does not match your session (you may have signed in again elsewhere). Reload the page and try again; nothing was changed."
	msgOrigin  = "The request did not come from this console's own pages, so it was refused; nothing was changed."
)

// CSRFHeader carries the page's CSRF token on the script's requests; a form
// sends it as the field csrfField.
const (
	CSRFHeader = "X-CSRF-Token"
	csrfField  = "csrf"
)

type sessionKey struct{}

// sessionOf returns the session the guards put in ctx.
func sessionOf(ctx context.Context) *session {
	s, _ := ctx.Value(sessionKey{}).(*session)
	return s
}

// withSession returns r with s and its Principal in the context.
func withSession(r *http.Request, s *session) *http.Request {
	ctx := context.WithValue(r.Context(), sessionKey{}, s)
	return r.WithContext(auth.WithPrincipal(ctx, s.principal(r.RemoteAddr)))
}

// page guards a page: without a live session the user is sent to sign in,
// back to this page afterwards.
func (c *Console) page(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		s, err := c.ss.get(r)
		if err != nil {
			q := url.Values{"next": {r.URL.RequestURI()}}
			if errors.Is(err, errExpired) {
				q.Set("expired", "1")
				c.ss.clear(w)
			}
			http.Redirect(w, r, prefix+"/login?"+q.Encode(), http.StatusSeeOther)
			return
		}
		c.ss.touch(w, s)
		w.Header().Set("Cache-Control", "no-store")
		h(w, withSession(r, s))
	}
}

// stream guards an event stream: without a live session it answers 401
// (an EventSource then stops; the page says why).
func (c *Console) stream(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		s, err := c.ss.get(r)
		if err != nil {
			c.writeJSONError(w, http.StatusUnauthorized, sessionMessage(err))
			return
		}
		h(w, withSession(r, s))
	}
}

// mutation guards a change: the request must come from this origin
// (Origin, else Sec-Fetch-Site), carry a live session and that session's
// CSRF token (header or form field). Each refusal says why and changes
// nothing. The call is audited, refused or not.
func (c *Console) mutation(h func(w http.ResponseWriter, r *http.Request) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		ctx, note := audit.WithNote(r.Context())
		r = r.WithContext(ctx)
		var err error
		defer func() { c.record(r, note, err) }()
		s, serr := c.ss.get(r)
		if serr == nil {
			audit.SetPrincipal(ctx, s.User, "", r.RemoteAddr)
		}
		if !sameOrigin(r) {
			err = errs.New(errs.ErrPermissionDenied, msgOrigin)
			c.refuse(w, r, http.StatusForbidden, msgOrigin)
			return
		}
		if serr != nil {
			err = errs.New(errs.ErrUnauthenticated, sessionMessage(serr))
			c.refuse(w, r, http.StatusUnauthorized, sessionMessage(serr))
			return
		}
		token := r.Header.Get(CSRFHeader)
		if token == "" {
			token = r.PostFormValue(csrfField)
		}
		if !s.validCSRF(token) {
			err = errs.New(errs.ErrPermissionDenied, msgCSRF)
			c.refuse(w, r, http.StatusForbidden, msgCSRF)
			return
		}
		c.ss.touch(w, s)
		w.Header().Set("Cache-Control", "no-store")
		err = h(w, withSession(r, s))
	}
}

// refuse answers a refused mutation: JSON for the script, the error page
// for a form (sign-out).
func (c *Console) refuse(w http.ResponseWriter, r *http.Request, status int, msg string) {
	if r.Header.Get(CSRFHeader) == "" && strings.Contains(r.Header.Get("Accept"), "text/html") {
		c.render(w, r, status, "error", c.data(nil, "Refused", msg))
		return
	}
	c.writeJSONError(w, status, msg)
}

// sessionMessage is what the user is told about a missing or expired
// session.
func sessionMessage(err error) string {
	if errors.Is(err, errExpired) {
		return msgExpired
	}
	return msgSignIn
}

// sameOrigin reports whether r came from a page of this server: its Origin
// is this scheme and host; without Origin (browsers send it on every POST),
// Sec-Fetch-Site says same-origin.
func sameOrigin(r *http.Request) bool {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return r.Header.Get("Sec-Fetch-Site") == "same-origin"
	}
	scheme := "https"
	if r.TLS == nil {
		scheme = "http"
	}
	return strings.EqualFold(origin, scheme+"://"+r.Host)
}

// record writes the audit record of a mutation that ended with err.
func (c *Console) record(r *http.Request, note *audit.Note, err error) {
	if c.cfg.Audit == nil {
		return
	}
	op := r.Pattern
	if v := r.PathValue("op"); v != "" {
		op = strings.Replace(op, "{op}", v, 1)
	}
	e := audit.Event{SourceAddr: r.RemoteAddr, Operation: op, Outcome: audit.OutcomeOK}
	note.Fill(&e)
	if err != nil {
		e.Outcome, e.Message = audit.OutcomeOf(err), userMessage(err)
	}
	c.cfg.Audit.Record(r.Context(), e)
}

// statusOf is the HTTP status of an error, by its kind.
func statusOf(err error) int {
	switch {
	case errors.Is(err, errs.ErrInvalidArgument):
		return http.StatusBadRequest
	case errors.Is(err, errs.ErrUnauthenticated):
		return http.StatusUnauthorized
	case errors.Is(err, errs.ErrPermissionDenied):
		return http.StatusForbidden
	case errors.Is(err, errs.ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, errs.ErrConflict), errors.Is(err, errs.ErrFailedPrecondition),
		errors.Is(err, errs.ErrRollbackProhibited), errors.Is(err, errs.ErrAborted):
		return http.StatusConflict
	case errors.Is(err, errs.ErrTooManyRequests):
		return http.StatusTooManyRequests
	case errors.Is(err, errs.ErrUnavailable), errors.Is(err, errs.ErrStoreUnavailable):
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

// userMessage is an error as a sentence for the user: the domain's message
// without the trailing kind, or a generic one for an internal error (whose
// chain only the server log keeps).
func userMessage(err error) string {
	if statusOf(err) == http.StatusInternalServerError {
		return "Something went wrong on the server; it has been logged. Try again later."
	}
	msg := err.Error()
	if k := errs.Kind(err); k != nil {
		msg = strings.TrimSuffix(msg, ": "+k.Error())
	}
	switch {
	case errors.Is(err, errs.ErrStoreUnavailable):
		msg = errs.StoreMessage(err)
	case errors.Is(err, errs.ErrNotFound) && msg != "":
		msg += " does not exist" // "host 5: not found" → "Host 5 does not exist."
	}
	if msg == "" {
		return "The request failed."
	}
	msg = strings.ToUpper(msg[:1]) + msg[1:]
	if !strings.HasSuffix(msg, ".") {
		msg += "."
	}
	return msg
}

// writeJSON answers v as JSON.
func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// writeJSONError answers {"error": msg}.
func (c *Console) writeJSONError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]string{"error": msg})
}

// fail answers a failed call: its status and message; internal errors are
// logged with their chain.
func (c *Console) fail(w http.ResponseWriter, r *http.Request, err error) {
	status := statusOf(err)
	if status == http.StatusInternalServerError {
		c.log(r).Error().Err(err).Str("path", r.URL.Path).Msg("console request failed")
	}
	c.writeJSONError(w, status, userMessage(err))
}

// log is the logger of r, with its user.
func (c *Console) log(r *http.Request) *zerolog.Logger {
	l := c.cfg.Log
	if s := sessionOf(r.Context()); s != nil {
		l = l.With().Str("user", s.User).Logger()
	}
	return &l
}
