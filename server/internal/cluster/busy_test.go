package cluster_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"agentplane/server/internal/fleet"
)

// A command whose host's replica died is not failed "agentd lost" while
// the replica waiting for it is too busy to take every agent connecting
// (a failover's reconnects queued for its TLS handshakes): the host's
// agentd may be in that queue. Once the replica is no longer busy, the
// lost bound runs out as before.
func TestCommandNotLostWhileItsReplicaIsBusy(t *testing.T) {
	c := newCluster(t, "a", "b")
	a := c.nodes["a"]
	done := c.dispatchThenKillHolder(30*time.Second, 14)
	var lastBusy time.Time
	for end := time.Now().Add(2 * lostAfter); time.Now().Before(end); {
		lastBusy = time.Now()
		a.fleet.Busy()
		select {
		case err := <-done:
			t.Fatalf("Dispatch ended while its replica was busy: %v", err)
		case <-time.After(lostAfter / 10):
		}
	}
	select {
	case err := <-done:
		if !errors.Is(err, fleet.ErrAgentLost) {
			t.Fatalf("Dispatch: %v, want ErrAgentLost", err)
		}
		if waited := time.Since(lastBusy); waited < lostAfter-100*time.Millisecond {
			t.Fatalf("lost %s after the replica was last busy, before the bound (%s)", waited, lostAfter)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Dispatch still waits")
	}
}

// dispatchThenKillHolder runs a stop (subtask, attempt 1) through replica
// a for a host whose stream is on b, and once agentd runs it kills b and
// the agentd, b's lease passed; the Dispatch's error comes on the channel
// (it has up to wait).
func (c *cluster3) dispatchThenKillHolder(wait time.Duration, subtask int64) <-chan error {
	t := c.t
	t.Helper()
	a, b := c.nodes["a"], c.nodes["b"]
	ag := c.host("h1", time.Hour)
	if err := ag.connect(b.addr); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the host on b", func() bool { return b.fleet.Connected(ag.hostID) })
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	t.Cleanup(cancel)
	done := make(chan error, 1)
	go func() {
		_, err := a.router.Dispatch(ctx, ag.hostID, stop(subtask))
		done <- err
	}()
	eventually(t, "the command running on the agent", func() bool { runs, _, _ := ag.counts(ak{subtask, 1}); return runs == 1 })
	b.kill()
	ag.close()
	c.dir.set("b", b.addr, false) // its lease passed
	return done
}
