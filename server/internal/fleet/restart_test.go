package fleet

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// The restart's bounds in these tests: an agent silent for restartLost is
// lost, and the reconnections settle restartSettle (the heartbeat interval)
// after the last expected host came back.
const (
	restartLost   = time.Second
	restartSettle = 300 * time.Millisecond
)

func newRestartedFleet(reg *registry, settle time.Duration) *Fleet {
	return New(Config{Registry: reg, Logs: reg, Token: "tok", Log: zerolog.Nop(), CancelWait: 100 * time.Millisecond,
		LostAfter: restartLost, HeartbeatInterval: settle})
}

// hostName is the name the test registry gives id i when hosts connect for
// the first time in the order 1, 2, ...
func hostName(i int) string { return fmt.Sprintf("h%d", i) }

// answer reads the command on s and answers it.
func answer(t *testing.T, f *Fleet, s *Session) {
	t.Helper()
	m := next(t, s)
	if m.Command == nil {
		t.Fatalf("got %+v, want a command", m)
	}
	if err := f.Receive(context.Background(), s, Inbound{Result: &Result{SubtaskID: m.Command.SubtaskID,
		Attempt: m.Command.Attempt, Outcome: Succeeded}}); err != nil {
		t.Fatal(err)
	}
}

// After a restart, hosts connected before it come back one at a time, as
// slowly as a busy server accepts them: the last long after LostAfter. No
// dispatch to them fails while they keep coming back.
func TestRestartStormSlowerThanTheLostBoundFailsNoDispatch(t *testing.T) {
	const hosts = 8
	const every = restartLost / 4 // well inside the settle window plus the bound
	reg := newRegistry()
	f := newRestartedFleet(reg, restartSettle)
	ids := make([]int64, hosts)
	for i := range ids {
		ids[i] = int64(i + 1)
	}
	f.Expect(ids)
	f.Serving()
	began := time.Now()
	var done []<-chan dispatched
	for _, id := range ids {
		done = append(done, dispatch(context.Background(), f, id, Command{SubtaskID: id, Attempt: 1, StopAgent: &StopAgent{}}))
		waitDispatched(t, f, key{id, 1}, id)
	}
	for i := range hosts {
		time.Sleep(every)
		s := connect(t, f, hostName(i+1))
		answer(t, f, s)
	}
	if took := time.Since(began); took < restartLost+restartSettle {
		t.Fatalf("the storm took %s, no longer than the bounds: the test proves nothing", took)
	}
	for i, d := range done {
		if r := result(t, d); r.err != nil || r.r.Outcome != Succeeded {
			t.Errorf("dispatch to host %d: %+v", i+1, r)
		}
	}
}

// A host expected back that never comes back fails LostAfter after the
// reconnections settled (one heartbeat interval after the last host came
// back), not before, and not much later.
func TestRestartHostThatNeverComesBackFailsWithinTheBound(t *testing.T) {
	reg := newRegistry()
	f := newRestartedFleet(reg, restartSettle)
	f.Expect([]int64{1, 2, 3})
	f.Serving()
	gone := dispatch(context.Background(), f, 3, Command{SubtaskID: 30, Attempt: 1})
	waitDispatched(t, f, key{30, 1}, 3)
	prepare := make(chan error, 1)
	go func() { prepare <- f.WaitConnected(context.Background(), 3, 10*time.Millisecond) }()
	connect(t, f, hostName(1))
	time.Sleep(restartLost / 2)
	connect(t, f, hostName(2))
	back := time.Now() // after the fleet's own: an upper bound of the last return
	bound := back.Add(restartSettle + restartLost)

	d := result(t, gone)
	failed := time.Now()
	if !errors.Is(d.err, ErrAgentLost) || !strings.Contains(d.err.Error(), "not back within 1s after the server restart") {
		t.Fatalf("dispatch: %+v, want ErrAgentLost naming the restart", d)
	}
	if early := bound.Sub(failed); early > 50*time.Millisecond {
		t.Fatalf("failed %s before the bound", early)
	}
	if late := failed.Sub(bound); late > time.Second {
		t.Fatalf("failed %s after the bound", late)
	}
	select {
	case err := <-prepare:
		if !errors.Is(err, ErrNotConnected) || !strings.Contains(err.Error(), "not back within") {
			t.Fatalf("WaitConnected: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("WaitConnected still waiting")
	}
	// A wait that begins after the restart's bound is an ordinary one.
	began := time.Now()
	if err := f.WaitConnected(context.Background(), 3, 20*time.Millisecond); err == nil ||
		err.Error() != "agentd not connected within 20ms" || time.Since(began) < 20*time.Millisecond {
		t.Fatalf("WaitConnected after the restart's bound: %v after %s", err, time.Since(began))
	}
}

// Before the server serves, an expected host's silence does not count:
// its bound runs from Serving.
func TestRestartBoundRunsFromServing(t *testing.T) {
	f := newRestartedFleet(newRegistry(), restartSettle)
	f.Expect([]int64{1})
	began := time.Now()
	d := dispatch(context.Background(), f, 1, Command{SubtaskID: 1, Attempt: 1})
	waitDispatched(t, f, key{1, 1}, 1)
	time.Sleep(restartLost + restartLost/2)
	select {
	case r := <-d:
		t.Fatalf("dispatch ended before the server served: %+v", r)
	default:
	}
	serving := time.Now()
	f.Serving()
	r := result(t, d)
	if !errors.Is(r.err, ErrAgentLost) {
		t.Fatalf("dispatch: %+v", r)
	}
	if took := time.Since(serving); took < restartLost-50*time.Millisecond {
		t.Fatalf("lost %s after Serving (%s after the dispatch began), before the bound", took, time.Since(began))
	}
}

// During a restart's storm, hosts not expected back, and expected hosts
// once they have connected, are lost as in normal operation: LostAfter
// after they were last heard from (or after the dispatch began).
func TestRestartOtherHostsAreLostAsUsual(t *testing.T) {
	reg := newRegistry()
	// A long settle window: host 2 below is surely still waited for when
	// the others have failed.
	f := newRestartedFleet(reg, restartLost)
	f.Expect([]int64{1, 2})
	f.Serving()
	s := connect(t, f, hostName(1))
	f.Disconnect(s)
	heard := time.Now()
	back := dispatch(context.Background(), f, 1, Command{SubtaskID: 1, Attempt: 1})
	never := dispatch(context.Background(), f, 9, Command{SubtaskID: 9, Attempt: 1})
	waiting := dispatch(context.Background(), f, 2, Command{SubtaskID: 2, Attempt: 1})
	for _, c := range []struct {
		d    <-chan dispatched
		want string
	}{{back, "agentd lost: not heard from for"}, {never, "agentd lost: not connected within 1s"}} {
		r := result(t, c.d)
		if r.err == nil || !strings.Contains(r.err.Error(), c.want) {
			t.Fatalf("dispatch: %+v, want %q", r, c.want)
		}
		if since := time.Since(heard); since > restartLost+restartLost/2 {
			t.Fatalf("%q after %s: the restart's settling counted", c.want, since)
		}
	}
	// Host 2, expected and not back, still waits: host 1 came back at heard.
	select {
	case r := <-waiting:
		t.Fatalf("dispatch to the expected host ended: %+v", r)
	default:
	}
	s2 := connect(t, f, hostName(2))
	answer(t, f, s2)
	if r := result(t, waiting); r.err != nil {
		t.Fatalf("dispatch to the expected host: %+v", r)
	}
}
