package fleet

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"agentplane/server/internal/errs"
)

// Each session of a host has the next epoch (the registry's count of its
// streams), in its Welcome, and on every command, cancel and query sent on
// it, whichever session they were first meant for.
func TestSessionsCarryTheirEpoch(t *testing.T) {
	reg := newRegistry()
	f := New(Config{Registry: reg, Logs: reg, Token: "tok", Log: zerolog.Nop(), LostAfter: 5 * time.Second, CancelWait: 50 * time.Millisecond})
	for want := int64(1); want <= 3; want++ {
		s, w, err := f.Connect(context.Background(), Hello{Token: "tok", HostName: "h1"})
		if err != nil {
			t.Fatal(err)
		}
		if w.Epoch != want || s.Epoch != want || f.hosts[s.HostID].epoch != want {
			t.Fatalf("stream %d: welcome epoch %d, session %d", want, w.Epoch, s.Epoch)
		}
		f.Disconnect(s)
	}
	ctx, cancel := context.WithCancelCause(context.Background())
	done := dispatch(ctx, f, 1, Command{SubtaskID: 8, Attempt: 1, Epoch: 99})
	waitDispatched(t, f, key{8, 1}, 1)
	s := connect(t, f, "h1")
	if m := next(t, s); m.Command == nil || m.Command.Epoch != 4 {
		t.Fatalf("got %+v, want the command with the session's epoch 4", m)
	}
	cancel(errors.New("canceled by operator"))
	if m := next(t, s); m.Cancel == nil || m.Cancel.Epoch != 4 {
		t.Fatalf("got %+v, want the cancel with the session's epoch 4", m)
	}
	result(t, done)
	s2 := connect(t, f, "h1") // the cancel went out; nothing is pending
	empty(t, s2)
	if s2.Epoch != 5 {
		t.Fatalf("epoch %d, want 5", s2.Epoch)
	}
}

// answer sends agentd's answer about (subtask, attempt) on s.
func answerQuery(t *testing.T, f *Fleet, s *Session, a Answer) {
	t.Helper()
	if err := f.Receive(context.Background(), s, Inbound{Answer: &a}); err != nil {
		t.Fatal(err)
	}
}

// nextQuery reads the query for k on s.
func nextQuery(t *testing.T, s *Session, k key) {
	t.Helper()
	m := next(t, s)
	if q := m.Query; q == nil || q.SubtaskID != k.subtask || q.Attempt != k.attempt || q.Epoch != s.Epoch {
		t.Fatalf("got %+v, want the query about %v with epoch %d", m, k, s.Epoch)
	}
}

// nothingFor fails if anything reaches s within d.
func nothingFor(t *testing.T, s *Session, d time.Duration) {
	t.Helper()
	select {
	case m := <-s.Out():
		t.Fatalf("unexpected message for the agent: %+v", m)
	case <-time.After(d):
	}
}

