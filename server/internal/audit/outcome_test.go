package audit

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"agentplane/server/internal/errs"
)

// ownOutcome is an error that names its outcome, as an adapter's own
// refusals do.
type ownOutcome struct{}

func (ownOutcome) Error() string        { return "method not allowed" }
func (ownOutcome) AuditOutcome() string { return OutcomeMethodNotAllowed }

func TestOutcomeOf(t *testing.T) {
	wrap := func(kind error) error { return fmt.Errorf("host 7: %w", kind) }
	for _, tt := range []struct {
		name string
		err  error
		want string
	}{
		{"nil", nil, OutcomeOK},
		{"invalid argument", wrap(errs.ErrInvalidArgument), OutcomeInvalidArgument},
		{"unauthenticated", wrap(errs.ErrUnauthenticated), OutcomeUnauthenticated},
		{"permission denied", wrap(errs.ErrPermissionDenied), OutcomePermissionDenied},
		{"not found", wrap(errs.ErrNotFound), OutcomeNotFound},
		{"conflict", wrap(errs.ErrConflict), OutcomeConflict},
		{"failed precondition", wrap(errs.ErrFailedPrecondition), OutcomeFailedPrecondition},
		{"rollback prohibited", wrap(errs.ErrRollbackProhibited), OutcomeFailedPrecondition},
		{"aborted", wrap(errs.ErrAborted), OutcomeConflict},
		{"unavailable", wrap(errs.ErrUnavailable), OutcomeUnavailable},
		{"too many requests", wrap(errs.ErrTooManyRequests), OutcomeResourceExhausted},
		{"store unavailable", &errs.StoreError{Full: true, Err: errors.New("disk full")}, OutcomeUnavailable},
		{"canceled", fmt.Errorf("stopping: %w", context.Canceled), OutcomeCanceled},
		{"deadline", fmt.Errorf("stopping: %w", context.DeadlineExceeded), OutcomeDeadlineExceeded},
		{"canceled before the kind", fmt.Errorf("%w: %w", context.Canceled, errs.ErrUnavailable), OutcomeCanceled},
		{"named by the error", fmt.Errorf("PUT /x: %w", ownOutcome{}), OutcomeMethodNotAllowed},
		{"internal", errors.New("nil pointer"), OutcomeInternal},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := OutcomeOf(tt.err); got != tt.want {
				t.Fatalf("OutcomeOf(%v) = %s, want %s", tt.err, got, tt.want)
			}
		})
	}
}
