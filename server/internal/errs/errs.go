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
	// ErrAborted: the server ended work in flight, not because of anything
	// wrong with the request: an agent stream replaced by a newer one of its
	// host, too slow to read, or silent past the lost bound. Trying again
	// may succeed.
	ErrAborted = errors.New("aborted")
	// ErrUnavailable: a dependency (e.g. the host's agentd) cannot be reached now.
	ErrUnavailable = errors.New("unavailable")
	// ErrTooManyRequests: the caller is throttled (e.g. after repeated
	// authentication failures). An error of this kind may also implement
	// RetryAfterer to say when to try again.
	ErrTooManyRequests = errors.New("too many requests")
	// ErrStoreUnavailable: the data store cannot be written (or read) now:
	// its disk is full, it is read-only, or its files cannot be opened or
	// written. It passes once the cause does; the server needs no restart.
	// Errors of this kind are *StoreError (store classifies them).
	ErrStoreUnavailable = errors.New("the data store is unavailable")
)

// StoreError is a failure of the data store itself, as opposed to a refused
// change: it is an ErrStoreUnavailable. Error gives the cause (logged);
// Message is what a client is told.
type StoreError struct {
	Full bool  // the store's disk (or quota) is full
	Err  error // the driver's error
}

// Message is the text for clients: "the data store is full" or "the data
// store is unavailable".
func (e *StoreError) Message() string {
	if e.Full {
		return "the data store is full"
	}
	return ErrStoreUnavailable.Error()
}

func (e *StoreError) Error() string { return e.Message() + ": " + e.Err.Error() }

// Unwrap makes a StoreError both an ErrStoreUnavailable and its cause.
func (e *StoreError) Unwrap() []error { return []error{ErrStoreUnavailable, e.Err} }

// StoreMessage returns the client's text of a store failure err wraps
// ("the data store is full" or "... unavailable"), or "" when it wraps none.
func StoreMessage(err error) string {
	var se *StoreError
	if errors.As(err, &se) {
		return se.Message()
	}
	if errors.Is(err, ErrStoreUnavailable) {
		return ErrStoreUnavailable.Error()
	}
	return ""
}

// RetryAfterer is implemented by errors that know when the caller may try
// again (REST's Retry-After).
type RetryAfterer interface {
	RetryAfter() time.Duration
}

// Kind returns the sentinel kind that err wraps, or nil when it wraps none
// (an internal error).
func Kind(err error) error {
	for _, k := range []error{ErrInvalidArgument, ErrUnauthenticated, ErrPermissionDenied, ErrNotFound, ErrConflict, ErrFailedPrecondition, ErrRollbackProhibited, ErrAborted, ErrUnavailable, ErrTooManyRequests, ErrStoreUnavailable} {
		if errors.Is(err, k) {
			return k
		}
	}
	return nil
}