// After a server restart, a resumed dispatch asks agentd what became of
// its command before sending it, whether the host is connected when the
// dispatch begins or connects afterwards; the answer decides.
func TestResumedDispatchAsksBeforeSending(t *testing.T) {
	const wait = 300 * time.Millisecond
	finished := Result{SubtaskID: 40, Attempt: 2, Outcome: Succeeded, Message: "stopped 3 OCP Agent base processes"}
	for _, tc := range []struct {
		name    string
		answer  *Answer // nil: none
		command bool    // the command is sent after the answer (or the wait)
	}{
		{"finished: its result, nothing sent", &Answer{SubtaskID: 40, Attempt: 2, State: StateFinished, Result: &finished}, false},
		{"unknown: sent", &Answer{SubtaskID: 40, Attempt: 2, State: StateUnknown}, true},
		{"running: not sent, the result awaited", &Answer{SubtaskID: 40, Attempt: 2, State: StateRunning}, false},
		{"waiting: not sent, its go-ahead granted", &Answer{SubtaskID: 40, Attempt: 2, State: StateWaiting}, false},
		{"no answer: sent after the wait", nil, true},
	} {
		for _, connectedFirst := range []bool{true, false} {
			name := tc.name + ", host connected first"
			if !connectedFirst {
				name = tc.name + ", host connects later"
			}
			t.Run(name, func(t *testing.T) {
				reg := newRegistry()
				f := New(Config{Registry: reg, Logs: reg, Token: "tok", Log: zerolog.Nop(), LostAfter: 5 * time.Second, QueryWait: wait})
				defer f.Close()
				f.Expect([]int64{1})
				f.Serving()
				var s *Session
				var asked time.Time // before the query was sent
				if connectedFirst {
					s = connect(t, f, "h1")
					asked = time.Now()
				}
				k := key{40, 2}
				done := dispatch(context.Background(), f, 1, Command{SubtaskID: 40, Attempt: 2, StopAgent: &StopAgent{}, Resumed: true})
				waitDispatched(t, f, k, 1)
				if !connectedFirst {
					asked = time.Now()
					s = connect(t, f, "h1")
				}
				nextQuery(t, s, k)
				if tc.answer != nil {
					answerQuery(t, f, s, *tc.answer)
				}
				if tc.command {
					m := next(t, s)
					if m.Command == nil || m.Command.SubtaskID != 40 || m.Command.Epoch != s.Epoch {
						t.Fatalf("got %+v, want the command", m)
					}
					if tc.answer == nil && time.Since(asked) < wait {
						t.Fatalf("command sent %s after the query, before the wait of %s", time.Since(asked), wait)
					}
				}
				if tc.answer != nil && tc.answer.State == StateWaiting {
					if a := begin(t, f, s, 40, 2); !a.Proceed {
						t.Fatalf("go-ahead %+v, want proceed", a)
					}
				}
				if tc.answer == nil || tc.answer.State != StateFinished {
					if !tc.command {
						nothingFor(t, s, wait+100*time.Millisecond) // not sent after the wait either
					}
					if err := f.Receive(context.Background(), s, Inbound{Result: &finished}); err != nil {
						t.Fatal(err)
					}
				}
				d := result(t, done)
				if d.err != nil || d.r != finished {
					t.Fatalf("dispatch: %+v, want %+v", d, finished)
				}
				if tc.answer != nil && tc.answer.State == StateFinished {
					nothingFor(t, s, wait+100*time.Millisecond)
				}
			})
		}
	}
}

// A session that replaces the asking one before the answer is asked again;
// an answer on the replaced session changes nothing.
func TestQueryIsAskedAgainOnANewSession(t *testing.T) {
	reg := newRegistry()
	f := New(Config{Registry: reg, Logs: reg, Token: "tok", Log: zerolog.Nop(), LostAfter: 5 * time.Second, QueryWait: time.Minute})
	defer f.Close()
	s1 := connect(t, f, "h1")
	k := key{41, 1}
	done := dispatch(context.Background(), f, 1, Command{SubtaskID: 41, Attempt: 1, Resumed: true})
	nextQuery(t, s1, k)
	s2 := connect(t, f, "h1")
	nextQuery(t, s2, k)
	answerQuery(t, f, s1, Answer{SubtaskID: 41, Attempt: 1, State: StateUnknown}) // the old stream's: ignored
	empty(t, s2)
	answerQuery(t, f, s2, Answer{SubtaskID: 41, Attempt: 1, State: StateUnknown})
	if m := next(t, s2); m.Command == nil || m.Command.Epoch != 2 {
		t.Fatalf("got %+v, want the command on the new session", m)
	}
	r := Result{SubtaskID: 41, Attempt: 1, Outcome: Failed, Message: "no"}
	if err := f.Receive(context.Background(), s2, Inbound{Result: &r}); err != nil {
		t.Fatal(err)
	}
	if d := result(t, done); d.err != nil || d.r != r {
		t.Fatalf("dispatch: %+v", d)
	}
}

func TestMalformedAnswersAreRefused(t *testing.T) {
	f := newFleet(newRegistry())
	s := connect(t, f, "h1")
	for _, a := range []Answer{
		{SubtaskID: 1, Attempt: 1},
		{SubtaskID: 1, Attempt: 1, State: StateFinished},
		{SubtaskID: 1, Attempt: 1, State: StateFinished, Result: &Result{SubtaskID: 2, Attempt: 1, Outcome: Succeeded}},
	} {
		if err := f.Receive(context.Background(), s, Inbound{Answer: &a}); !errors.Is(err, errs.ErrInvalidArgument) {
			t.Errorf("answer %+v: %v, want ErrInvalidArgument", a, err)
		}
	}
}
