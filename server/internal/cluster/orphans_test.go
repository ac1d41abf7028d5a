package cluster

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

type countingOrphans struct {
	calls     atomic.Int32
	deadAfter atomic.Int64
}

func (c *countingOrphans) MarkOrphanHostsOffline(_ context.Context, deadAfter time.Duration) (int64, error) {
	c.calls.Add(1)
	c.deadAfter.Store(int64(deadAfter))
	return 1, nil
}

// The sweep runs every interval with its bound, and returns when its
// context ends.
func TestSweepOrphanHostsRunsUntilCanceled(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	hosts := &countingOrphans{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		SweepOrphanHosts(ctx, hosts, time.Millisecond, 36*time.Second, zerolog.Nop())
	}()
	deadline := time.Now().Add(10 * time.Second)
	for hosts.calls.Load() < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("%d sweeps in 10 s", hosts.calls.Load())
		}
		time.Sleep(time.Millisecond)
	}
	if got := time.Duration(hosts.deadAfter.Load()); got != 36*time.Second {
		t.Fatalf("bound %s, want 36s", got)
	}
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the sweep did not return after its context ended")
	}
}
