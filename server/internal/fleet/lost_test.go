package fleet

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"agentplane/server/internal/host"
)

// lostAfter is the short lost bound of these tests.
const lostAfter = 200 * time.Millisecond

func newLossyFleet(reg *registry) *Fleet {
	return New(Config{Registry: reg, Logs: reg, Token: "tok", Log: zerolog.Nop(), CancelWait: 100 * time.Millisecond,
		LostAfter: lostAfter})
}

type dispatched struct {
	r   Result
	err error
}

func dispatch(ctx context.Context, f *Fleet, hostID int64, cmd Command) <-chan dispatched {
	done := make(chan dispatched, 1)
	go func() {
		r, err := f.Dispatch(ctx, hostID, cmd)
		done <- dispatched{r, err}
	}()
	return done
}

func waitDispatched(t *testing.T, f *Fleet, k key, hostID int64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !f.dispatchedTo(k, hostID) {
		if time.Now().After(deadline) {
			t.Fatal("dispatch not registered")
		}
		time.Sleep(time.Millisecond)
	}
}

func waitDone(t *testing.T, s *Session) {
	t.Helper()
	select {
	case <-s.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("session still open")
	}
}

func result(t *testing.T, done <-chan dispatched) dispatched {
	t.Helper()
	select {
	case d := <-done:
		return d
	case <-time.After(5 * time.Second):
		t.Fatal("dispatch still waiting")
		return dispatched{}
	}
}

// empty fails if anything is queued for the agent now.
func empty(t *testing.T, s *Session) {
	t.Helper()
	select {
	case m := <-s.Out():
		t.Fatalf("unexpected message for the agent: %+v", m)
	default:
	}
}

