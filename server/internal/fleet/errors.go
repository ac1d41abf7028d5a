package fleet

import (
	"fmt"

	"agentplane/server/internal/errs"
)

// Reasons a session ends (Session.Err). Each wraps an errs kind: the
// server ended the stream's work (errs.ErrAborted: replaced, too slow,
// lost; the agent connects again), the server is going away
// (errs.ErrUnavailable), or the host may not hold a stream
// (errs.ErrPermissionDenied).
var (
	ErrReplaced  = fmt.Errorf("replaced by a newer stream of the same host: %w", errs.ErrAborted)
	ErrSlowAgent = fmt.Errorf("agent reads too slowly: more than %d messages queued: %w", sessionBuffer, errs.ErrAborted)
	ErrLost      = fmt.Errorf("agentd silent for longer than the lost bound: %w", errs.ErrAborted)
	ErrClosing   = fmt.Errorf("server shutting down: %w", errs.ErrUnavailable)
	// ErrDisconnected ends a session its adapter disconnected (the stream
	// ended); no client sees it.
	ErrDisconnected = fmt.Errorf("disconnected: %w", errs.ErrUnavailable)
	ErrRevoked      = fmt.Errorf("host revoked: %w", errs.ErrPermissionDenied)
	// ErrCertRevoked ends the session of a certificate revoked: its host
	// enrolled again, or an admin revoked it.
	ErrCertRevoked = fmt.Errorf("client certificate revoked (the host enrolled again, or an admin revoked it): %w", errs.ErrPermissionDenied)
)

// Why Connect refuses a host over its stream bounds; both are
// errs.ErrTooManyRequests errors (RESOURCE_EXHAUSTED on gRPC).
var (
	ErrTooManyStreams      = fmt.Errorf("too many concurrent agent streams for the host: %w", errs.ErrTooManyRequests)
	ErrTooManyReplacements = fmt.Errorf("the host replaces its agent stream too often: %w", errs.ErrTooManyRequests)
)

// Why a wait for a host's agentd fails; both are errs.ErrUnavailable
// errors. Their text is the start of a subtask's message as an operator
// reads it ("agentd lost: not heard from for 31s"), so it carries no kind.
var (
	// ErrAgentLost is why a dispatch fails when the host's agentd has not
	// been heard from for LostAfter and has no session.
	ErrAgentLost error = &kindError{"agentd lost", errs.ErrUnavailable}
	// ErrNotConnected is why WaitConnected gives up.
	ErrNotConnected error = &kindError{"agentd not connected", errs.ErrUnavailable}
)

// kindError is an error of kind whose text is msg alone.
type kindError struct {
	msg  string
	kind error
}

func (e *kindError) Error() string { return e.msg }

// Unwrap makes errors.Is see the kind.
func (e *kindError) Unwrap() error { return e.kind }
