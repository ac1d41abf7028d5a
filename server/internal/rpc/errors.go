package rpc

import (
	"context"
	"errors"

	"github.com/rs/zerolog"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"agentplane/server/internal/errs"
)

// codeOf maps the error vocabulary to gRPC codes; this is the only place.
var codeOf = map[error]codes.Code{
	errs.ErrInvalidArgument:    codes.InvalidArgument,
	errs.ErrUnauthenticated:    codes.Unauthenticated,
	errs.ErrPermissionDenied:   codes.PermissionDenied,
	errs.ErrNotFound:           codes.NotFound,
	errs.ErrConflict:           codes.Aborted,
	errs.ErrAborted:            codes.Aborted,
	errs.ErrFailedPrecondition: codes.FailedPrecondition,
	errs.ErrRollbackProhibited: codes.FailedPrecondition,
	errs.ErrUnavailable:        codes.Unavailable,
	errs.ErrTooManyRequests:    codes.ResourceExhausted,
	errs.ErrStoreUnavailable:   codes.Unavailable,
}

// toStatus turns a domain error into a gRPC status error that keeps err
// (statusError), so that the audit record takes its outcome from err's kind.
// The status's message is errs.Message(err).
// Internal errors are logged and answered without their details.
func toStatus(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	switch {
	case errors.Is(err, context.Canceled):
		return &statusError{status.New(codes.Canceled, err.Error()), err}
	case errors.Is(err, context.DeadlineExceeded):
		return &statusError{status.New(codes.DeadlineExceeded, err.Error()), err}
	}
	if msg := errs.StoreMessage(err); msg != "" {
		// The cause (the driver's text) is logged, not sent.
		zerolog.Ctx(ctx).Error().Err(err).Msg("data store failure")
		return &statusError{status.New(codes.Unavailable, msg), err}
	}
	if c, ok := codeOf[errs.Kind(err)]; ok {
		msg := errs.Message(err)
		if msg != err.Error() {
			// The caller is told a sentence; the chain behind it is logged.
			zerolog.Ctx(ctx).Info().Err(err).Str("code", c.String()).Msg("call refused")
		}
		return &statusError{status.New(c, msg), err}
	}
	zerolog.Ctx(ctx).Error().Err(err).Msg("internal error")
	return &statusError{status.New(codes.Internal, "internal error; see the server log"), err}
}

// statusError is the status a domain error is answered with; it unwraps to
// the domain error. Its text is the status's, as status.Error's is.
type statusError struct {
	st  *status.Status
	err error
}

func (e *statusError) Error() string              { return e.st.Err().Error() }
func (e *statusError) GRPCStatus() *status.Status { return e.st }
func (e *statusError) Unwrap() error              { return e.err }
