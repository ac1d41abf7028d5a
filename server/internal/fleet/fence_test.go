package fleet

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

func (r *registry) logOf(id int64) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.logs[id]...)
}

// begin sends a Begin for (subtask, attempt) on s and returns the answer.
func begin(t *testing.T, f *Fleet, s *Session, subtask int64, attempt int) BeginAnswer {
	t.Helper()
	if err := f.Receive(context.Background(), s, Inbound{Begin: &Begin{SubtaskID: subtask, Attempt: attempt}}); err != nil {
		t.Fatal(err)
	}
	m := next(t, s)
	if m.BeginAnswer == nil || m.BeginAnswer.SubtaskID != subtask || m.BeginAnswer.Attempt != attempt {
		t.Fatalf("got %+v, want the answer to the begin of subtask %d attempt %d", m, subtask, attempt)
	}
	return *m.BeginAnswer
}

// logHas fails unless some line of the subtask's log contains each of parts.
func logHas(t *testing.T, reg *registry, subtask int64, parts ...string) {
	t.Helper()
	for _, l := range reg.logOf(subtask) {
		ok := true
		for _, p := range parts {
			ok = ok && strings.Contains(l, p)
		}
		if ok {
			return
		}
	}
	t.Fatalf("no line of subtask %d's log has %q: %q", subtask, parts, reg.logOf(subtask))
}

// notBegun fails if the subtask's log records a grant.
func notBegun(t *testing.T, reg *registry, subtask int64) {
	t.Helper()
	for _, l := range reg.logOf(subtask) {
		if strings.Contains(l, "agentd began") {
			t.Fatalf("subtask %d was granted: %q", subtask, reg.logOf(subtask))
		}
	}
}

func TestBeginIsGrantedWhileTheDispatchWaits(t *testing.T) {
	reg := newRegistry()
	f := newFleet(reg)
	s := connect(t, f, "h1")
	done := dispatch(context.Background(), f, s.HostID, Command{SubtaskID: 5, Attempt: 2, StopAgent: &StopAgent{}})
	next(t, s)
	if a := begin(t, f, s, 5, 2); !a.Proceed || a.Reason != "" {
		t.Fatalf("answer %+v, want proceed", a)
	}
	logHas(t, reg, 5, "agentd began attempt 2")
	_ = f.Receive(context.Background(), s, Inbound{Result: &Result{SubtaskID: 5, Attempt: 2, Outcome: Succeeded}})
	if d := result(t, done); d.err != nil {
		t.Fatalf("dispatch: %+v", d)
	}
	// The dispatch is over: the same attempt is not begun again.
	if a := begin(t, f, s, 5, 2); a.Proceed {
		t.Fatalf("answer %+v after the dispatch ended, want a refusal", a)
	}
}

