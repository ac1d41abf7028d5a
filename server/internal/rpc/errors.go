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
	errs.ErrFailedPrecondition: codes.FailedPrecondition,
	errs.ErrRollbackProhibited: codes.FailedPrecondition,
	errs.ErrUnavailable:        codes.Unavailable,
	errs.ErrTooManyRequests:    codes.ResourceExhausted,
	errs.ErrStoreUnavailable:   codes.Unavailable,
}

// toStatus turns a domain error into a gRPC status. Internal errors are
// logged and answered without their details.
func toStatus(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	switch {
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, err.Error())
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, err.Error())
	}
	if msg := errs.StoreMessage(err); msg != "" {
		// The cause (the driver's text) is logged, not sent.
		zerolog.Ctx(ctx).Error().Err(err).Msg("data store failure")
		return status.Error(codes.Unavailable, msg)
	}
	if c, ok := codeOf[errs.Kind(err)]; ok {
		return status.Error(c, err.Error())
	}
	zerolog.Ctx(ctx).Error().Err(err).Msg("internal error")
	return status.Error(codes.Internal, "internal error; see the server log")
}
