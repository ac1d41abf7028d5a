package rpc

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"agentplane/server/internal/audit"
	"agentplane/server/internal/errs"
)

// TestStatusKeepsTheKind: the status toStatus answers with has the code of
// the error's kind (ABORTED for work the server ended) and keeps the error,
// so that the audit outcome comes from the kind; statuses raised without a
// domain error are named by their code.
func TestStatusKeepsTheKind(t *testing.T) {
	ctx := context.Background()
	aborted := fmt.Errorf("replaced by a newer stream of the same host: %w", errs.ErrAborted)
	for _, tt := range []struct {
		name    string
		err     error
		code    codes.Code
		outcome string
	}{
		{"aborted", toStatus(ctx, aborted), codes.Aborted, audit.OutcomeConflict},
		{"conflict", toStatus(ctx, fmt.Errorf("held: %w", errs.ErrConflict)), codes.Aborted, audit.OutcomeConflict},
		{"revoked", toStatus(ctx, fmt.Errorf("host revoked: %w", errs.ErrPermissionDenied)), codes.PermissionDenied, audit.OutcomePermissionDenied},
		{"store", toStatus(ctx, &errs.StoreError{Err: errors.New("locked")}), codes.Unavailable, audit.OutcomeUnavailable},
		{"canceled", toStatus(ctx, context.Canceled), codes.Canceled, audit.OutcomeCanceled},
		{"internal", toStatus(ctx, errors.New("boom")), codes.Internal, audit.OutcomeInternal},
		{"unimplemented status", status.Error(codes.Unimplemented, "enrollment is not configured"), codes.Unimplemented, audit.OutcomeUnimplemented},
		{"malformed request status", status.Error(codes.InvalidArgument, "malformed request"), codes.InvalidArgument, audit.OutcomeInvalidArgument},
		{"throttled status", status.Error(codes.ResourceExhausted, "too fast"), codes.ResourceExhausted, audit.OutcomeResourceExhausted},
		{"nil", nil, codes.OK, audit.OutcomeOK},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if c := status.Code(tt.err); c != tt.code {
				t.Fatalf("code %s, want %s", c, tt.code)
			}
			if o := outcome(tt.err); o != tt.outcome {
				t.Fatalf("outcome %s, want %s", o, tt.outcome)
			}
		})
	}
	st := toStatus(ctx, aborted)
	if !errors.Is(st, errs.ErrAborted) || status.Convert(st).Message() != aborted.Error() {
		t.Fatalf("status %v lost the error %v", st, aborted)
	}
}
