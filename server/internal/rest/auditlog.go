package rest

import (
	"bytes"
	"encoding/json"
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
//   - the outcome: OK for a 2xx or 3xx, else the error kind (audit.Outcome*)
//     from the error envelope's code (or the status), with its message,
//     which is the one the client was told (never an internal error's
//     text). Request bodies and headers are never recorded.
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
		rec := &auditWriter{ResponseWriter: w}
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
			e.Outcome, e.Message = rec.outcome()
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

// maxErrorBody bounds the error envelope kept to read its code and message.
const maxErrorBody = 16 << 10

// auditWriter remembers the status and, for an error, the start of the
// body (the error envelope).
type auditWriter struct {
	http.ResponseWriter
	status int
	body   bytes.Buffer
}

func (w *auditWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *auditWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	if w.status >= http.StatusBadRequest && w.body.Len() < maxErrorBody {
		w.body.Write(b[:min(len(b), maxErrorBody-w.body.Len())])
	}
	return w.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (w *auditWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// outcomeByCode names the outcome of each error envelope code.
var outcomeByCode = map[int]string{
	CodeBadRequest:          audit.OutcomeInvalidArgument,
	CodeUnauthenticated:     audit.OutcomeUnauthenticated,
	CodeNotAuthorized:       audit.OutcomePermissionDenied,
	CodeNotFound:            audit.OutcomeNotFound,
	CodeTaskNotFound:        audit.OutcomeNotFound,
	CodeMethodNotAllowed:    audit.OutcomeMethodNotAllowed,
	CodeConflict:            audit.OutcomeConflict,
	CodePayloadTooLarge:     audit.OutcomeResourceExhausted,
	CodeUnsupportedMedia:    audit.OutcomeUnsupportedMedia,
	CodeInternal:            audit.OutcomeInternal,
	CodeUnavailable:         audit.OutcomeUnavailable,
	CodeOperationNotAllowed: audit.OutcomeFailedPrecondition,
	CodeRollbackProhibited:  audit.OutcomeFailedPrecondition,
}

// outcomeByStatus names the outcome of an error status whose envelope code
// is unknown.
var outcomeByStatus = map[int]string{
	http.StatusBadRequest:            audit.OutcomeInvalidArgument,
	http.StatusUnauthorized:          audit.OutcomeUnauthenticated,
	http.StatusForbidden:             audit.OutcomePermissionDenied,
	http.StatusNotFound:              audit.OutcomeNotFound,
	http.StatusMethodNotAllowed:      audit.OutcomeMethodNotAllowed,
	http.StatusConflict:              audit.OutcomeConflict,
	http.StatusRequestEntityTooLarge: audit.OutcomeResourceExhausted,
	http.StatusUnsupportedMediaType:  audit.OutcomeUnsupportedMedia,
	http.StatusTooManyRequests:       audit.OutcomeResourceExhausted,
	http.StatusInternalServerError:   audit.OutcomeInternal,
	http.StatusServiceUnavailable:    audit.OutcomeUnavailable,
}

// outcome names how the call ended and, for an error, the message its
// envelope carried.
func (w *auditWriter) outcome() (outcome, message string) {
	if w.status < http.StatusBadRequest { // 0: nothing written, an implicit 200
		return audit.OutcomeOK, ""
	}
	var env struct {
		Error struct {
			Code    int    `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	_ = json.Unmarshal(w.body.Bytes(), &env) // a body that is not an envelope leaves it zero
	if o, ok := outcomeByCode[env.Error.Code]; ok {
		return o, env.Error.Message
	}
	if o, ok := outcomeByStatus[w.status]; ok {
		return o, env.Error.Message
	}
	return "HTTP_" + strconv.Itoa(w.status), env.Error.Message
}
