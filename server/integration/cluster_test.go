package integration_test

import (
	"context"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	taskv1 "agentplane/gen/agentplane/task/v1"
)

// The cluster tests: three replicas on one MariaDB (startCluster), real
// agentds knowing all three. Each ends with checkHistory: every task final,
// no (subtask, attempt) begun twice on the agents.

// checkStopsOK fails the test unless every subtask of tk ended SUCCESSFUL.
func checkStopsOK(t *testing.T, tk opTask) {
	t.Helper()
	if tk.Status != "SUCCESSFUL" {
		t.Errorf("task %d (%s) ended %s, want SUCCESSFUL", tk.ID, tk.Name, tk.Status)
	}
	for _, st := range tk.Subtasks {
		if st.Status != "SUCCESSFUL" {
			t.Errorf("task %d: subtask %q (branch %d) ended %s: %s", tk.ID, st.Name, st.ParallelIdx, st.Status, st.Message)
		}
	}
}

// checkStopOnce runs the history check, then checks that the stop task id
// ended SUCCESSFUL with its stop begun once on the agent.
func checkStopOnce(t *testing.T, c *cluster, id int64, timeout time.Duration) {
	t.Helper()
	final := c.checkHistory(t, timeout)[id]
	checkStopsOK(t, final)
	c.ranOnce(t, final.sub(t, stopAllName).ID)
}

// TestClusterReplicasListEachOtherAndStopOnHolder: three replicas start on
// one store and each lists all three live; an agentd knowing all three
// connects to one, and a stop through that replica ends SUCCESSFUL, run
// once.
func TestClusterReplicasListEachOtherAndStopOnHolder(t *testing.T) {
	t.Parallel()
	c := startCluster(t, 3)
	for i, r := range c.replicas {
		if got := c.live(t, r); !maps.Equal(got, map[string]bool{"r1": true, "r2": true, "r3": true}) {
			t.Errorf("GET /api/v2/replicas on r%d: %v, want r1..r3 live", i+1, got)
		}
	}
	a := c.addAgentds(t, 1, time.Second)[0]
	h := c.holder(a)
	t.Logf("agentd connected to r%d", h+1)
	tk := c.stop(t, h, a)
	checkStopOnce(t, c, tk.ID, 30*time.Second)
}

// TestClusterAgentdRehomesWhenItsReplicaIsKilled: kill -9 of the replica
// holding an agentd's stream; the agentd connects to another replica within
// seconds, its host is ONLINE there, and a stop through its new replica
// ends SUCCESSFUL.
func TestClusterAgentdRehomesWhenItsReplicaIsKilled(t *testing.T) {
	t.Parallel()
	c := startCluster(t, 3)
	a := c.addAgentds(t, 1, time.Second)[0]
	old := c.holder(a)
	c.kill(t, old)
	begin := time.Now()
	h := c.waitHolder(t, a, 20*time.Second, "on another replica", func(i int) bool { return i != old })
	t.Logf("agentd moved from r%d to r%d in %s", old+1, h+1, time.Since(begin).Round(time.Millisecond))
	c.replicas[h].waitHost(t, a.name, 20*time.Second, "ONLINE", func(x hostJSON) bool { return x.Status == "ONLINE" })
	tk := c.stop(t, h, a)
	checkStopOnce(t, c, tk.ID, 30*time.Second)

	// The killed replica, restarted with its id, is live again for all.
	c.restart(t, old)
	for i, r := range c.replicas {
		waitFor(t, 2*clusterLease, fmt.Sprintf("r%d to list all three live", i+1), func() bool {
			return maps.Equal(c.live(t, r), map[string]bool{"r1": true, "r2": true, "r3": true})
		})
	}
}

