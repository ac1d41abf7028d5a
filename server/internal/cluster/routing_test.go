package cluster_test

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"agentplane/server/internal/fleet"
	"agentplane/server/internal/host"
)

func stop(subtask int64) fleet.Command {
	return fleet.Command{SubtaskID: subtask, Attempt: 1, Timeout: 10 * time.Second, StopAgent: &fleet.StopAgent{}}
}

// A command dispatched on A for a host whose stream is on B runs once, on
// B's stream, and its result comes back on A; A's ack reaches the agent
// through B; A sees the host connected.
func TestCommandRunsOnTheReplicaHoldingTheStream(t *testing.T) {
	c := newCluster(t, "a", "b")
	a, b := c.nodes["a"], c.nodes["b"]
	ag := c.host("h1", 100*time.Millisecond)
	if err := ag.connect(b.addr); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the host on b", func() bool { return b.fleet.Connected(ag.hostID) })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.router.WaitConnected(ctx, ag.hostID, time.Second); err != nil {
		t.Fatalf("WaitConnected on a: %v", err)
	}
	res, err := a.router.Dispatch(ctx, ag.hostID, stop(11))
	if err != nil || res.Outcome != fleet.Succeeded || res.Message != "stopped" || res.SubtaskID != 11 {
		t.Fatalf("Dispatch on a: %+v, %v", res, err)
	}
	if runs, queries, _ := ag.counts(ak{11, 1}); runs != 1 || queries != 0 {
		t.Fatalf("ran %d times, %d queries; want once, none", runs, queries)
	}
	if a.fleet.Connected(ag.hostID) {
		t.Fatal("the host is connected to a")
	}
	a.router.Ack(ag.hostID, 11, 1)
	eventually(t, "the ack through b", func() bool { _, _, acks := ag.counts(ak{11, 1}); return acks == 1 })
}

// B dies (its gRPC server stopped, its listener closed) while a command it
// runs for A is under way; the agent reconnects to C; the command follows
// it: C asks agentd what became of it (Resumed) instead of running it
// again, and A gets the result. A's peers report B gone.
func TestCommandFollowsTheHostWhenItsReplicaDies(t *testing.T) {
	c := newCluster(t, "a", "b", "c")
	a, b, cc := c.nodes["a"], c.nodes["b"], c.nodes["c"]
	ag := c.host("h1", 1500*time.Millisecond)
	if err := ag.connect(b.addr); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the host on b", func() bool { return b.fleet.Connected(ag.hostID) })
	type out struct {
		res fleet.Result
		err error
	}
	done := make(chan out, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		r, err := a.router.Dispatch(ctx, ag.hostID, stop(12))
		done <- out{r, err}
	}()
	eventually(t, "the command running on the agent", func() bool { runs, _, _ := ag.counts(ak{12, 1}); return runs == 1 })
	b.kill()
	if err := ag.connect(cc.addr); err != nil {
		t.Fatal(err)
	}
	var o out
	select {
	case o = <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("no result on a")
	}
	if o.err != nil || o.res.Outcome != fleet.Succeeded {
		t.Fatalf("Dispatch on a: %+v, %v", o.res, o.err)
	}
	runs, queries, _ := ag.counts(ak{12, 1})
	if runs != 1 || queries < 1 {
		t.Fatalf("ran %d times with %d queries; want once, asked at least once", runs, queries)
	}
	eventually(t, "b reported gone on a", func() bool {
		a.mu.Lock()
		defer a.mu.Unlock()
		return slices.Contains(a.gone, "b")
	})
	h, err := c.st.GetHost(context.Background(), ag.hostID)
	if err != nil || h.Replica != "c" || h.Status != host.StatusOnline {
		t.Fatalf("host after the failover: %+v, %v", h, err)
	}
}

