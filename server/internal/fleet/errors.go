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
	ErrReplaced  = errs.New(errs.ErrAborted, "replaced by a newer stream of the same host")
	ErrSlowAgent = errs.New(errs.ErrAborted, fmt.Sprintf("agent reads too slowly: more than %d messages queued", sessionBuffer))
	ErrLost      = errs.New(errs.ErrAborted, "agentd silent for longer than the lost bound")
	ErrClosing   = fmt.Errorf("server shutting down: %w", errs.ErrUnavailable)
	// ErrDisconnected ends a session its adapter disconnected (the stream
	// ended); no client sees it.
	ErrDisconnected = errs.New(errs.ErrUnavailable, "disconnected")
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
// reads it ("agentd lost: not heard from for 31s"), so it does not name
// the kind.
var (
	// ErrAgentLost is why a dispatch fails when the host's agentd has not
	// been heard from for LostAfter and has no session.
	ErrAgentLost = errs.New(errs.ErrUnavailable, "agentd lost")
	// ErrNotConnected is why WaitConnected gives up.
	ErrNotConnected = errs.New(errs.ErrUnavailable, "agentd not connected")
)

// Why a Dispatch returns without the command's result, leaving agentd to
// finish it (no cancel is sent); both are errs.ErrAborted errors.
var (
	// ErrMoved is the cause a caller gives Dispatch's context when the
	// host's stream moved to another replica, which takes the wait over.
	ErrMoved = errs.New(errs.ErrAborted, "the host's agent stream moved to another replica")
	// ErrSuperseded ends a Dispatch that a newer Dispatch of the same
	// (subtask, attempt) replaced.
	ErrSuperseded = errs.New(errs.ErrAborted, "dispatched again; the newer dispatch waits for the result")
)