// TestClusterReplicaRestartLeavesOthersHostsOnline: a replica starting
// (again) marks OFFLINE only the hosts whose streams it held, not those
// connected to the other replicas. (Needs routing: hosts.replica_id.)
func TestClusterReplicaRestartLeavesOthersHostsOnline(t *testing.T) {
	t.Parallel()
	c := startCluster(t, 2)
	a := c.addAgentds(t, 1, time.Second)[0]
	other := 1 - c.holder(a)
	c.kill(t, other)
	c.restart(t, other)
	if h := c.replicas[other].getHost(t, a.hostID); h.Status != "ONLINE" {
		t.Errorf("host %s, connected to r%d, is %s after r%d restarted, want ONLINE", a.name, 2-other, h.Status, other+1)
	}
}

// agentdsOnTwoReplicas adds agentds (at least min) until their streams are
// on at least two replicas: agentd draws its order of --server at random.
func agentdsOnTwoReplicas(t *testing.T, c *cluster, least int, grace time.Duration, fakeEnv ...string) []*agentd {
	t.Helper()
	agents := c.addAgentds(t, least, grace, fakeEnv...)
	for range 6 {
		on := map[int]bool{}
		for _, a := range agents {
			on[c.holder(a)] = true
		}
		if len(on) >= 2 {
			return agents
		}
		agents = append(agents, c.addAgentds(t, 1, grace, fakeEnv...)...)
	}
	t.Fatalf("%d agentds, all on one replica", len(agents))
	return nil
}

// TestClusterStopThroughEachReplicaForHostsOnOthers: for each replica, a
// stop of a host whose stream is on another replica, posted through it,
// ends SUCCESSFUL, and each stop ran once. (Needs routing: the replica
// that took the request has the command run by the stream's.)
func TestClusterStopThroughEachReplicaForHostsOnOthers(t *testing.T) {
	t.Parallel()
	c := startCluster(t, 3)
	agents := agentdsOnTwoReplicas(t, c, 3, time.Second)
	stopped := map[*agentd]bool{}
	var tasks []int64
	for via := range c.replicas {
		// A host on another replica, not stopped yet; with streams on two
		// replicas there is one, unless a host elsewhere was stopped already.
		i := slices.IndexFunc(agents, func(a *agentd) bool { return !stopped[a] && c.holder(a) != via })
		if i < 0 {
			extra := c.addAgentds(t, 1, time.Second)[0]
			if c.holder(extra) == via {
				t.Logf("no host off r%d left to stop through it", via+1)
				continue
			}
			agents, i = append(agents, extra), len(agents)
		}
		a := agents[i]
		stopped[a] = true
		t.Logf("stop of %s (stream on r%d) through r%d", a.name, c.holder(a)+1, via+1)
		tasks = append(tasks, c.stop(t, via, a).ID)
	}
	for _, id := range tasks {
		checkStopOnce(t, c, id, 30*time.Second)
	}
}

// waitRunning waits until agentd a has begun stopping its OCP Agent.
func waitRunning(t *testing.T, a *agentd) {
	t.Helper()
	waitLog(t, a.proc, "stopping ocp agent processes", 30*time.Second)
}

// TestClusterKillStreamHolderMidStopFinishesOnce: a stop posted through one
// replica for a host whose stream is on another; kill -9 of the stream's
// replica while agentd stops slow processes. agentd re-homes, the task ends
// SUCCESSFUL, and the stop ran once (the new holder asks agentd before
// sending anything again).
func TestClusterKillStreamHolderMidStopFinishesOnce(t *testing.T) {
	t.Parallel()
	c := startCluster(t, 3)
	a := c.addAgentds(t, 1, 20*time.Second, "FAKE_OCP_MODE=slow", "FAKE_OCP_SLOW=2s")[0]
	holder := c.holder(a)
	via := (holder + 1) % len(c.replicas)
	tk := c.stop(t, via, a)
	waitRunning(t, a)
	c.kill(t, holder)
	h := c.waitHolder(t, a, 20*time.Second, "on another replica", func(i int) bool { return i != holder })
	t.Logf("stop through r%d; r%d (the stream's) killed mid-stop; agentd now on r%d", via+1, holder+1, h+1)
	checkStopOnce(t, c, tk.ID, 30*time.Second)
}

