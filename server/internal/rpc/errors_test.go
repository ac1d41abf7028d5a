package rpc

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"agentplane/server/internal/errs"
)

func TestToStatus(t *testing.T) {
	tests := []struct {
		err  error
		code codes.Code
	}{
		{fmt.Errorf("host id 0: %w", errs.ErrInvalidArgument), codes.InvalidArgument},
		{fmt.Errorf("no credentials: %w", errs.ErrUnauthenticated), codes.Unauthenticated},
		{fmt.Errorf("lacks HOST_MANAGER: %w", errs.ErrPermissionDenied), codes.PermissionDenied},
		{fmt.Errorf("host 7: %w", errs.ErrNotFound), codes.NotFound},
		{fmt.Errorf("host 7: agent operation in progress (task 3): %w", errs.ErrConflict), codes.Aborted},
		{fmt.Errorf("retry RUNNING task: %w", errs.ErrFailedPrecondition), codes.FailedPrecondition},
		{fmt.Errorf("task 5: cannot roll back: the task's context prohibits rollback: %w", errs.ErrRollbackProhibited), codes.FailedPrecondition},
		{fmt.Errorf("agentd: %w", errs.ErrUnavailable), codes.Unavailable},
		{context.Canceled, codes.Canceled},
		{fmt.Errorf("waiting: %w", context.DeadlineExceeded), codes.DeadlineExceeded},
		{status.Error(codes.ResourceExhausted, "already a status"), codes.ResourceExhausted},
		{errors.New("disk I/O error at /var/lib/secret"), codes.Internal},
	}
	for _, tt := range tests {
		t.Run(tt.code.String(), func(t *testing.T) {
			got := status.Convert(toStatus(context.Background(), tt.err))
			if got.Code() != tt.code {
				t.Fatalf("code %s, want %s", got.Code(), tt.code)
			}
			if tt.code == codes.Internal && strings.Contains(got.Message(), "secret") {
				t.Fatalf("internal details leaked: %q", got.Message())
			}
			if tt.code != codes.Internal && !strings.HasSuffix(tt.err.Error(), got.Message()) {
				t.Fatalf("message %q, want %q", got.Message(), tt.err.Error())
			}
		})
	}
	if toStatus(context.Background(), nil) != nil {
		t.Fatal("nil error became a status")
	}
}

// TestToStatusStore: a data store failure is UNAVAILABLE naming the cause in
// the vocabulary's words, never the driver's text.
func TestToStatusStore(t *testing.T) {
	tests := []struct {
		err  error
		want string
	}{
		{fmt.Errorf("creating task: %w", &errs.StoreError{Full: true, Err: errors.New("database or disk is full (13) /var/lib/secret")}),
			"the data store is full"},
		{fmt.Errorf("registering host: %w", &errs.StoreError{Err: errors.New("disk I/O error (10) /var/lib/secret")}),
			"the data store is unavailable"},
	}
	for _, tt := range tests {
		got := status.Convert(toStatus(context.Background(), tt.err))
		if got.Code() != codes.Unavailable || got.Message() != tt.want {
			t.Errorf("%v: got %s %q, want UNAVAILABLE %q", tt.err, got.Code(), got.Message(), tt.want)
		}
	}
}