func TestSilentSessionIsLostAndItsHostGoesOffline(t *testing.T) {
	reg := newRegistry()
	const bound = 500 * time.Millisecond
	f := New(Config{Registry: reg, Logs: reg, Token: "tok", Log: zerolog.Nop(), LostAfter: bound})
	s := connect(t, f, "h1")
	// Heartbeats keep it: over two bounds, at a fifth of the bound each.
	var last time.Time
	for range 10 {
		if err := s.Err(); err != nil {
			t.Fatalf("session of a host sending heartbeats ended: %v", err)
		}
		last = time.Now() // before the fleet records the heartbeat: a lower bound
		if err := f.Receive(context.Background(), s, Inbound{Heartbeat: &Heartbeat{}}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(bound / 5)
	}
	waitDone(t, s)
	if silent := time.Since(last); silent < bound {
		t.Fatalf("lost after %s of silence, before the bound", silent)
	}
	if !errors.Is(s.Err(), ErrLost) {
		t.Fatalf("session ended with %v, want ErrLost", s.Err())
	}
	f.Disconnect(s) // as the stream adapter does when the session ends
	if st := reg.statusOf(s.HostID); st != host.StatusOffline {
		t.Fatalf("status %s after the agent was lost", st)
	}
}

func TestDispatchToALostAgentFailsAfterTheBoundAndCancelsOnReturn(t *testing.T) {
	reg := newRegistry()
	f := newLossyFleet(reg)
	heard := time.Now() // before the fleet's own: a lower bound
	s := connect(t, f, "h1")
	cmd := Command{SubtaskID: 4, Attempt: 1, StopAgent: &StopAgent{}}
	done := dispatch(context.Background(), f, s.HostID, cmd)
	if m := next(t, s); m.Command == nil {
		t.Fatalf("got %+v, want the command", m)
	}
	// The agent goes silent: the watchdog ends its session, the adapter
	// disconnects it, and the dispatch fails as lost, long before its own
	// timeout.
	waitDone(t, s)
	if !errors.Is(s.Err(), ErrLost) {
		t.Fatalf("session ended with %v", s.Err())
	}
	f.Disconnect(s)
	d := result(t, done)
	if !errors.Is(d.err, ErrAgentLost) || !strings.Contains(d.err.Error(), "agentd lost: not heard from for") {
		t.Fatalf("dispatch: %+v, want ErrAgentLost", d)
	}
	if since := time.Since(heard); since < lostAfter {
		t.Fatalf("lost after %s, before the bound", since)
	}
	// When the agent comes back it is told to cancel, and not given the
	// command again.
	s2 := connect(t, f, "h1")
	m := next(t, s2)
	if m.Cancel == nil || m.Cancel.SubtaskID != 4 || m.Cancel.Attempt != 1 || !strings.Contains(m.Cancel.Reason, "agentd lost") {
		t.Fatalf("got %+v, want the pending cancel", m)
	}
	empty(t, s2)
	// Sent once: the next connection does not get it again.
	s3 := connect(t, f, "h1")
	empty(t, s3)
}

func TestDispatchToAHostNeverConnectedFailsAfterTheBound(t *testing.T) {
	f := newLossyFleet(newRegistry())
	began := time.Now()
	d := result(t, dispatch(context.Background(), f, 42, Command{SubtaskID: 1, Attempt: 1}))
	if !errors.Is(d.err, ErrAgentLost) || !strings.Contains(d.err.Error(), "not connected within") {
		t.Fatalf("dispatch: %+v, want ErrAgentLost", d)
	}
	if since := time.Since(began); since < lostAfter {
		t.Fatalf("lost after %s, before the bound", since)
	}
}

func TestAgentBackInTimeAnswersTheDispatch(t *testing.T) {
	reg := newRegistry()
	// A bound long enough that the reconnect below is surely in time.
	f := New(Config{Registry: reg, Logs: reg, Token: "tok", Log: zerolog.Nop(), LostAfter: 5 * time.Second})
	s := connect(t, f, "h1")
	done := dispatch(context.Background(), f, s.HostID, Command{SubtaskID: 6, Attempt: 2})
	next(t, s)
	f.Disconnect(s) // the stream breaks
	s2 := connect(t, f, "h1")
	if m := next(t, s2); m.Command == nil || m.Command.SubtaskID != 6 {
		t.Fatalf("got %+v, want the command again", m)
	}
	if err := f.Receive(context.Background(), s2, Inbound{Result: &Result{SubtaskID: 6, Attempt: 2, Outcome: Succeeded}}); err != nil {
		t.Fatal(err)
	}
	if d := result(t, done); d.err != nil || d.r.Outcome != Succeeded {
		t.Fatalf("dispatch: %+v", d)
	}
}

func TestCancelWithoutASessionIsDeliveredOnReconnect(t *testing.T) {
	f := newLossyFleet(newRegistry())
	s := connect(t, f, "h1")
	f.Disconnect(s)
	ctx, cancel := context.WithCancelCause(context.Background())
	done := dispatch(ctx, f, s.HostID, Command{SubtaskID: 7, Attempt: 1})
	waitDispatched(t, f, key{7, 1}, s.HostID)
	cancel(errors.New("canceled by operator"))
	if d := result(t, done); d.err == nil || !strings.Contains(d.err.Error(), "canceled by operator") {
		t.Fatalf("dispatch: %+v", d)
	}
	// A later dispatch of the same attempt waits for the host; when it
	// connects, the cancel goes out before the command.
	again := dispatch(context.Background(), f, s.HostID, Command{SubtaskID: 7, Attempt: 1})
	waitDispatched(t, f, key{7, 1}, s.HostID)
	s2 := connect(t, f, "h1")
	if m := next(t, s2); m.Cancel == nil || m.Cancel.SubtaskID != 7 || m.Cancel.Reason != "canceled by operator" {
		t.Fatalf("got %+v, want the pending cancel first", m)
	}
	if m := next(t, s2); m.Command == nil || m.Command.SubtaskID != 7 {
		t.Fatalf("got %+v, want the command after the cancel", m)
	}
	_ = f.Receive(context.Background(), s2, Inbound{Result: &Result{SubtaskID: 7, Attempt: 1, Outcome: Succeeded}})
	if d := result(t, again); d.err != nil {
		t.Fatalf("second dispatch: %+v", d)
	}
}

func TestPendingCancelIsForgottenOnItsResult(t *testing.T) {
	f := newLossyFleet(newRegistry())
	s := connect(t, f, "h1")
	f.Disconnect(s)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if d := result(t, dispatch(ctx, f, s.HostID, Command{SubtaskID: 8, Attempt: 3})); !errors.Is(d.err, context.Canceled) {
		t.Fatalf("dispatch: %+v", d)
	}
	// The result arrives anyway (late, on the old stream): nothing is left
	// to cancel.
	_ = f.Receive(context.Background(), s, Inbound{Result: &Result{SubtaskID: 8, Attempt: 3, Outcome: Succeeded}})
	s2 := connect(t, f, "h1")
	empty(t, s2)
}

func TestDispatchWithADoneContextSendsOnlyTheCancel(t *testing.T) {
	f := newLossyFleet(newRegistry())
	s := connect(t, f, "h1")
	ctx, cancel := context.WithTimeoutCause(context.Background(), 0, errors.New("timed out after 600s"))
	defer cancel()
	done := dispatch(ctx, f, s.HostID, Command{SubtaskID: 2, Attempt: 1})
	m := next(t, s)
	if m.Cancel == nil || m.Cancel.SubtaskID != 2 || m.Cancel.Reason != "timed out after 600s" {
		t.Fatalf("got %+v, want only the cancel", m)
	}
	_ = f.Receive(context.Background(), s, Inbound{Result: &Result{SubtaskID: 2, Attempt: 1, Outcome: Canceled}})
	if d := result(t, done); d.err == nil || d.r.Outcome != Canceled {
		t.Fatalf("dispatch: %+v", d)
	}
	empty(t, s)
}

func TestPendingCancelsAreBounded(t *testing.T) {
	f := newLossyFleet(newRegistry())
	f.mu.Lock()
	for i := range maxPendingCancels + 2 {
		f.keepCancel(1, Cancel{SubtaskID: int64(i + 1), Attempt: 1})
	}
	f.keepCancel(1, Cancel{SubtaskID: 5, Attempt: 1, Reason: "again"}) // replaces, not adds
	p := f.hosts[1].pending
	f.mu.Unlock()
	if len(p) != maxPendingCancels || p[0].SubtaskID != 3 || p[len(p)-1].Reason != "again" {
		t.Fatalf("%d pending, first %+v, last %+v", len(p), p[0], p[len(p)-1])
	}
}

// stalledSeen is a registry whose HostSeen waits until release is closed:
// a store write behind a busy writer.
type stalledSeen struct {
	*registry
	entered chan struct{}
	release chan struct{}
}

func (r *stalledSeen) HostSeen(ctx context.Context, id int64, at time.Time, procs []host.Process) error {
	close(r.entered)
	select {
	case <-r.release:
	case <-ctx.Done():
		return ctx.Err()
	}
	return r.registry.HostSeen(ctx, id, at, procs)
}

func TestAgentIsNotLostWhileTheServerHandlesItsMessage(t *testing.T) {
	reg := &stalledSeen{registry: newRegistry(), entered: make(chan struct{}), release: make(chan struct{})}
	f := New(Config{Registry: reg, Logs: reg, Token: "tok", Log: zerolog.Nop(), LostAfter: lostAfter})
	defer f.Close()
	s := connect(t, f, "h1")
	// A heartbeat whose report changed is written at once (HostSeen),
	// which stalls for twice the lost bound: the stream is not read
	// meanwhile, so the agent is not silent.
	done := make(chan error, 1)
	go func() {
		done <- f.Receive(context.Background(), s, Inbound{Heartbeat: &Heartbeat{Processes: []host.Process{{Name: "ocp_agentd", PID: 7}}}})
	}()
	<-reg.entered
	time.Sleep(2 * lostAfter)
	close(reg.release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	handled := time.Now()
	if err := s.Err(); err != nil {
		t.Fatalf("session ended while the server handled its message: %v", err)
	}
	// Silent from now on, it is lost a bound after the handling ended.
	waitDone(t, s)
	if !errors.Is(s.Err(), ErrLost) {
		t.Fatalf("session ended with %v, want ErrLost", s.Err())
	}
	if silent := time.Since(handled); silent < lostAfter {
		t.Fatalf("lost %s after its message was handled, before the bound", silent)
	}
	f.Disconnect(s)
}