// TestClusterKillTaskOwnerMidBatchNothingRunsTwice: a batch stop of hosts
// on several replicas, posted through one replica (the task's owner); kill
// -9 of that replica while the agents stop. The others adopt the batch: it
// ends SUCCESSFUL and nothing ran twice.
func TestClusterKillTaskOwnerMidBatchNothingRunsTwice(t *testing.T) {
	t.Parallel()
	c := startCluster(t, 3)
	const owner = 0
	agents, id := startMidBatch(t, c, 4, func([]*agentd) int { return owner })
	c.kill(t, owner)
	checkBatchOnce(t, c, agents, id, 45*time.Second)
	// The survivors noticed the owner's process gone through their
	// connections to it and adopted its tasks at once, not only after its
	// lease through the sweep.
	waitFor(t, 10*time.Second, "a survivor to adopt the tasks of r1 as gone", func() bool {
		for i := 1; i < len(c.replicas); i++ {
			if strings.Contains(c.replicas[i].proc.log(), "adopted the tasks of a replica that is gone") {
				return true
			}
		}
		return false
	})
}

// startMidBatch starts agentds (at least least, on two replicas or more)
// whose fake OCP Agents stop slowly, posts a batch stop of all their hosts
// through the replica via picks, and returns once a stop has begun on an
// agent.
func startMidBatch(t *testing.T, c *cluster, least int, via func(agents []*agentd) int) ([]*agentd, int64) {
	t.Helper()
	agents := agentdsOnTwoReplicas(t, c, least, 20*time.Second, "FAKE_OCP_MODE=slow", "FAKE_OCP_SLOW=2s")
	tk := c.batchStop(t, via(agents), agents)
	waitFor(t, 30*time.Second, "a stop to begin on an agent", func() bool { return len(c.runs()) > 0 })
	return agents, tk.ID
}

// checkBatchOnce runs the history check, then checks that batch id ended
// SUCCESSFUL with each branch's stop begun once on its agent.
func checkBatchOnce(t *testing.T, c *cluster, agents []*agentd, id int64, timeout time.Duration) {
	t.Helper()
	final := c.checkHistory(t, timeout)[id]
	checkStopsOK(t, final)
	for i := range agents {
		c.ranOnce(t, final.branchSub(t, i, stopAllName).ID)
	}
}

// TestClusterFrozenReplicaPastItsLeaseIsFenced: a batch stop posted
// through one replica, which is then frozen (SIGSTOP) past its registry
// lease while the agents stop. The others see it dead and finish the
// batch; thawed (SIGCONT), it writes and commands nothing: the tasks stay
// as the others ended them and no command begins on any agent.
func TestClusterFrozenReplicaPastItsLeaseIsFenced(t *testing.T) {
	t.Parallel()
	c := startCluster(t, 3)
	// The owner frozen is the replica with the fewest streams: an agentd
	// finds a frozen replica gone only by its keepalive (30 s), which is
	// agentd's failover, not the fencing this test is about.
	frozen, streams := 0, 0
	agents, id := startMidBatch(t, c, 3, func(agents []*agentd) int {
		frozen, streams = c.leastHolder(agents)
		return frozen
	})
	name := fmt.Sprintf("r%d", frozen+1)
	c.freeze(t, frozen)
	waitFor(t, 3*clusterLease, "the others to see "+name+" dead", func() bool { return !c.live(t, c.any(t))[name] })
	timeout := 45 * time.Second
	if streams > 0 {
		timeout = 90 * time.Second
		t.Logf("%s holds %d agent streams, back only once agentd's keepalive gives up on it", name, streams)
	}
	ended := c.checkHistory(t, timeout)
	before := map[int64]any{}
	for tid := range ended {
		before[tid] = c.rawTask(t, tid)
	}
	runs := c.runs()
	other := c.any(t, frozen)
	// Its heartbeat age in the others' registry (-1: its row is gone).
	heartbeatAge := func() time.Duration {
		for _, x := range c.registry(t, other) {
			if x.ID == name {
				return time.Duration(x.AgeMillis) * time.Millisecond
			}
		}
		return -1
	}
	c.thaw(t, frozen)
	// An absence is seen over a window: until it has run for one adoption
	// sweep (5 s) past the thaw with its heartbeat back (it ran its timers
	// and wrote to the store), or has exited; 12 s at most.
	thawed := time.Now()
	waitFor(t, 20*time.Second, name+" to run a sweep's time past its thaw", func() bool {
		since := time.Since(thawed)
		return c.replicas[frozen].proc.exited() || since > 12*time.Second ||
			since > 6*time.Second && heartbeatAge() >= 0 && heartbeatAge() < 2*time.Second
	})
	t.Logf("%s thawed %s ago; exited %v; its registry heartbeat is %s old (-1: deregistered)", name,
		time.Since(thawed).Round(time.Millisecond), c.replicas[frozen].proc.exited(), heartbeatAge())
	for tid, was := range before {
		if now := c.rawTask(t, tid); !reflect.DeepEqual(now, was) {
			t.Errorf("task %d changed after the fenced replica thawed:\nbefore %v\nafter  %v", tid, was, now)
		}
	}
	if got := c.runs(); !maps.Equal(got, runs) {
		t.Errorf("commands began on the agents after the fenced replica thawed: before %v, after %v", runs, got)
	}
	checkBatchOnce(t, c, agents, id, 10*time.Second)
}

