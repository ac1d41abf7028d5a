package rest

import (
	"context"
	"net/http"
	"strconv"
	"strings"

	"agentplane/server/internal/audit"
)

// audited wraps the whole handler (authentication included) so that every
// mutating call (POST, PUT, PATCH, DELETE), refused ones too, is recorded
// when it ends:
//
//   - who: what the authentication step gave audit.SetPrincipal, else the
//     connection's address (r.RemoteAddr) and no user;
//   - what: "METHOD pattern", the route's pattern without /api/v2 (e.g.
//     "POST /compute/hosts/{hostId}/agent/stop"; "POST /" for a path no
//     route serves), the host, task and target the domain put in the
//     audit.Note, else the {hostId} and {taskInstanceId} of the path;
//   - the outcome: OK for a 2xx or 3xx, else audit.OutcomeOf the error
//     the request was answered with (writeError hands it over through the
//     context, see answered), with its message, which is the one the client
//     was told (never an internal error's text). Request bodies and headers
//     are never recorded.
//
// The record is written synchronously once the handler has written its
// answer, before the server ends the response: a client has the whole
// response only after the record is stored (a response that fits in the
// server's write buffer, a few KiB, is not sent at all before; the first
// bytes of a larger one, such as a large batch task, may arrive a moment
// before). A failed write is logged and the call's answer stands.
func (s *server) audited(next http.Handler) http.Handler {
	if s.cfg.Audit == nil {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.Method {
		case http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete:
		default:
			next.ServeHTTP(w, r)
			return
		}
		_, pattern := s.mux.Handler(r)
		pattern = strings.TrimPrefix(pattern, apiPrefix)
		if pattern == "" || !canonicalPath(r.URL.Path) { // served by notFound
			pattern = "/"
		}
		ctx, note := audit.WithNote(r.Context())
		ans := &answer{}
		ctx = context.WithValue(ctx, answerKey{}, ans)
		rec := &statusRecorder{ResponseWriter: w}
		returned := false
		defer func() {
			e := audit.Event{SourceAddr: r.RemoteAddr, Operation: r.Method + " " + pattern}
			note.Fill(&e)
			path := strings.TrimPrefix(r.URL.Path, apiPrefix)
			if e.HostID == 0 {
				e.HostID = patternID(pattern, path, paramHostID)
			}
			if e.TaskID == 0 {
				e.TaskID = patternID(pattern, path, paramTaskID)
			}
			e.Outcome, e.Message = ans.outcome(rec.status)
			if !returned && rec.status < http.StatusBadRequest { // aborted (http.ErrAbortHandler)
				e.Outcome, e.Message = audit.OutcomeInternal, "request aborted"
			}
			s.cfg.Audit.Record(ctx, e)
		}()
		next.ServeHTTP(rec, r.WithContext(ctx))
		returned = true
	})
}

// patternID returns the positive id that path holds where pattern has the
// wildcard {name}, or 0.
func patternID(pattern, path, name string) int64 {
	ps, qs := strings.Split(pattern, "/"), strings.Split(path, "/")
	if len(ps) != len(qs) {
		return 0
	}
	for i, seg := range ps {
		if seg == "{"+name+"}" {
			id, err := strconv.ParseInt(qs[i], 10, 64)
			if err != nil || id <= 0 {
				return 0
			}
			return id
		}
	}
	return 0
}

// answer holds the error a request was answered with, for its audit record:
// audited puts one in the request's context, writeError fills it
// (recordAnswer).
type answer struct{ err error }

type answerKey struct{}

// recordAnswer keeps err as the answer of the request whose context ctx is,
// if it is audited.
func recordAnswer(ctx context.Context, err error) {
	if a, ok := ctx.Value(answerKey{}).(*answer); ok {
		a.err = err
	}
}

// answered is an error as the client was told it: the message the envelope
// carried, and the kind (or the adapter's own refusal) the answer stands
// for; nil for an internal error.
type answered struct {
	msg  string
	kind error
}

func (e *answered) Error() string { return e.msg }
func (e *answered) Unwrap() error { return e.kind }

// outcome names how a call answered with status ended and, for an error,
// the message its envelope carried.
func (a *answer) outcome(status int) (outcome, message string) {
	switch {
	case status < http.StatusBadRequest: // 0: nothing written, an implicit 200
		return audit.OutcomeOK, ""
	case a.err != nil:
		return audit.OutcomeOf(a.err), a.err.Error()
	}
	return "HTTP_" + strconv.Itoa(status), "" // an error written without an envelope
}