// TestNothingBeginsAfterTheServerGaveUp: the host's agentd is lost with
// the command unread; when it comes back it may not begin it, and what it
// reports of it is recorded in the subtask's log, once, and acknowledged.
func TestNothingBeginsAfterTheServerGaveUp(t *testing.T) {
	reg := newRegistry()
	f := newLossyFleet(reg)
	s := connect(t, f, "h1")
	done := dispatch(context.Background(), f, s.HostID, Command{SubtaskID: 4, Attempt: 1, StopAgent: &StopAgent{}})
	next(t, s)
	waitDone(t, s) // silent: lost
	f.Disconnect(s)
	if d := result(t, done); !errors.Is(d.err, ErrAgentLost) {
		t.Fatalf("dispatch: %+v, want ErrAgentLost", d)
	}
	logHas(t, reg, 4, "the server gave up on attempt 1", "agentd lost")

	// On the old stream, as agentd reads it after a partition: nothing to
	// answer on, and nothing granted.
	if err := f.Receive(context.Background(), s, Inbound{Begin: &Begin{SubtaskID: 4, Attempt: 1}}); err != nil {
		t.Fatal(err)
	}
	notBegun(t, reg, 4)
	s2 := connect(t, f, "h1")
	if m := next(t, s2); m.Cancel == nil {
		t.Fatalf("got %+v, want the pending cancel", m)
	}
	a := begin(t, f, s2, 4, 1)
	if a.Proceed || !strings.Contains(a.Reason, "the server gave up on the command: agentd lost") {
		t.Fatalf("answer %+v, want a refusal naming the give-up", a)
	}
	logHas(t, reg, 4, "agentd asked to begin attempt 1 after the server gave up; refused")

	ctx := context.Background()
	late := Result{SubtaskID: 4, Attempt: 1, Outcome: Failed, Message: "server did not confirm the command: refused; nothing was signalled"}
	for range 2 { // re-sent, say after a reconnect: acknowledged each time, recorded once
		if err := f.Receive(ctx, s2, Inbound{Result: &late}); err != nil {
			t.Fatal(err)
		}
		if m := next(t, s2); m.Ack == nil || m.Ack.SubtaskID != 4 || m.Ack.Attempt != 1 {
			t.Fatalf("got %+v, want the ack", m)
		}
	}
	want := "late result from agentd after the server gave up (attempt 1): FAILED: server did not confirm the command"
	n := 0
	for _, l := range reg.logOf(4) {
		if strings.Contains(l, want) {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("late result recorded %d times, want once: %q", n, reg.logOf(4))
	}
}

// TestLateReportsAreBounded: progress of an attempt the server gave up on
// is recorded up to maxLateLines, then one line says the rest is not; the
// result is still recorded. Another host's reports are not.
func TestLateReportsAreBounded(t *testing.T) {
	reg := newRegistry()
	f := newLossyFleet(reg)
	s, other := connect(t, f, "h1"), connect(t, f, "h2")
	ctx, cancel := context.WithCancelCause(context.Background())
	done := dispatch(ctx, f, s.HostID, Command{SubtaskID: 3, Attempt: 1, StopAgent: &StopAgent{}})
	next(t, s)
	cancel(errors.New("canceled by operator"))
	if m := next(t, s); m.Cancel == nil {
		t.Fatalf("got %+v, want the cancel", m)
	}
	if d := result(t, done); d.err == nil {
		t.Fatalf("dispatch: %+v, want the cause", d)
	}
	before := len(reg.logOf(3))
	bg := context.Background()
	for i := range 3 * maxLateLines {
		_ = f.Receive(bg, other, Inbound{Progress: &Progress{SubtaskID: 3, Attempt: 1, Message: "forged"}})
		if err := f.Receive(bg, s, Inbound{Progress: &Progress{SubtaskID: 3, Attempt: 1, Message: fmt.Sprintf("line %d", i)}}); err != nil {
			t.Fatal(err)
		}
	}
	_ = f.Receive(bg, other, Inbound{Result: &Result{SubtaskID: 3, Attempt: 1, Outcome: Succeeded, Message: "forged"}})
	if err := f.Receive(bg, s, Inbound{Result: &Result{SubtaskID: 3, Attempt: 1, Outcome: Canceled, Message: "canceled: stopped 1 of 3"}}); err != nil {
		t.Fatal(err)
	}
	got := reg.logOf(3)[before:]
	if len(got) != maxLateLines+2 {
		t.Fatalf("%d late lines recorded, want %d: %q", len(got), maxLateLines+2, got)
	}
	if !strings.Contains(got[0], "late progress from agentd after the server gave up (attempt 1): line 0") ||
		!strings.Contains(got[maxLateLines], "not recorded") ||
		!strings.Contains(got[maxLateLines+1], "late result from agentd after the server gave up (attempt 1): CANCELED: canceled: stopped 1 of 3") {
		t.Fatalf("late lines %q", got)
	}
	for _, l := range got {
		if strings.Contains(l, "forged") {
			t.Fatalf("another host's report recorded: %q", l)
		}
	}
}

func TestBeginOnAReplacedStreamIsRefused(t *testing.T) {
	reg := newRegistry()
	f := New(Config{Registry: reg, Logs: reg, Token: "tok", Log: zerolog.Nop(), LostAfter: 5 * time.Second})
	s := connect(t, f, "h1")
	done := dispatch(context.Background(), f, s.HostID, Command{SubtaskID: 6, Attempt: 1})
	next(t, s)
	s2 := connect(t, f, "h1") // replaces s; gets the command again
	if m := next(t, s2); m.Command == nil {
		t.Fatalf("got %+v, want the command again", m)
	}
	if err := f.Receive(context.Background(), s, Inbound{Begin: &Begin{SubtaskID: 6, Attempt: 1}}); err != nil {
		t.Fatal(err)
	}
	notBegun(t, reg, 6)
	if a := begin(t, f, s2, 6, 1); !a.Proceed {
		t.Fatalf("answer %+v on the current stream, want proceed", a)
	}
	_ = f.Receive(context.Background(), s2, Inbound{Result: &Result{SubtaskID: 6, Attempt: 1, Outcome: Succeeded}})
	if d := result(t, done); d.err != nil {
		t.Fatalf("dispatch: %+v", d)
	}
}

// TestGrantAndGiveUpRace races a Begin with the end of the dispatch's
// context: exactly one wins. Either the grant comes first and the Cancel
// follows it (agentd honours it), or the give-up comes first and the Begin
// is refused; never a grant after the Cancel.
func TestGrantAndGiveUpRace(t *testing.T) {
	reg := newRegistry()
	f := newLossyFleet(reg)
	s := connect(t, f, "h1")
	granted, refused := 0, 0
	for i := range 200 {
		id := int64(100 + i)
		ctx, cancel := context.WithCancelCause(context.Background())
		done := dispatch(ctx, f, s.HostID, Command{SubtaskID: id, Attempt: 1})
		if m := next(t, s); m.Command == nil {
			t.Fatalf("got %+v, want the command", m)
		}
		var first, second Outbound
		if i%2 == 0 { // give-up first, the result not in yet
			cancel(errors.New("canceled by operator"))
			first = next(t, s)
			if err := f.Receive(context.Background(), s, Inbound{Begin: &Begin{SubtaskID: id, Attempt: 1}}); err != nil {
				t.Fatal(err)
			}
			second = next(t, s)
		} else { // a race
			go cancel(errors.New("canceled by operator"))
			if err := f.Receive(context.Background(), s, Inbound{Begin: &Begin{SubtaskID: id, Attempt: 1}}); err != nil {
				t.Fatal(err)
			}
			first, second = next(t, s), next(t, s)
		}
		switch {
		case first.BeginAnswer != nil && first.BeginAnswer.Proceed && second.Cancel != nil:
			granted++
		case first.Cancel != nil && second.BeginAnswer != nil && !second.BeginAnswer.Proceed:
			refused++
		case first.BeginAnswer != nil && !first.BeginAnswer.Proceed && second.Cancel != nil:
			// The context ended before the Begin, the Cancel went out
			// after it: refused all the same.
			refused++
		default:
			t.Fatalf("round %d: %+v then %+v", i, first, second)
		}
		_ = f.Receive(context.Background(), s, Inbound{Result: &Result{SubtaskID: id, Attempt: 1, Outcome: Canceled}})
		result(t, done)
	}
	t.Logf("granted %d, refused %d", granted, refused)
}

// TestLostVerdictYieldsToAHostBackInTime races a host connecting with the
// dispatch finding it lost: either the dispatch gives up first (the new
// session gets no command) or the host is back first (it gets the command
// and the dispatch waits for its result). Never both.
func TestLostVerdictYieldsToAHostBackInTime(t *testing.T) {
	for i := range 100 {
		reg := newRegistry()
		f := New(Config{Registry: reg, Logs: reg, Token: "tok", Log: zerolog.Nop(), CancelWait: 100 * time.Millisecond, LostAfter: 20 * time.Millisecond})
		// Host 1 has never connected: the dispatch gives up LostAfter after
		// it began; the host connects about then.
		done := dispatch(context.Background(), f, 1, Command{SubtaskID: 1, Attempt: 1})
		time.Sleep(18*time.Millisecond + time.Duration(i%16)*time.Millisecond/4)
		s := connect(t, f, "h1")
		m := next(t, s)
		switch {
		case m.Command != nil:
			if a := begin(t, f, s, 1, 1); !a.Proceed {
				t.Fatalf("round %d: the host got the command but its begin was refused: %+v", i, a)
			}
			_ = f.Receive(context.Background(), s, Inbound{Result: &Result{SubtaskID: 1, Attempt: 1, Outcome: Succeeded}})
			if d := result(t, done); d.err != nil {
				t.Fatalf("round %d: the host got the command, yet the dispatch failed: %v", i, d.err)
			}
		case m.Cancel != nil:
			if d := result(t, done); !errors.Is(d.err, ErrAgentLost) {
				t.Fatalf("round %d: dispatch %+v after the cancel, want ErrAgentLost", i, d)
			}
		default:
			t.Fatalf("round %d: got %+v", i, m)
		}
		f.Disconnect(s)
		f.Close()
	}
}

// TestResultAroundALostVerdict: a result that comes after await found the
// host lost keeps Dispatch waiting (it returns the result); one that comes
// once Dispatch has given up, before it has returned, is a late result,
// recorded and acknowledged, not dropped in a channel nobody reads.
func TestResultAroundALostVerdict(t *testing.T) {
	reg := newRegistry()
	f := newLossyFleet(reg)
	s := connect(t, f, "h1")
	f.Disconnect(s)
	k := key{9, 1}
	c := &call{hostID: s.HostID, cmd: Command{SubtaskID: 9, Attempt: 1}, ctx: context.Background(), result: make(chan Result, 1)}
	f.mu.Lock()
	f.inflight[k] = c // as Dispatch registers it
	f.mu.Unlock()

	c.result <- Result{SubtaskID: 9, Attempt: 1, Outcome: Succeeded}
	if f.giveUp(context.Background(), c, true, ErrAgentLost) {
		t.Fatal("gave up on a dispatch whose result is in")
	}
	<-c.result
	if !f.giveUp(context.Background(), c, true, ErrAgentLost) {
		t.Fatal("did not give up on a lost host")
	}
	s2 := connect(t, f, "h1")
	if m := next(t, s2); m.Cancel == nil {
		t.Fatalf("got %+v, want the pending cancel", m)
	}
	if err := f.Receive(context.Background(), s2, Inbound{Result: &Result{SubtaskID: 9, Attempt: 1, Outcome: Canceled, Message: "canceled before it started"}}); err != nil {
		t.Fatal(err)
	}
	if m := next(t, s2); m.Ack == nil {
		t.Fatalf("got %+v, want the ack of the late result", m)
	}
	if len(c.result) != 0 {
		t.Fatal("the late result went to the abandoned dispatch")
	}
	logHas(t, reg, 9, "late result from agentd after the server gave up (attempt 1): CANCELED")
}
