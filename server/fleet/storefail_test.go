package fleet

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"agentplane/server/errs"
	"agentplane/server/host"
	"agentplane/server/task"
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
