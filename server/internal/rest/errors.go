package rest

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"agentplane/server/internal/audit"
	"agentplane/server/internal/errs"
	"agentplane/server/internal/task"
)

// Error codes in the body's error.code, by HTTP status. OCP's own codes are
// kept where known (20000, 20003, 20004, 30014); the others are agentplane's,
// 10000 + the HTTP status's last digits.
//
//	HTTP  code   meaning
//	400   10000  bad request: malformed id, query parameter, body or Idempotency-Key (errs.ErrInvalidArgument)
//	400   20003  operation not allowed in this state (errs.ErrFailedPrecondition)
//	400   20004  rollback prohibited (errs.ErrRollbackProhibited)
//	401   10001  no or wrong credentials (errs.ErrUnauthenticated)
//	403   30014  not authorized: the caller lacks the role (errs.ErrPermissionDenied)
//	404   20000  task or subtask not found (errs.ErrNotFound for a taskInstanceId or subtaskInstanceId)
//	404   10004  not found: host, user, or an unknown path (errs.ErrNotFound)
//	405   10005  method not allowed on this path (Allow header lists the methods)
//	409   10009  conflict: already exists, or held by other work, named in the message (errs.ErrConflict);
//	             or work in flight the server ended, which may succeed if tried again (errs.ErrAborted)
//	413   10013  request body larger than Config.MaxBodyBytes
//	415   10015  request body is not application/json
//	429   10029  too many failed authentication attempts; Retry-After says when to try again (errs.ErrTooManyRequests)
//	499   10503  (logged only) the client closed the request before its answer (context.Canceled)
//	500   10500  internal error; the message is generic, the cause only logged
//	503   10503  a dependency is unavailable, or the request timed out (errs.ErrUnavailable); or the
//	             data store cannot be written, "the data store is full" or "... unavailable" (errs.ErrStoreUnavailable)
const (
	CodeBadRequest          = 10000
	CodeUnauthenticated     = 10001
	CodeNotFound            = 10004
	CodeMethodNotAllowed    = 10005
	CodeConflict            = 10009
	CodePayloadTooLarge     = 10013
	CodeUnsupportedMedia    = 10015
	CodeTooManyRequests     = 10029
	CodeInternal            = 10500
	CodeUnavailable         = 10503
	CodeTaskNotFound        = 20000
	CodeOperationNotAllowed = 20003
	CodeRollbackProhibited  = 20004
	CodeNotAuthorized       = 30014
)

// Errors the adapter itself raises besides the errs kinds. A path no route
// serves is answered, and recorded, as an errs.ErrNotFound; the others name
// their audit outcome (audit.Outcomer).
var (
	errRouteNotFound        = errors.New("no such API path")
	errUnsupportedMediaType = &refusal{"request body must be application/json", audit.OutcomeUnsupportedMedia}
	// errBodyTooLarge is what an *http.MaxBytesError is answered as.
	errBodyTooLarge = &refusal{"request body too large", audit.OutcomeResourceExhausted}
)

// refusal is an error of the adapter's own that no errs kind names.
type refusal struct{ msg, outcome string }

func (e *refusal) Error() string        { return e.msg }
func (e *refusal) AuditOutcome() string { return e.outcome }

// methodNotAllowedError is a known path asked with the wrong method.
type methodNotAllowedError struct{ allow string }

func (e *methodNotAllowedError) Error() string {
	return "method not allowed; allowed: " + e.allow
}

// AuditOutcome makes a 405 recorded as such.
func (e *methodNotAllowedError) AuditOutcome() string { return audit.OutcomeMethodNotAllowed }

// apiError is an error as the client sees it.
type apiError struct {
	Status int
	Code   int
	// Kind is what the answer stands for: the errs kind err wraps, or the
	// adapter's own refusal; nil for an internal error. The audit record
	// takes its outcome from it (answered).
	Kind         error
	Message      string
	DebugMessage string
	Target       string
	Allow        string // for 405
	RetryAfter   int64  // seconds, for 429
}

// targetTaskID and targetSubtaskID are the path parameters naming a task
// and a subtask; a not-found error about either is OCP's "task not found".
const (
	targetTaskID    = "taskInstanceId"
	targetSubtaskID = "subtaskInstanceId"
)

// subtaskTarget is the target of a domain error from a subtask operation:
// the subtask when the error is about it (task.SubtaskError), else the task.
func subtaskTarget(err error) string {
	var se *task.SubtaskError
	if errors.As(err, &se) {
		return targetSubtaskID
	}
	return targetTaskID
}

// statusClientClosedRequest is logged for a request its client gave up on.
const statusClientClosedRequest = 499

