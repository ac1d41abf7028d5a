package conn

import (
	"strings"
	"testing"
	"time"

	agentv1 "agentplane/gen/agentplane/agent/v1"
)

// refuse answers every go-ahead request with a refusal.
func refuse(b *agentv1.CommandBegin) *agentv1.CommandBeginAnswer {
	return &agentv1.CommandBeginAnswer{SubtaskId: b.GetSubtaskId(), Attempt: b.GetAttempt(),
		Reason: "the server gave up on the command: agentd lost: not heard from for 31s"}
}

// silent answers no go-ahead request.
func silent(*agentv1.CommandBegin) *agentv1.CommandBeginAnswer { return nil }

// checkNotBegun checks that a command ended with outcome, its message
// naming why and saying nothing was signalled, and that the runner was
// never called.
func checkNotBegun(t *testing.T, res *agentv1.CommandResult, r *fakeRunner, outcome agentv1.CommandOutcome, why string) {
	t.Helper()
	if res.GetOutcome() != outcome || !strings.Contains(res.GetMessage(), why) || !strings.Contains(res.GetMessage(), "nothing was signalled") {
		t.Fatalf("result %v, want %v naming %q and that nothing was signalled", res, outcome, why)
	}
	if n := r.Calls(); n != 0 {
		t.Fatalf("the runner was called %d times without the server's go-ahead", n)
	}
}

func TestCommandAsksForTheGoAheadFirst(t *testing.T) {
	r := newFakeRunner(false)
	h := newHarness(t, r, t.TempDir(), 0, 0)
	calls := -1
	h.srv.setBegin(func(b *agentv1.CommandBegin) *agentv1.CommandBeginAnswer {
		calls = r.Calls()
		return &agentv1.CommandBeginAnswer{SubtaskId: b.GetSubtaskId(), Attempt: b.GetAttempt(), Proceed: true}
	})
	h.run()
	fs := h.stream()
	fs.push(t, command(20, 3, time.Minute))
	if res := fs.result(t); res.GetOutcome() != agentv1.CommandOutcome_COMMAND_OUTCOME_SUCCEEDED {
		t.Fatalf("result %v", res)
	}
	select {
	case b := <-fs.begins:
		if b.GetSubtaskId() != 20 || b.GetAttempt() != 3 {
			t.Fatalf("go-ahead asked for %v", b)
		}
	default:
		t.Fatal("the command ran without asking for the go-ahead")
	}
	if calls != 0 {
		t.Fatalf("the runner was called %d times before the go-ahead was asked", calls)
	}
}

// TestRefusedCommandSignalsNothing: a command the server refuses to confirm
// (it gave up on it) ends FAILED without touching the host, and is never
// run, even when sent again.
func TestRefusedCommandSignalsNothing(t *testing.T) {
	for _, tc := range []struct {
		name string
		cmd  func(int64, int32, time.Duration) *agentv1.ConnectResponse
	}{{"stop", command}, {"start", startCommand}} {
		t.Run(tc.name, func(t *testing.T) {
			r := newFakeRunner(false)
			h := newHarness(t, r, t.TempDir(), 0, 0)
			h.srv.setBegin(refuse)
			h.run()
			fs := h.stream()
			fs.push(t, tc.cmd(21, 1, time.Minute))
			checkNotBegun(t, fs.result(t), r, agentv1.CommandOutcome_COMMAND_OUTCOME_FAILED,
				"server did not confirm the command: refused: the server gave up on the command: agentd lost")
			h.srv.setBegin(nil)
			fs.push(t, tc.cmd(21, 1, time.Minute)) // again: the stored result, never a run
			checkNotBegun(t, fs.result(t), r, agentv1.CommandOutcome_COMMAND_OUTCOME_FAILED, "refused")
		})
	}
}

func TestUnconfirmedCommandSignalsNothing(t *testing.T) {
	r := newFakeRunner(false)
	h := newHarness(t, r, t.TempDir(), 0, 0)
	h.beginWait = 100 * time.Millisecond
	h.srv.setBegin(silent)
	h.run()
	fs := h.stream()
	fs.push(t, command(22, 1, time.Minute))
	checkNotBegun(t, fs.result(t), r, agentv1.CommandOutcome_COMMAND_OUTCOME_FAILED,
		"server did not confirm the command: no answer within 100ms")
}

// awaitingGoAhead runs agentd against a server that answers no go-ahead
// request, sends it a stop of (subtask, 1) and returns once agentd asked for
// the go-ahead.
func awaitingGoAhead(t *testing.T, r *fakeRunner, subtask int64) (*harness, *fakeStream) {
	t.Helper()
	h := newHarness(t, r, t.TempDir(), 0, 0)
	h.srv.setBegin(silent)
	h.run()
	fs := h.stream()
	fs.push(t, command(subtask, 1, time.Minute))
	select {
	case <-fs.begins:
	case <-time.After(waitFor):
		t.Fatal("no go-ahead asked")
	}
	return h, fs
}

// TestCommandOfAStreamThatEndsWaitsForTheNext: the stream a command came on
// ends before the server confirms it (after a partition, or a server
// restart). Nothing is signalled; the command waits for the next stream:
// sent again there, it asks again and runs once confirmed; canceled there
// (the server gave up on it), it ends CANCELED having signalled nothing.
func TestCommandOfAStreamThatEndsWaitsForTheNext(t *testing.T) {
	for _, tc := range []struct {
		name string
		next *agentv1.ConnectResponse
		want agentv1.CommandOutcome
	}{
		{"sent again", command(23, 1, time.Minute), agentv1.CommandOutcome_COMMAND_OUTCOME_SUCCEEDED},
		{"canceled", &agentv1.ConnectResponse{Kind: &agentv1.ConnectResponse_Cancel{Cancel: &agentv1.CancelCommand{
			SubtaskId: 23, Attempt: 1, Reason: "agentd lost: not heard from for 31s"}}}, agentv1.CommandOutcome_COMMAND_OUTCOME_CANCELED},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newFakeRunner(false)
			h, fs := awaitingGoAhead(t, r, 23)
			close(fs.cut)
			fs2 := h.stream()
			if n := r.Calls(); n != 0 {
				t.Fatalf("the runner was called %d times without the server's go-ahead", n)
			}
			h.srv.setBegin(nil) // the next stream's server confirms
			fs2.push(t, tc.next)
			res := fs2.result(t)
			if tc.want == agentv1.CommandOutcome_COMMAND_OUTCOME_CANCELED {
				checkNotBegun(t, res, r, tc.want, "canceled before it started, nothing was signalled: agentd lost")
				return
			}
			if res.GetOutcome() != tc.want || r.Calls() != 1 {
				t.Fatalf("result %v after %d runner calls, want %v after one", res, r.Calls(), tc.want)
			}
		})
	}
}

func TestCancelWhileAwaitingTheGoAhead(t *testing.T) {
	r := newFakeRunner(false)
	_, fs := awaitingGoAhead(t, r, 24)
	fs.push(t, &agentv1.ConnectResponse{Kind: &agentv1.ConnectResponse_Cancel{Cancel: &agentv1.CancelCommand{
		SubtaskId: 24, Attempt: 1, Reason: "canceled by operator"}}})
	checkNotBegun(t, fs.result(t), r, agentv1.CommandOutcome_COMMAND_OUTCOME_CANCELED,
		"canceled before it started, nothing was signalled: canceled by operator")
}
