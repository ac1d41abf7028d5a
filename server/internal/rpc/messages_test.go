package rpc

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	hostv1 "agentplane/gen/agentplane/host/v1"
	"agentplane/server/internal/errs"
	"agentplane/server/internal/host"
)

// TestToStatusSaysTheSentence: an error that carries a sentence for its
// user is answered with it alone, however deep in the chain it is; its
// kind still picks the code.
func TestToStatusSaysTheSentence(t *testing.T) {
	chain := fmt.Errorf("stop of the agent of host 2: creating task %q: %w", "Stop OCP agent", host.BusyError(2, 9))
	got := status.Convert(toStatus(context.Background(), chain))
	want := "Host 2 already has an agent operation in progress (task 9); wait for it to end or cancel it."
	if got.Code() != codes.Aborted || got.Message() != want {
		t.Fatalf("%s %q, want ABORTED %q", got.Code(), got.Message(), want)
	}
	outer := errs.WithMessage(fmt.Errorf("retrying: %w", chain), "Task 5 cannot be retried now.")
	if got := status.Convert(toStatus(context.Background(), outer)); got.Message() != "Task 5 cannot be retried now." {
		t.Fatalf("message %q: the outermost sentence should win", got.Message())
	}
	if !errors.Is(outer, errs.ErrConflict) {
		t.Fatal("a sentence hid the error's kind")
	}
}

// TestGRPCMessagesAreSentences: the same through a real gRPC call.
func TestGRPCMessagesAreSentences(t *testing.T) {
	env := newAPIEnv(t)
	_, err := env.hc.RestartAgent(as(t, "manager"), &hostv1.RestartAgentRequest{HostId: apiHostBusy})
	want := fmt.Sprintf("Host %d already has an agent operation in progress (task %d); wait for it to end or cancel it.", apiHostBusy, apiHeldBy)
	if st := status.Convert(err); st.Code() != codes.Aborted || st.Message() != want {
		t.Fatalf("%s %q, want ABORTED %q", st.Code(), st.Message(), want)
	}
	_, err = env.hc.ListHosts(as(t, "mallory"), &hostv1.ListHostsRequest{})
	if st := status.Convert(err); st.Code() != codes.Unauthenticated || st.Message() != "Invalid username or password." {
		t.Fatalf("%s %q, want UNAUTHENTICATED %q", st.Code(), st.Message(), "Invalid username or password.")
	}
}