// TestClusterMariaDBRestartMidBatchFinishes: a batch stop of hosts on
// several replicas; mariadbd is killed and restarted while the agents stop;
// the batch ends SUCCESSFUL and nothing ran twice.
func TestClusterMariaDBRestartMidBatchFinishes(t *testing.T) {
	t.Parallel()
	c := startCluster(t, 3)
	agents, id := startMidBatch(t, c, 3, func([]*agentd) int { return 0 })
	c.restartDB(t)
	checkBatchOnce(t, c, agents, id, 60*time.Second)
}

// TestClusterWatchTaskOnOneReplicaFollowsAnother: WatchTask (gRPC over
// TLS) on a replica that neither took the request nor holds the stream
// follows the task another replica runs, to SUCCESSFUL.
func TestClusterWatchTaskOnOneReplicaFollowsAnother(t *testing.T) {
	t.Parallel()
	c := startCluster(t, 3)
	a := c.addAgentds(t, 1, 20*time.Second, "FAKE_OCP_MODE=slow", "FAKE_OCP_SLOW=1s")[0]
	runner := c.holder(a)
	watcher := (runner + 1) % len(c.replicas)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	tk := c.stop(t, runner, a)
	stream, err := taskv1.NewTaskServiceClient(c.replicas[watcher].conn(t)).WatchTask(withCreds(ctx, admin), &taskv1.WatchTaskRequest{Id: tk.ID})
	if err != nil {
		t.Fatal(err)
	}
	var seen []taskv1.TaskStatus
	for {
		m, err := stream.Recv()
		if err != nil {
			t.Fatalf("WatchTask of task %d on r%d (run by r%d), after %v: %v", tk.ID, watcher+1, runner+1, seen, err)
		}
		st := m.GetTask().GetStatus()
		if len(seen) == 0 || seen[len(seen)-1] != st {
			seen = append(seen, st)
		}
		if st == taskv1.TaskStatus_TASK_STATUS_SUCCESSFUL || st == taskv1.TaskStatus_TASK_STATUS_FAILED {
			break
		}
	}
	t.Logf("WatchTask on r%d saw %v", watcher+1, seen)
	if got := seen[len(seen)-1]; got != taskv1.TaskStatus_TASK_STATUS_SUCCESSFUL {
		t.Errorf("the watch ended on %s, want SUCCESSFUL", got)
	}
	checkStopsOK(t, c.checkHistory(t, 30*time.Second)[tk.ID])
}
