package store

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"agentplane/server/internal/errs"
	"agentplane/server/internal/host"
	"agentplane/server/internal/task"
)

// TestFinishAgentOperationsAreGrouped: many Finish writes at once, of two
// tasks, are written in fewer groups than calls, and each gets its own
// outcome: released, ErrConflict for a host another task holds,
// ErrNotFound for a missing host; a host locked by neither is written too.
func TestFinishAgentOperationsAreGrouped(t *testing.T) {
	ctx := context.Background()
	const n = 300
	s, hs := groupTestHosts(t, n+1, func(int) string { return "" }) // the last for a caller whose ctx ended
	ids := hostIDs(hs)
	// Task 1 holds the first half but for host 0, which task 2 holds
	// (its plan holds the second half's first ten too); the rest are free.
	lock := func(taskID int64, hosts []int64) {
		t.Helper()
		rs := make([]task.Resource, len(hosts))
		for i, id := range hosts {
			rs[i] = task.Resource{Kind: host.ResourceKind, ID: id}
		}
		if err := s.tx(ctx, func(ctx context.Context, tx *wtx) error { return holdResources(ctx, tx, rs, taskID) }); err != nil {
			t.Fatal(err)
		}
	}
	lock(2, []int64{ids[0]})
	lock(1, ids[1:n/2])
	lock(2, ids[n/2:n/2+10])

	type call struct {
		hostID, taskID int64
		st             host.AgentStatus
		want           error
	}
	var calls []call
	for i, id := range ids[:n] {
		switch {
		case i == 0:
			calls = append(calls, call{id, 1, host.AgentStopped, errs.ErrConflict})
		case i < n/2:
			calls = append(calls, call{id, 1, host.AgentStopped, nil})
		case i < n/2+10:
			calls = append(calls, call{id, 2, host.AgentStarted, nil})
		default:
			calls = append(calls, call{id, 1, host.AgentStarted, nil}) // free: written
		}
	}
	calls = append(calls, call{ids[n] + 1000, 1, host.AgentStopped, errs.ErrNotFound})
	// A caller whose ctx has ended is not written.
	done, cancel := context.WithCancel(ctx)
	cancel()
	lock(3, []int64{ids[n]})
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := s.FinishAgentOperation(done, ids[n], 3, host.AgentStarted); !errors.Is(err, context.Canceled) {
			t.Errorf("finish with a done ctx: %v", err)
		}
	})
	for _, c := range calls {
		wg.Go(func() {
			err := s.FinishAgentOperation(ctx, c.hostID, c.taskID, c.st)
			if c.want == nil && err != nil || c.want != nil && !errors.Is(err, c.want) {
				t.Errorf("host %d, task %d: %v, want %v", c.hostID, c.taskID, err, c.want)
			}
		})
	}
	wg.Wait()
	if g := s.finishes.groupRuns(); g >= len(calls) {
		t.Fatalf("%d calls in %d groups: not grouped", len(calls), g)
	} else {
		t.Logf("%d calls in %d groups", len(calls)+1, g)
	}
	for _, c := range calls[:n] {
		h, err := s.HostState(ctx, c.hostID)
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case c.want != nil:
			if h.OpTaskID != 2 {
				t.Fatalf("host %d held by another task: %+v, want unchanged", c.hostID, h)
			}
		case h.OpTaskID != 0 || h.AgentStatus != c.st:
			t.Fatalf("host %d: lock %d, agent %s; want released, %s", c.hostID, h.OpTaskID, h.AgentStatus, c.st)
		}
	}
	if h, err := s.HostState(ctx, ids[n]); err != nil || h.OpTaskID != 3 {
		t.Fatalf("host of the done ctx: %+v, %v; want still held by task 3", h, err)
	}
}

// TestHostReadsAreGrouped: HostState and HostReplicas called for many
// hosts at once read them in fewer queries than calls, and each caller
// gets what a read of its own would: its host, ErrNotFound, the hosts of
// its list that exist.
func TestHostReadsAreGrouped(t *testing.T) {
	ctx := context.Background()
	const n = 200
	s, hs := groupTestHosts(t, n, func(i int) string { return fmt.Sprint("r", i%3) })
	ids := hostIDs(hs)
	missing := ids[n-1] + 1000
	var wg sync.WaitGroup
	for i, id := range append(ids, missing) {
		wg.Go(func() {
			h, err := s.HostState(ctx, id)
			switch {
			case id == missing:
				if !errors.Is(err, errs.ErrNotFound) {
					t.Errorf("missing host: %v, want ErrNotFound", err)
				}
			case err != nil || h.ID != id || h.Name != fmt.Sprint("h", i) || h.Status != host.StatusOnline:
				t.Errorf("host %d: %+v, %v", id, h, err)
			}
		})
		wg.Go(func() {
			list := []int64{id, missing, ids[(i+1)%n]}
			got, err := s.HostReplicas(ctx, list)
			if err != nil {
				t.Error(err)
				return
			}
			want := map[int64]bool{ids[(i+1)%n]: true}
			if id != missing {
				want[id] = true
			}
			if len(got) != len(want) {
				t.Errorf("hosts %v: %v", list, got)
			}
			for id := range want {
				one, err := s.HostReplica(ctx, id)
				if err != nil || got[id] != one {
					t.Errorf("host %d: %+v in the group, %+v, %v alone", id, got[id], one, err)
				}
			}
		})
	}
	wg.Wait()
	if g := s.states.groupRuns(); g >= n {
		t.Fatalf("%d HostState calls in %d queries: not grouped", n+1, g)
	}
	if g := s.replicas.groupRuns(); g >= n {
		t.Fatalf("%d HostReplicas calls in %d groups: not grouped", n+1, g)
	}
	t.Logf("%d calls each: HostState in %d groups, HostReplicas in %d", n+1, s.states.groupRuns(), s.replicas.groupRuns())
}

// groupTestHosts opens a test store with n hosts h0, h1, ... registered,
// host i on replica(i).
func groupTestHosts(t *testing.T, n int, replica func(i int) string) (*Store, []host.Host) {
	t.Helper()
	s, err := OpenTest(t, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	at := time.UnixMilli(1_700_000_000_000)
	hs := make([]host.Host, n)
	for i := range hs {
		if hs[i], err = s.RegisterHost(context.Background(), host.Host{Name: fmt.Sprint("h", i), Replica: replica(i)}, at); err != nil {
			t.Fatal(err)
		}
	}
	return s, hs
}

// hostIDs returns the ids of hs.
func hostIDs(hs []host.Host) []int64 {
	ids := make([]int64, len(hs))
	for i, h := range hs {
		ids[i] = h.ID
	}
	return ids
}
