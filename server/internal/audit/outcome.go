package audit

import (
	"context"
	"errors"

	"agentplane/server/internal/errs"
)

// Outcomer is implemented by an error that names its own outcome: an
// adapter's refusal outside the errs kinds (REST's 405, 413 and 415).
type Outcomer interface {
	AuditOutcome() string
}

// outcomeByKind names the outcome of each errs kind.
var outcomeByKind = map[error]string{
	errs.ErrInvalidArgument:    OutcomeInvalidArgument,
	errs.ErrUnauthenticated:    OutcomeUnauthenticated,
	errs.ErrPermissionDenied:   OutcomePermissionDenied,
	errs.ErrNotFound:           OutcomeNotFound,
	errs.ErrConflict:           OutcomeConflict,
	errs.ErrFailedPrecondition: OutcomeFailedPrecondition,
	errs.ErrRollbackProhibited: OutcomeFailedPrecondition,
	errs.ErrAborted:            OutcomeConflict, // answered as a conflict by both adapters
	errs.ErrUnavailable:        OutcomeUnavailable,
	errs.ErrTooManyRequests:    OutcomeResourceExhausted,
	errs.ErrStoreUnavailable:   OutcomeUnavailable,
}

// OutcomeOf names how a call that ended with err ended: OutcomeOK for nil;
// the outcome err names itself (Outcomer); OutcomeCanceled or
// OutcomeDeadlineExceeded for a context's error; the outcome of its errs
// kind; else OutcomeInternal. It is the one mapping from errors to outcomes:
// an adapter passes the error it answered with.
func OutcomeOf(err error) string {
	var o Outcomer
	switch {
	case err == nil:
		return OutcomeOK
	case errors.As(err, &o):
		return o.AuditOutcome()
	case errors.Is(err, context.Canceled):
		return OutcomeCanceled
	case errors.Is(err, context.DeadlineExceeded):
		return OutcomeDeadlineExceeded
	}
	if o, ok := outcomeByKind[errs.Kind(err)]; ok {
		return o
	}
	return OutcomeInternal
}
