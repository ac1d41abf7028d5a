package fleet

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"agentplane/server/internal/errs"
	"agentplane/server/internal/host"
	"agentplane/server/internal/task"
)

// fullRegistry fails heartbeats' and progress lines' writes while full.
type fullRegistry struct {
	*registry
	full atomic.Bool
}

var errFull = &errs.StoreError{Full: true, Err: errors.New("database or disk is full (13)")}

func (r *fullRegistry) HostSeen(ctx context.Context, id int64, at time.Time, procs []host.Process) error {
	if r.full.Load() {
		return errFull
	}
	return r.registry.HostSeen(ctx, id, at, procs)
}

func (r *fullRegistry) AppendSubtaskLog(ctx context.Context, id int64, l task.LogLine) error {
	if r.full.Load() {
		return errFull
	}
	return r.registry.AppendSubtaskLog(ctx, id, l)
}

// TestWriteFailuresKeepTheStream: a heartbeat or progress line the store
// cannot record is skipped, not an error that would end the agent's stream;
// the heartbeat's report is written by the next heartbeat once the store
// works again.
func TestWriteFailuresKeepTheStream(t *testing.T) {
	reg := &fullRegistry{registry: newRegistry()}
	f := New(Config{Registry: reg, Logs: reg, Token: "tok", Log: zerolog.Nop(), CancelWait: time.Second})
	defer f.Close()
	s := connect(t, f, "h1")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dispatched := make(chan struct{})
	go func() {
		defer close(dispatched)
		_, _ = f.Dispatch(ctx, s.HostID, Command{SubtaskID: 5, Attempt: 1, StopAgent: &StopAgent{}})
	}()
	defer func() { cancel(); <-dispatched }()
	next(t, s)

	reg.full.Store(true)
	procs := []host.Process{{PID: 42, Name: "ocp_agentd"}}
	if err := f.Receive(ctx, s, Inbound{Heartbeat: &Heartbeat{Processes: procs}}); err != nil {
		t.Fatalf("heartbeat on a full store: %v, want nil (skipped)", err)
	}
	if err := f.Receive(ctx, s, Inbound{Progress: &Progress{SubtaskID: 5, Attempt: 1, Message: "sent SIGTERM"}}); err != nil {
		t.Fatalf("progress on a full store: %v, want nil (skipped)", err)
	}
	if s.Err() != nil {
		t.Fatalf("session ended: %v", s.Err())
	}

	reg.full.Store(false)
	if err := f.Receive(ctx, s, Inbound{Heartbeat: &Heartbeat{Processes: procs}}); err != nil {
		t.Fatal(err)
	}
	reg.mu.Lock()
	written := reg.written[s.HostID]
	reg.mu.Unlock()
	if written != 1 {
		t.Fatalf("report written %d times once the store works, want once (it was not stored before)", written)
	}
}

// statusRegistry fails SetHostStatus while full.
type statusRegistry struct {
	*registry
	full   atomic.Bool
	failed atomic.Int64
}

func (r *statusRegistry) SetHostStatus(ctx context.Context, id int64, st host.Status) error {
	if r.full.Load() {
		r.failed.Add(1)
		return errFull
	}
	return r.registry.SetHostStatus(ctx, id, st)
}

// TestOfflineWrittenOnceStoreIsBack: a host that disconnects while the
// store cannot be written is written OFFLINE once it can, by itself.
func TestOfflineWrittenOnceStoreIsBack(t *testing.T) {
	reg := &statusRegistry{registry: newRegistry()}
	f := New(Config{Registry: reg, Logs: reg, Token: "tok", Log: zerolog.Nop(), HeartbeatInterval: 20 * time.Millisecond})
	defer f.Close()
	s := connect(t, f, "h1")
	reg.full.Store(true)
	f.Disconnect(s)
	if st := reg.statusOf(s.HostID); st != host.StatusOnline {
		t.Fatalf("status %s while the store is full; the test needs the write to fail", st)
	}
	deadline := time.Now().Add(5 * time.Second)
	for reg.failed.Load() < 3 { // retried, and failing
		if time.Now().After(deadline) {
			t.Fatalf("OFFLINE write tried %d times in 5s, want retries", reg.failed.Load())
		}
		time.Sleep(10 * time.Millisecond)
	}
	reg.full.Store(false)
	for reg.statusOf(s.HostID) != host.StatusOffline {
		if time.Now().After(deadline) {
			t.Fatalf("host %s 5s after the store came back, want OFFLINE", reg.statusOf(s.HostID))
		}
		time.Sleep(10 * time.Millisecond)
	}
}
