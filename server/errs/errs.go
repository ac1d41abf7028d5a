// Package errs owns the server's error vocabulary: a few sentinel kinds that
// domain code wraps with context (fmt.Errorf("stopping host %d: %w", id, err))
// and that each boundary (gRPC, REST) maps once, with errors.Is, to its own
// codes.
package errs

import (
	"errors"
	"time"
)

// The kinds. Every error that crosses a package boundary wraps at most one.
var (
	// ErrInvalidArgument: the request is malformed or a value is out of range.
	ErrInvalidArgument = errors.New("invalid argument")
	// ErrUnauthenticated: no credentials, or wrong ones.
	ErrUnauthenticated = errors.New("unauthenticated")
	// ErrPermissionDenied: the caller lacks the role the operation needs.
	ErrPermissionDenied = errors.New("permission denied")
	// ErrNotFound: the named host, task, subtask or user does not exist.
	ErrNotFound = errors.New("not found")
	// ErrConflict: the resource is held by other work (e.g. a running agent
	// operation on the host) or already exists.
	ErrConflict = errors.New("conflict")
	// ErrFailedPrecondition: the operation is not allowed in the current state.
	ErrFailedPrecondition = errors.New("operation not allowed in this state")
	// ErrRollbackProhibited: the task may not be rolled back (OCP's
	// prohibitRollback).
	ErrRollbackProhibited = errors.New("rollback prohibited")
	// ErrUnavailable: a dependency (e.g. the host's agentd) cannot be reached now.
	ErrUnavailable = errors.New("unavailable")
	// ErrTooManyRequests: the caller is throttled (e.g. after repeated
	// authentication failures). An error of this kind may also implement
	// RetryAfterer to say when to try again.
	ErrTooManyRequests = errors.New("too many requests")
)

// RetryAfterer is implemented by errors that know when the caller may try
// again (REST's Retry-After).
type RetryAfterer interface {
	RetryAfter() time.Duration
}

// Kind returns the sentinel kind that err wraps, or nil when it wraps none
// (an internal error).
func Kind(err error) error {
	for _, k := range []error{ErrInvalidArgument, ErrUnauthenticated, ErrPermissionDenied, ErrNotFound, ErrConflict, ErrFailedPrecondition, ErrRollbackProhibited, ErrUnavailable, ErrTooManyRequests} {
		if errors.Is(err, k) {
			return k
		}
	}
	return nil
}
