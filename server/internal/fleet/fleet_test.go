package fleet

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.uber.org/goleak"

	"agentplane/server/internal/errs"
	"agentplane/server/internal/host"
	"agentplane/server/internal/task"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// registry is a hand-written in-memory Registry and Logs.
type registry struct {
	mu      sync.Mutex
	ids     map[string]int64
	status  map[int64]host.Status
	revoked map[int64]bool
	logs    map[int64][]string
	written map[int64]int       // HostSeen calls, by host
	seen    map[int64]time.Time // HostsSeen, by host
	epochs  map[int64]int64     // RegisterHost calls, by host: the epoch
	live    map[int64]bool      // AttemptLive, by subtask; unset: false
	liveErr error               // AttemptLive's error
}

func newRegistry() *registry {
	return &registry{ids: map[string]int64{}, status: map[int64]host.Status{}, revoked: map[int64]bool{}, logs: map[int64][]string{},
		written: map[int64]int{}, seen: map[int64]time.Time{}, epochs: map[int64]int64{}}
}

func (r *registry) RegisterHost(_ context.Context, h host.Host, _ time.Time) (host.Host, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	id, ok := r.ids[h.Name]
	if !ok {
		id = int64(len(r.ids) + 1)
		r.ids[h.Name] = id
	}
	if r.revoked[id] {
		return host.Host{}, fmt.Errorf("host %d is revoked: %w", id, errs.ErrPermissionDenied)
	}
	r.status[id] = host.StatusOnline
	r.epochs[id]++
	h.ID, h.Epoch = id, r.epochs[id]
	return h, nil
}

func (r *registry) GetHost(_ context.Context, id int64) (*host.Host, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for name, hid := range r.ids {
		if hid == id {
			h := &host.Host{ID: id, Name: name, Status: r.status[id]}
			if r.revoked[id] {
				h.RevokeTime = time.Now()
			}
			return h, nil
		}
	}
	return nil, fmt.Errorf("host %d: %w", id, errs.ErrNotFound)
}

// revoke records the host revoked, as the store does before Fleet.Revoke.
func (r *registry) revoke(id int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.revoked[id] = true
}

func (r *registry) HostSeen(_ context.Context, id int64, _ time.Time, _ []host.Process) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.written[id]++
	return nil
}

func (r *registry) HostsSeen(_ context.Context, seen map[int64]time.Time) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	for id, at := range seen {
		r.seen[id] = at
	}
	return nil
}

func (r *registry) SetHostStatus(_ context.Context, id int64, st host.Status) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.status[id] = st
	return nil
}

func (r *registry) AttemptLive(_ context.Context, _, subtaskID int64, _ int) (bool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.live[subtaskID], r.liveErr
}

func (r *registry) statusOf(id int64) host.Status {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.status[id]
}

func (r *registry) AppendSubtaskLog(_ context.Context, id int64, l task.LogLine) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.logs[id] = append(r.logs[id], l.Line)
	return nil
}

func newFleet(reg *registry) *Fleet {
	return New(Config{Registry: reg, Logs: reg, Token: "tok", Log: zerolog.Nop(), CancelWait: time.Second})
}

func connect(t *testing.T, f *Fleet, name string) *Session {
	t.Helper()
	s, w, err := f.Connect(context.Background(), Hello{Token: "tok", HostName: name})
	if err != nil {
		t.Fatal(err)
	}
	if w.HostID != s.HostID || w.HeartbeatInterval <= 0 {
		t.Fatalf("welcome %+v for session of host %d", w, s.HostID)
	}
	return s
}

func next(t *testing.T, s *Session) Outbound {
	t.Helper()
	select {
	case m := <-s.Out():
		return m
	case <-time.After(5 * time.Second):
		t.Fatal("no message for the agent")
		return Outbound{}
	}
}

func TestConnectRefusesBadHello(t *testing.T) {
	f := newFleet(newRegistry())
	if _, _, err := f.Connect(context.Background(), Hello{Token: "wrong", HostName: "h"}); !errors.Is(err, errs.ErrUnauthenticated) {
		t.Fatalf("wrong token: %v", err)
	}
	if _, _, err := f.Connect(context.Background(), Hello{Token: "tok"}); !errors.Is(err, errs.ErrInvalidArgument) {
		t.Fatalf("no host name: %v", err)
	}
}

