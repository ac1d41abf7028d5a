package fleet

import (
	"errors"
	"fmt"

	"agentplane/server/internal/errs"
)

// Reasons a session ends.
var (
	ErrReplaced     = errors.New("replaced by a newer stream of the same host")
	ErrSlowAgent    = fmt.Errorf("agent reads too slowly: more than %d messages queued", sessionBuffer)
	ErrLost         = errors.New("agentd silent for longer than the lost bound")
	ErrClosing      = fmt.Errorf("server shutting down: %w", errs.ErrUnavailable)
	ErrDisconnected = errors.New("disconnected")
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

// ErrAgentLost is why a dispatch fails when the host's agentd has not been
// heard from for LostAfter and has no session.
var ErrAgentLost = errors.New("agentd lost")

// ErrNotConnected is why WaitConnected gives up.
var ErrNotConnected = errors.New("agentd not connected")