// apiErrorOf is the one mapping from errors to HTTP statuses and codes.
// Messages of errs kinds are meant for callers and are sent (errs.Message:
// the sentence the error carries, else its text); anything else is an
// internal error whose text is never sent.
func apiErrorOf(err error, target string) apiError {
	e := apiError{Message: errs.Message(err), Target: target, Kind: errs.Kind(err)}
	var tooLarge *http.MaxBytesError
	var notAllowed *methodNotAllowedError
	switch {
	case errors.As(err, &tooLarge):
		e.Status, e.Code, e.Kind = http.StatusRequestEntityTooLarge, CodePayloadTooLarge, errBodyTooLarge
		e.Message = fmt.Sprintf("request body exceeds %d bytes", tooLarge.Limit)
	case errors.As(err, &notAllowed):
		e.Status, e.Code, e.Kind, e.Allow = http.StatusMethodNotAllowed, CodeMethodNotAllowed, notAllowed, notAllowed.allow
	case errors.Is(err, errRouteNotFound):
		e.Status, e.Code, e.Kind = http.StatusNotFound, CodeNotFound, errs.ErrNotFound
	case errors.Is(err, errUnsupportedMediaType):
		e.Status, e.Code, e.Kind = http.StatusUnsupportedMediaType, CodeUnsupportedMedia, errUnsupportedMediaType
	case errors.Is(err, errs.ErrInvalidArgument):
		e.Status, e.Code = http.StatusBadRequest, CodeBadRequest
	case errors.Is(err, errs.ErrUnauthenticated):
		e.Status, e.Code = http.StatusUnauthorized, CodeUnauthenticated
	case errors.Is(err, errs.ErrPermissionDenied):
		e.Status, e.Code = http.StatusForbidden, CodeNotAuthorized
	case errors.Is(err, errs.ErrNotFound):
		e.Status, e.Code = http.StatusNotFound, CodeNotFound
		if target == targetTaskID || target == targetSubtaskID {
			e.Code = CodeTaskNotFound
		}
	case errors.Is(err, errs.ErrConflict), errors.Is(err, errs.ErrAborted):
		e.Status, e.Code = http.StatusConflict, CodeConflict
	case errors.Is(err, errs.ErrFailedPrecondition):
		e.Status, e.Code = http.StatusBadRequest, CodeOperationNotAllowed
	case errors.Is(err, errs.ErrRollbackProhibited):
		e.Status, e.Code = http.StatusBadRequest, CodeRollbackProhibited
	case errors.Is(err, errs.ErrUnavailable):
		e.Status, e.Code = http.StatusServiceUnavailable, CodeUnavailable
	case errors.Is(err, errs.ErrStoreUnavailable):
		// The cause (the driver's text) is logged, not sent.
		e.Status, e.Code, e.Message = http.StatusServiceUnavailable, CodeUnavailable, errs.StoreMessage(err)
	case errors.Is(err, errs.ErrTooManyRequests):
		e.Status, e.Code, e.RetryAfter = http.StatusTooManyRequests, CodeTooManyRequests, 1
		var ra errs.RetryAfterer
		if errors.As(err, &ra) {
			e.RetryAfter = max(int64((ra.RetryAfter()+time.Second-1)/time.Second), 1)
		}
	case errors.Is(err, context.DeadlineExceeded):
		e.Status, e.Code, e.Kind = http.StatusServiceUnavailable, CodeUnavailable, errs.ErrUnavailable
		e.Message = "request timed out"
	case errors.Is(err, context.Canceled):
		// The client went away (it closed the connection or gave up): nobody
		// reads this answer, but the request log and the audit record say
		// so, rather than an internal error. 499 as nginx logs it.
		e.Status, e.Code, e.Kind = statusClientClosedRequest, CodeUnavailable, context.Canceled
		e.Message = "the client closed the request"
	default:
		e.Status, e.Code = http.StatusInternalServerError, CodeInternal
		e.Message = "internal server error"
	}
	return e
}

// notFound answers paths no route serves.
func (s *server) notFound(w http.ResponseWriter, r *http.Request) {
	s.writeError(w, r, fmt.Errorf("%s %s: %w", r.Method, r.URL.Path, errRouteNotFound), "")
}

// methodNotAllowed answers a known path asked with a method it lacks.
func (s *server) methodNotAllowed(methods []string) http.HandlerFunc {
	err := &methodNotAllowedError{allow: strings.Join(methods, ", ")}
	return func(w http.ResponseWriter, r *http.Request) {
		s.writeError(w, r, err, "")
	}
}
