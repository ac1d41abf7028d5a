package fleet

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"agentplane/server/internal/task"
)

// setLive sets what AttemptLive says of subtask's attempts, and its error.
func (r *registry) setLive(subtask int64, live bool, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.live == nil {
		r.live = map[int64]bool{}
	}
	r.live[subtask] = live
	r.liveErr = err
}

// checkAskAgain fails unless a refuses the go-ahead for now only, naming why.
func checkAskAgain(t *testing.T, a BeginAnswer, why string) {
	t.Helper()
	if a.Proceed || !a.AskAgain || !strings.Contains(a.Reason, why) {
		t.Fatalf("answer %+v, want a refusal for now only naming %q", a, why)
	}
}

// TestBeginAfterTheOwnerWentAwayAsksAgain: the replica holding the stream
// ran the command for the task's owner, which died (its Dispatch ends with
// task.ErrShutdown, the agent left to finish). agentd's go-ahead, asked
// after that, is refused for now only while the attempt is still live: the
// owner's successor resumes the dispatch, agentd answers its query that
// the command waits, asks again, and is granted. Nothing is recorded as
// late, and no Cancel is sent.
func TestBeginAfterTheOwnerWentAwayAsksAgain(t *testing.T) {
	reg := newRegistry()
	reg.setLive(7, true, nil)
	f := newFleet(reg)
	s := connect(t, f, "h1")
	ctx, cancel := context.WithCancelCause(context.Background())
	done := dispatch(ctx, f, s.HostID, Command{SubtaskID: 7, Attempt: 1, StopAgent: &StopAgent{}})
	if m := next(t, s); m.Command == nil {
		t.Fatalf("got %+v, want the command", m)
	}
	cancel(fmt.Errorf("replica r3 went away: %w", task.ErrShutdown)) // as cluster's server.Dispatch does
	if d := result(t, done); !errors.Is(d.err, task.ErrShutdown) {
		t.Fatalf("dispatch: %+v, want ErrShutdown", d)
	}

	checkAskAgain(t, begin(t, f, s, 7, 1), "its attempt is still live")
	notBegun(t, reg, 7)
	empty(t, s)

	// The owner's successor resumes the wait here.
	done = dispatch(context.Background(), f, s.HostID, Command{SubtaskID: 7, Attempt: 1, StopAgent: &StopAgent{}, Resumed: true})
	nextQuery(t, s, key{7, 1})
	answerQuery(t, f, s, Answer{SubtaskID: 7, Attempt: 1, State: StateWaiting})
	if a := begin(t, f, s, 7, 1); !a.Proceed {
		t.Fatalf("answer %+v once the resumed dispatch waits, want proceed", a)
	}
	_ = f.Receive(context.Background(), s, Inbound{Result: &Result{SubtaskID: 7, Attempt: 1, Outcome: Succeeded}})
	if d := result(t, done); d.err != nil || d.r.Outcome != Succeeded {
		t.Fatalf("resumed dispatch: %+v", d)
	}
}

// TestBeginOfAnUnknownCommand: a go-ahead no dispatch here waits for is
// refused for good when its attempt is no longer live (a stale command:
// agentd ends it FAILED, signalling nothing), and for now only when it is
// live or the store cannot tell.
func TestBeginOfAnUnknownCommand(t *testing.T) {
	reg := newRegistry()
	f := newFleet(reg)
	s := connect(t, f, "h1")
	a := begin(t, f, s, 8, 1)
	if a.Proceed || a.AskAgain || a.Reason != "the server is not waiting for this command" {
		t.Fatalf("answer %+v for a stale command, want a final refusal", a)
	}
	reg.setLive(8, true, nil)
	checkAskAgain(t, begin(t, f, s, 8, 1), "its attempt is still live")
	reg.setLive(8, false, errors.New("store unavailable"))
	checkAskAgain(t, begin(t, f, s, 8, 1), "cannot tell whether its attempt is still live")
	notBegun(t, reg, 8)
}

// TestBeginWhileTheDispatchEnds: a go-ahead that comes while a dispatch's
// context has ended, before Dispatch has returned, is refused for now only
// when the agent is left to finish (the owner changed, the stream moved),
// for good when the command's subtask was canceled or timed out.
func TestBeginWhileTheDispatchEnds(t *testing.T) {
	for _, tc := range []struct {
		cause error
		again bool
		why   string
	}{
		{task.ErrNotOwner, true, "the command's dispatch here ended, leaving it to the next"},
		{ErrMoved, true, "the command's dispatch here ended, leaving it to the next"},
		{context.DeadlineExceeded, false, "the command's subtask ended"},
		{errors.New("canceled by operator"), false, "the command's subtask ended: canceled by operator"},
	} {
		t.Run(tc.cause.Error(), func(t *testing.T) {
			reg := newRegistry()
			f := newFleet(reg)
			s := connect(t, f, "h1")
			ctx, cancel := context.WithCancelCause(context.Background())
			cancel(tc.cause)
			k := key{9, 1}
			f.mu.Lock()
			f.inflight[k] = &call{hostID: s.HostID, cmd: Command{SubtaskID: 9, Attempt: 1}, ctx: ctx, result: make(chan Result, 1)}
			f.mu.Unlock()
			a := begin(t, f, s, 9, 1)
			if a.Proceed || a.AskAgain != tc.again || !strings.Contains(a.Reason, tc.why) {
				t.Fatalf("answer %+v, want ask again %v naming %q", a, tc.again, tc.why)
			}
			notBegun(t, reg, 9)
		})
	}
}
