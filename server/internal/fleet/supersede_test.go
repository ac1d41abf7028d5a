package fleet

import (
	"context"
	"errors"
	"testing"
	"time"

	"agentplane/server/internal/errs"
)

// A second Dispatch of the same (subtask, attempt) while the first waits (a
// new task owner resuming it) replaces the first: the first returns
// ErrSuperseded at once and sends no cancel, the second (resumed) asks
// agentd first instead of sending the command again, and gets the result.
func TestDispatchAgainSupersedesTheWaitingCall(t *testing.T) {
	f := newFleet(newRegistry())
	s := connect(t, f, "h1")
	cmd := Command{SubtaskID: 7, Attempt: 2, StopAgent: &StopAgent{}}
	first := make(chan error, 1)
	go func() {
		_, err := f.Dispatch(context.Background(), s.HostID, cmd)
		first <- err
	}()
	if m := next(t, s); m.Command == nil || m.Command.SubtaskID != 7 {
		t.Fatalf("got %+v, want the command", m)
	}
	second := make(chan Result, 1)
	go func() {
		resumed := cmd
		resumed.Resumed = true
		r, err := f.Dispatch(context.Background(), s.HostID, resumed)
		if err != nil {
			t.Error(err)
		}
		second <- r
	}()
	select {
	case err := <-first:
		if !errors.Is(err, ErrSuperseded) || !errors.Is(err, errs.ErrAborted) {
			t.Fatalf("first dispatch: %v, want ErrSuperseded", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the first dispatch still waits")
	}
	nextQuery(t, s, key{7, 2})
	answerQuery(t, f, s, Answer{SubtaskID: 7, Attempt: 2, State: StateRunning})
	nothingFor(t, s, 100*time.Millisecond) // neither the command again nor a cancel
	if err := f.Receive(context.Background(), s, Inbound{Result: &Result{SubtaskID: 7, Attempt: 2, Outcome: Succeeded}}); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-second:
		if r.Outcome != Succeeded {
			t.Fatalf("second dispatch: %+v", r)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no result for the second dispatch")
	}
	f.mu.Lock()
	n := len(f.inflight)
	f.mu.Unlock()
	if n != 0 {
		t.Fatalf("%d calls left in flight", n)
	}
}

// A Dispatch whose context ends with ErrMoved (the host's stream went to
// another replica) returns at once and sends no cancel.
func TestDispatchMovedSendsNoCancel(t *testing.T) {
	f := newFleet(newRegistry())
	s := connect(t, f, "h1")
	ctx, cancel := context.WithCancelCause(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := f.Dispatch(ctx, s.HostID, Command{SubtaskID: 3, Attempt: 1, StopAgent: &StopAgent{}})
		done <- err
	}()
	next(t, s)
	cancel(ErrMoved)
	select {
	case err := <-done:
		if !errors.Is(err, ErrMoved) {
			t.Fatalf("dispatch: %v, want ErrMoved", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("dispatch still waits")
	}
	nothingFor(t, s, 100*time.Millisecond)
}
