package fleet

import (
	"errors"
	"fmt"
	"testing"

	"agentplane/server/internal/errs"
)

// Every error the fleet ends a session or a wait with is of one errs kind,
// so each adapter maps it once; and the wait errors keep the text that
// subtask messages start with.
func TestErrorKinds(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		kind error
		text string
	}{
		{"replaced", ErrReplaced, errs.ErrAborted, "replaced by a newer stream of the same host"},
		{"slow", ErrSlowAgent, errs.ErrAborted, "agent reads too slowly: more than 64 messages queued"},
		{"lost", fmt.Errorf("%w: not heard from for 31s", ErrLost), errs.ErrAborted,
			"agentd silent for longer than the lost bound: not heard from for 31s"},
		{"closing", ErrClosing, errs.ErrUnavailable, "server shutting down: unavailable"},
		{"disconnected", ErrDisconnected, errs.ErrUnavailable, "disconnected"},
		{"revoked", ErrRevoked, errs.ErrPermissionDenied, "host revoked: permission denied"},
		{"cert revoked", ErrCertRevoked, errs.ErrPermissionDenied, ""},
		{"too many streams", ErrTooManyStreams, errs.ErrTooManyRequests, ""},
		{"too many replacements", ErrTooManyReplacements, errs.ErrTooManyRequests, ""},
		{"agent lost", fmt.Errorf("%w: not heard from for 31s", ErrAgentLost), errs.ErrUnavailable, "agentd lost: not heard from for 31s"},
		{"not connected", fmt.Errorf("%w within 5s", ErrNotConnected), errs.ErrUnavailable, "agentd not connected within 5s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if k := errs.Kind(tc.err); !errors.Is(k, tc.kind) {
				t.Errorf("kind of %q is %v, want %v", tc.err, k, tc.kind)
			}
			if tc.text != "" && tc.err.Error() != tc.text {
				t.Errorf("text %q, want %q", tc.err, tc.text)
			}
		})
	}
}