// A command fails as "agentd lost" only once its host has been on no live
// replica for the lost bound: its replica died, its agent never came back.
func TestCommandLostOnlyWhenOnNoLiveReplica(t *testing.T) {
	c := newCluster(t, "a", "b")
	done := c.dispatchThenKillHolder(20*time.Second, 13)
	killed := time.Now()
	select {
	case err := <-done:
		if !errors.Is(err, fleet.ErrAgentLost) {
			t.Fatalf("Dispatch: %v, want ErrAgentLost", err)
		}
		if waited := time.Since(killed); waited < lostAfter-100*time.Millisecond {
			t.Fatalf("lost after %s, before the bound (%s)", waited, lostAfter)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Dispatch still waits")
	}
}

// A host's stream moves from A to B while A's stream is still open; when
// A's session then ends, its OFFLINE write (fenced by its epoch) does not
// undo B's ONLINE.
func TestStaleSessionEndKeepsTheNewReplicaOnline(t *testing.T) {
	c := newCluster(t, "a", "b")
	a, b := c.nodes["a"], c.nodes["b"]
	ag := c.host("h1", time.Second)
	if err := ag.connect(a.addr); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the host on a", func() bool { return a.fleet.Connected(ag.hostID) })
	ag.mu.Lock()
	old := ag.cur
	ag.mu.Unlock()
	if err := ag.connect(b.addr); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the host on b", func() bool { return b.fleet.Connected(ag.hostID) })
	old.close()
	eventually(t, "a's session ended", func() bool { return !a.fleet.Connected(ag.hostID) })
	for range 30 { // a's Disconnect writes right after its session ends
		h, err := c.st.GetHost(context.Background(), ag.hostID)
		if err != nil || h.Status != host.StatusOnline || h.Replica != "b" {
			t.Fatalf("host after a's stale session ended: %+v, %v", h, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// The host's replica dies and its lease passes before its agent is back;
// the agent then reconnects to the replica that dispatched the command:
// the command, waiting for the host to be on a live replica, runs on here
// resumed (asked, not run again).
func TestCommandFollowsTheHostBackHere(t *testing.T) {
	c := newCluster(t, "a", "b")
	a, b := c.nodes["a"], c.nodes["b"]
	ag := c.host("h1", 1500*time.Millisecond)
	if err := ag.connect(b.addr); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the host on b", func() bool { return b.fleet.Connected(ag.hostID) })
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		r, err := a.router.Dispatch(ctx, ag.hostID, stop(14))
		if err == nil && r.Outcome != fleet.Succeeded {
			err = errors.New("outcome " + r.Message)
		}
		done <- err
	}()
	eventually(t, "the command running on the agent", func() bool { runs, _, _ := ag.counts(ak{14, 1}); return runs == 1 })
	b.kill()
	c.dir.set("b", b.addr, false)
	if err := ag.connect(a.addr); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Dispatch on a: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no result on a")
	}
	if runs, queries, _ := ag.counts(ak{14, 1}); runs != 1 || queries < 1 {
		t.Fatalf("ran %d times with %d queries; want once, asked", runs, queries)
	}
}

// A failover fails no command by itself: while the dead replica's hosts
// keep reconnecting to live replicas, a command whose host is not back yet
// waits past the lost bound (counted from the last host seen moving).
func TestFailoverFailsNoCommandWhileHostsKeepMoving(t *testing.T) {
	c := newCluster(t, "a", "b", "c")
	a, b, cc := c.nodes["a"], c.nodes["b"], c.nodes["c"]
	first, second := c.host("h1", time.Second), c.host("h2", time.Second)
	for _, ag := range []*agent{first, second} {
		if err := ag.connect(b.addr); err != nil {
			t.Fatal(err)
		}
		eventually(t, "the host on b", func() bool { return b.fleet.Connected(ag.hostID) })
	}
	done := make(chan error, 2)
	for i, ag := range []*agent{first, second} {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			r, err := a.router.Dispatch(ctx, ag.hostID, stop(int64(20+i)))
			if err == nil && r.Outcome != fleet.Succeeded {
				err = errors.New("outcome " + r.Message)
			}
			done <- err
		}()
	}
	eventually(t, "both commands running", func() bool {
		r1, _, _ := first.counts(ak{20, 1})
		r2, _, _ := second.counts(ak{21, 1})
		return r1 == 1 && r2 == 1
	})
	killed := time.Now()
	b.kill()
	c.dir.set("b", b.addr, false)
	// The first host is back on c two thirds into the bound; the second
	// only past it (but within the bound of the first one's move).
	eventually(t, "two thirds of the bound", func() bool { return time.Since(killed) > 2*lostAfter/3 })
	if err := first.connect(cc.addr); err != nil {
		t.Fatal(err)
	}
	eventually(t, "past the bound", func() bool { return time.Since(killed) > lostAfter+lostAfter/3 })
	if err := second.connect(cc.addr); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("a command failed in the failover: %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("no result on a")
		}
	}
}
