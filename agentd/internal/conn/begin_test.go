package conn

import (
	"strings"
	"sync"
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

// forNow answers go-ahead requests with a refusal for now only
// (ask_again), as a replica does whose wait for the command ended without
// giving up on it, until confirm is called; then with proceed. Each answer
// given is reported on asked (true: proceed).
type forNow struct {
	mu      sync.Mutex
	proceed bool
	asked   chan bool
}

func newForNow() *forNow { return &forNow{asked: make(chan bool, 16)} }

func (f *forNow) answer(b *agentv1.CommandBegin) *agentv1.CommandBeginAnswer {
	f.mu.Lock()
	proceed := f.proceed
	f.mu.Unlock()
	f.asked <- proceed
	if proceed {
		return &agentv1.CommandBeginAnswer{SubtaskId: b.GetSubtaskId(), Attempt: b.GetAttempt(), Proceed: true}
	}
	return &agentv1.CommandBeginAnswer{SubtaskId: b.GetSubtaskId(), Attempt: b.GetAttempt(), AskAgain: true,
		Reason: "the server is not waiting for this command here yet; its attempt is still live"}
}

func (f *forNow) confirm() {
	f.mu.Lock()
	f.proceed = true
	f.mu.Unlock()
}

// refusedForNow waits until agentd asked for the go-ahead and was refused
// for now.
func (f *forNow) refusedForNow(t *testing.T) {
	t.Helper()
	select {
	case proceed := <-f.asked:
		if proceed {
			t.Fatal("go-ahead confirmed, want refused for now")
		}
	case <-time.After(waitFor):
		t.Fatal("no go-ahead asked")
	}
}

// waitingAnswer queries (subtask, 1) and checks that agentd answers that
// the command waits for its go-ahead.
func waitingAnswer(t *testing.T, fs *fakeStream, subtask int64) {
	t.Helper()
	fs.push(t, query(subtask, 1, 0))
	for {
		if a := fs.next(t).GetAnswer(); a != nil {
			if a.GetState() != agentv1.CommandState_COMMAND_STATE_WAITING {
				t.Fatalf("answer %v, want WAITING", a)
			}
			return
		}
	}
}

// TestCommandRefusedForNowWaitsToComeAgain: the server refuses the go-ahead
// for now only (its wait for the command ended without giving up on it: the
// task's owner died, or the host's stream moved, and the next owner has
// not resumed it yet). The attempt does not fail and nothing is signalled:
// queried, agentd says it waits, and asks again; when the command comes
// again (or a query about it) and the server confirms it, it runs once. A
// cancel, or the command's timeout, ends it CANCELED, having signalled
// nothing.
func TestCommandRefusedForNowWaitsToComeAgain(t *testing.T) {
	canceled := &agentv1.ConnectResponse{Kind: &agentv1.ConnectResponse_Cancel{Cancel: &agentv1.CancelCommand{
		SubtaskId: 25, Attempt: 1, Reason: "canceled by operator"}}}
	for _, tc := range []struct {
		name    string
		timeout time.Duration
		next    *agentv1.ConnectResponse // nil: none, the timeout ends it
		want    agentv1.CommandOutcome
		why     string
	}{
		{"sent again", time.Minute, command(25, 1, time.Minute), agentv1.CommandOutcome_COMMAND_OUTCOME_SUCCEEDED, ""},
		{"queried again", time.Minute, query(25, 1, 0), agentv1.CommandOutcome_COMMAND_OUTCOME_SUCCEEDED, ""},
		{"canceled", time.Minute, canceled, agentv1.CommandOutcome_COMMAND_OUTCOME_CANCELED, "canceled by operator"},
		{"timed out", 2 * time.Second, nil, agentv1.CommandOutcome_COMMAND_OUTCOME_CANCELED, "timed out after 2s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newFakeRunner(false)
			h := newHarness(t, r, t.TempDir(), 0, 0)
			srv := newForNow()
			h.srv.setBegin(srv.answer)
			h.run()
			fs := h.stream()
			fs.push(t, command(25, 1, tc.timeout))
			srv.refusedForNow(t)
			// Refused for now: it waits, and a query counts as the command
			// received again: it asks again (refused for now again, so it
			// had taken the first answer and waited).
			waitingAnswer(t, fs, 25)
			srv.refusedForNow(t)
			if n := r.Calls(); n != 0 {
				t.Fatalf("the runner was called %d times without the server's go-ahead", n)
			}
			srv.confirm() // the command's next dispatch confirms it
			if tc.next != nil {
				fs.push(t, tc.next)
			}
			res := fs.result(t)
			if tc.want != agentv1.CommandOutcome_COMMAND_OUTCOME_SUCCEEDED {
				checkNotBegun(t, res, r, tc.want, "canceled before it started, nothing was signalled: "+tc.why)
				return
			}
			if res.GetOutcome() != tc.want || r.Calls() != 1 {
				t.Fatalf("result %v after %d runner calls, want %v after one", res, r.Calls(), tc.want)
			}
		})
	}
}
