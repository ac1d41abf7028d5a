package fleet

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"
)

// holdsOnlyHeard fails unless every host state of f holds nothing but when
// its host was heard from (kept for the lost bound of a later dispatch).
func holdsOnlyHeard(t *testing.T, f *Fleet) {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	for id, st := range f.hosts {
		rest := *st
		rest.heard = time.Time{}
		if st.id != id || st.heard.IsZero() || !rest.empty() {
			t.Errorf("host %d: state %+v, want only when it was heard from", id, *st)
		}
	}
	if len(f.seenHosts) != 0 || len(f.offlineHosts) != 0 || len(f.inflight) != 0 {
		t.Errorf("%d seen, %d offline, %d in flight left", len(f.seenHosts), len(f.offlineHosts), len(f.inflight))
	}
}

// Hosts that connect, report, answer a dispatch and go away leave nothing
// behind but when they were last heard from; hosts only waited for leave
// nothing at all. (A host that replaced its stream also keeps its token
// bucket until it refills: see hostState.replacements.)
func TestHostStateIsDroppedWhenEmpty(t *testing.T) {
	const hosts = 200
	reg := newRegistry()
	f := newFleet(reg)
	var wg sync.WaitGroup
	for i := range hosts {
		wg.Go(func() {
			ctx := context.Background()
			s, _, err := f.Connect(ctx, Hello{Token: "tok", HostName: fmt.Sprintf("h%d", i)})
			if err != nil {
				t.Error(err)
				return
			}
			if err := f.Receive(ctx, s, Inbound{Heartbeat: &Heartbeat{}}); err != nil { // unchanged: batched
				t.Error(err)
			}
			done := dispatch(ctx, f, s.HostID, Command{SubtaskID: int64(i + 1), Attempt: 1, StopAgent: &StopAgent{}})
			if m := <-s.Out(); m.Command == nil {
				t.Errorf("got %+v, want the command", m)
			}
			if err := f.Receive(ctx, s, Inbound{Result: &Result{SubtaskID: int64(i + 1), Attempt: 1, Outcome: Succeeded}}); err != nil {
				t.Error(err)
			}
			if d := <-done; d.err != nil {
				t.Error(d.err)
			}
			f.Disconnect(s)
			if err := f.WaitConnected(ctx, s.HostID, time.Millisecond); !errors.Is(err, ErrNotConnected) {
				t.Errorf("wait for a host gone: %v", err)
			}
		})
	}
	wg.Wait()
	f.Close() // writes the batched heartbeats
	f.mu.Lock()
	n := len(f.hosts)
	f.mu.Unlock()
	if n != hosts {
		t.Errorf("%d host states, want %d", n, hosts)
	}
	holdsOnlyHeard(t, f)

	f = newFleet(newRegistry())
	defer f.Close()
	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	for id := range int64(hosts) {
		wg.Go(func() {
			if err := f.WaitConnected(context.Background(), id+1, time.Millisecond); !errors.Is(err, ErrNotConnected) {
				t.Errorf("wait for host %d: %v", id+1, err)
			}
			if err := f.WaitConnected(canceled, id+1, time.Hour); !errors.Is(err, context.Canceled) {
				t.Errorf("canceled wait for host %d: %v", id+1, err)
			}
		})
	}
	wg.Wait()
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.hosts) != 0 {
		t.Errorf("%d host states left by waits for hosts never heard from", len(f.hosts))
	}
}