func TestDispatchDeliversTheResult(t *testing.T) {
	reg := newRegistry()
	f := newFleet(reg)
	s := connect(t, f, "h1")
	done := make(chan Result, 1)
	go func() {
		r, err := f.Dispatch(context.Background(), s.HostID, Command{SubtaskID: 5, Attempt: 1, StopAgent: &StopAgent{}})
		if err != nil {
			t.Error(err)
		}
		done <- r
	}()
	m := next(t, s)
	if m.Command == nil || m.Command.SubtaskID != 5 {
		t.Fatalf("got %+v, want the command", m)
	}
	ctx := context.Background()
	if err := f.Receive(ctx, s, Inbound{Progress: &Progress{SubtaskID: 5, Attempt: 1, Message: "sent SIGTERM"}}); err != nil {
		t.Fatal(err)
	}
	if err := f.Receive(ctx, s, Inbound{Result: &Result{SubtaskID: 5, Attempt: 1, Outcome: Succeeded, Message: "stopped 3"}}); err != nil {
		t.Fatal(err)
	}
	if r := <-done; r.Outcome != Succeeded || r.Message != "stopped 3" {
		t.Fatalf("result %+v", r)
	}
	if got := reg.logs[5]; len(got) != 1 || got[0] != "sent SIGTERM" {
		t.Fatalf("log %v", got)
	}
	f.Disconnect(s)
	if reg.status[s.HostID] != host.StatusOffline {
		t.Fatalf("status after disconnect %s", reg.status[s.HostID])
	}
}

func TestMessagesFromAnotherHostAreDropped(t *testing.T) {
	reg := newRegistry()
	f := newFleet(reg)
	a, b := connect(t, f, "a"), connect(t, f, "b")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := f.Dispatch(ctx, a.HostID, Command{SubtaskID: 9, Attempt: 1})
		done <- err
	}()
	next(t, a)
	_ = f.Receive(context.Background(), b, Inbound{Progress: &Progress{SubtaskID: 9, Attempt: 1, Message: "forged"}})
	_ = f.Receive(context.Background(), b, Inbound{Result: &Result{SubtaskID: 9, Attempt: 1, Outcome: Succeeded}})
	if m := next(t, b); m.Ack == nil {
		t.Fatalf("a result nobody awaits got %+v, want an ack so the agent forgets it", m)
	}
	select {
	case err := <-done:
		t.Fatalf("dispatch ended on another host's result: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	if len(reg.logs[9]) != 0 {
		t.Fatalf("forged progress was logged: %v", reg.logs[9])
	}
	cancel()
	go func() { // answer the cancel as agentd would
		if m := next(t, a); m.Cancel != nil {
			_ = f.Receive(context.Background(), a, Inbound{Result: &Result{SubtaskID: 9, Attempt: 1, Outcome: Canceled}})
		}
	}()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("dispatch: %v", err)
	}
}

func TestDispatchTimeoutSendsCancelAndWaitsForTheResult(t *testing.T) {
	f := newFleet(newRegistry())
	s := connect(t, f, "h1")
	ctx, cancel := context.WithTimeoutCause(context.Background(), 50*time.Millisecond, errors.New("timed out after 600s"))
	defer cancel()
	type out struct {
		r   Result
		err error
	}
	done := make(chan out, 1)
	go func() {
		r, err := f.Dispatch(ctx, s.HostID, Command{SubtaskID: 1, Attempt: 2})
		done <- out{r, err}
	}()
	next(t, s) // the command
	m := next(t, s)
	if m.Cancel == nil || m.Cancel.SubtaskID != 1 || m.Cancel.Attempt != 2 || m.Cancel.Reason != "timed out after 600s" {
		t.Fatalf("got %+v, want the cancel", m)
	}
	_ = f.Receive(context.Background(), s, Inbound{Result: &Result{SubtaskID: 1, Attempt: 2, Outcome: Canceled, Message: "stopped after 1 of 3"}})
	o := <-done
	if o.err == nil || o.err.Error() != "timed out after 600s" || o.r.Outcome != Canceled {
		t.Fatalf("dispatch: %+v", o)
	}
}

func TestShutdownLeavesTheAgentWorking(t *testing.T) {
	f := newFleet(newRegistry())
	s := connect(t, f, "h1")
	ctx, cancel := context.WithCancelCause(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := f.Dispatch(ctx, s.HostID, Command{SubtaskID: 1, Attempt: 1})
		done <- err
	}()
	next(t, s)
	cancel(task.ErrShutdown)
	if err := <-done; !errors.Is(err, task.ErrShutdown) {
		t.Fatalf("dispatch: %v", err)
	}
	select {
	case m := <-s.Out():
		t.Fatalf("sent %+v to the agent on shutdown", m)
	default:
	}
}

func TestReconnectResendsWaitingCommandsAndReplacesTheSession(t *testing.T) {
	f := newFleet(newRegistry())
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(task.ErrShutdown)
	old := connect(t, f, "h1")
	f.Disconnect(old)
	done := make(chan Result, 1)
	go func() {
		r, _ := f.Dispatch(ctx, old.HostID, Command{SubtaskID: 3, Attempt: 1})
		done <- r
	}()
	// Wait until the dispatch is registered, then connect twice.
	deadline := time.Now().Add(5 * time.Second)
	for !f.dispatchedTo(key{3, 1}, old.HostID) {
		if time.Now().After(deadline) {
			t.Fatal("dispatch not registered")
		}
		time.Sleep(time.Millisecond)
	}
	s1 := connect(t, f, "h1")
	if m := next(t, s1); m.Command == nil || m.Command.SubtaskID != 3 {
		t.Fatalf("got %+v, want the waiting command", m)
	}
	s2 := connect(t, f, "h1")
	select {
	case <-s1.Done():
	default:
		t.Fatal("the replaced session is still open")
	}
	if m := next(t, s2); m.Command == nil {
		t.Fatalf("got %+v on the new session", m)
	}
	f.Disconnect(s1) // the old stream ending must not take the host offline
	if f.hosts[s2.HostID].session != s2 {
		t.Fatal("host disconnected by its replaced session")
	}
	_ = f.Receive(context.Background(), s2, Inbound{Result: &Result{SubtaskID: 3, Attempt: 1, Outcome: Succeeded}})
	if r := <-done; r.Outcome != Succeeded {
		t.Fatalf("result %+v", r)
	}
}

func TestWaitConnected(t *testing.T) {
	f := newFleet(newRegistry())
	began := time.Now()
	if err := f.WaitConnected(context.Background(), 1, 20*time.Millisecond); !errors.Is(err, ErrNotConnected) ||
		err.Error() != "agentd not connected within 20ms" {
		t.Fatalf("err %v with no session", err)
	}
	if took := time.Since(began); took < 20*time.Millisecond {
		t.Fatalf("gave up after %s", took)
	}
	done := make(chan error, 1)
	go func() { done <- f.WaitConnected(context.Background(), 1, 5*time.Second) }()
	connect(t, f, "other") // another host joining wakes the waiter, which waits on
	s := connect(t, f, "h1")
	if s.HostID != 2 {
		t.Fatalf("host id %d", s.HostID)
	}
	if err := <-done; err != nil {
		// host "h1" got id 2; the waiter asked for id 1 ("other"), which joined first
		t.Fatalf("the waiter did not see host 1 join: %v", err)
	}
	ctx, cancel := context.WithCancelCause(context.Background())
	cancel(errors.New("shutting down"))
	if err := f.WaitConnected(ctx, 3, 5*time.Second); err == nil || err.Error() != "shutting down" {
		t.Fatalf("err %v, want ctx's cause", err)
	}
}

func TestCloseEndsSessionsAndRefusesNewOnes(t *testing.T) {
	reg := newRegistry()
	f := newFleet(reg)
	s := connect(t, f, "h1")
	f.Close()
	select {
	case <-s.Done():
	default:
		t.Fatal("session still open after Close")
	}
	if !errors.Is(s.Err(), ErrClosing) || !errors.Is(s.Err(), errs.ErrUnavailable) {
		t.Fatalf("session ended with %v, want ErrClosing", s.Err())
	}
	if _, _, err := f.Connect(context.Background(), Hello{Token: "tok", HostName: "h2"}); !errors.Is(err, ErrClosing) {
		t.Fatalf("connect after Close: %v", err)
	}
	// At shutdown the host is not written OFFLINE one by one: the next
	// server marks every host OFFLINE at start.
	f.Disconnect(s)
	if st := reg.statusOf(s.HostID); st != host.StatusOnline {
		t.Fatalf("status %s written after the stream ended at shutdown", st)
	}
}

// Heartbeats that report what was stored are not written one by one: the
// fleet notes the time and writes all such hosts in one batch (at the
// latest on Close). A changed report is written at once.
func TestUnchangedHeartbeatsAreBatched(t *testing.T) {
	reg := newRegistry()
	f := New(Config{Registry: reg, Logs: reg, Token: "tok", Log: zerolog.Nop(), HeartbeatInterval: time.Hour})
	procs := []host.Process{{PID: 10, Name: "ocp_agentd", CreateTime: time.Unix(100, 0)}}
	s, _, err := f.Connect(context.Background(), Hello{Token: "tok", HostName: "h1", Processes: procs})
	if err != nil {
		t.Fatal(err)
	}
	beat := func(ps []host.Process) {
		t.Helper()
		if err := f.Receive(context.Background(), s, Inbound{Heartbeat: &Heartbeat{Processes: ps}}); err != nil {
			t.Fatal(err)
		}
	}
	for range 5 {
		beat(slices.Clone(procs))
	}
	reg.mu.Lock()
	written := reg.written[s.HostID]
	reg.mu.Unlock()
	if written != 0 {
		t.Fatalf("%d unchanged heartbeats written one by one", written)
	}
	changed := []host.Process{{PID: 11, Name: "ocp_agentd", CreateTime: time.Unix(200, 0)}}
	beat(changed)
	beat(slices.Clone(changed))
	reg.mu.Lock()
	written = reg.written[s.HostID]
	reg.mu.Unlock()
	if written != 1 {
		t.Fatalf("changed report written %d times, want once", written)
	}
	f.Close()
	reg.mu.Lock()
	defer reg.mu.Unlock()
	if reg.seen[s.HostID].IsZero() {
		t.Fatal("Close did not write the hosts seen")
	}
}
