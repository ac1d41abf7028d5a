package integration_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"agentplane/internal/mariadbtest"
)

// cluster is N agentplane-server replicas on one private MariaDB, as
// `make demo-cluster` runs them (.ci/run-cluster): r1 creates the CA, the
// access-key sealing key and the admin user; the others are given r1's CA
// and sealing key (--ca-cert, --ca-key, --access-key-seal-key-file) and
// each makes its own server certificate signed by that CA, so one ca.crt
// verifies every replica. agentds are real agentd binaries with --server
// listing every replica.
type cluster struct {
	db       *mariadbtest.Server
	replicas []*server // replicas[i] is "r<i+1>"
	agents   []*agentd

	mu     sync.Mutex
	frozen map[int]bool // replicas under SIGSTOP
	tasks  []int64      // the tasks the test created, for checkHistory
}

// clusterLease is the registry's lease a replica lives by (replica.DefaultLease).
const clusterLease = 6 * time.Second

// startCluster starts a MariaDB server and n replicas on a new database of
// it, each with the extra flags args. It skips the test without mariadbd
// (fails it with AGENTPLANE_REQUIRE_MARIADB=1).
func startCluster(t *testing.T, n int, args ...string) *cluster {
	t.Helper()
	begin := time.Now()
	c := &cluster{db: mariadbtest.Start(t), frozen: map[int]bool{}}
	t.Logf("mariadbd up in %s", time.Since(begin).Round(time.Millisecond))
	dsnFile := filepath.Join(tempDir(t), "store.dsn")
	if err := os.WriteFile(dsnFile, []byte(c.db.URL(c.db.NewDatabaseName(t))+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// A frozen replica takes SIGTERM only once thawed: thaw before the
	// processes' cleanups (registered earlier, so run later) stop them.
	t.Cleanup(func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		for i := range c.frozen {
			_ = c.replicas[i].proc.cmd.Process.Signal(syscall.SIGCONT)
		}
	})
	root := tempDir(t)
	newReplica := func(i int, shared ...string) *server {
		id := fmt.Sprintf("r%d", i+1)
		flags := append([]string{"--store-dsn-file", dsnFile, "--replica-id", id, "--advertise-addr", "127.0.0.1"}, args...)
		return newServer(filepath.Join(root, id), append(flags, shared...)...)
	}
	// r1 first: it makes the CA, the sealing key and the admin user; then
	// the others together, given r1's CA and key.
	c.replicas = append(c.replicas, newReplica(0).start(t))
	first := c.replicas[0].dataDir
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := 1; i < n; i++ {
		s := newReplica(i, "--ca-cert", filepath.Join(first, "ca.crt"), "--ca-key", filepath.Join(first, "ca.key"),
			"--access-key-seal-key-file", filepath.Join(first, "access-key.key"))
		s.trust(c.replicas[0])
		c.replicas = append(c.replicas, s)
		wg.Go(func() { errs[i] = s.tryStart(t) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	t.Logf("mariadbd and %d replicas up in %s", n, time.Since(begin).Round(time.Millisecond))
	return c
}

// trust makes s's clients trust o's CA (a replica given o's CA by flags
// keeps none in its data dir).
func (s *server) trust(o *server) {
	s.caFile, s.caPool = o.caFile, o.caPool
	s.client.Transport = &http.Transport{TLSClientConfig: s.tlsConfig()}
}

// servers is agentd's --server: every replica's gRPC address.
func (c *cluster) servers() string {
	addrs := make([]string, len(c.replicas))
	for i, r := range c.replicas {
		addrs[i] = r.grpcAddr
	}
	return strings.Join(addrs, ",")
}

// up reports whether replica i runs and is not frozen.
func (c *cluster) up(i int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return !c.frozen[i] && !c.replicas[i].proc.exited()
}

// any is a replica that runs and is not frozen, preferring those not in
// avoid.
func (c *cluster) any(t *testing.T, avoid ...int) *server {
	t.Helper()
	for pass := range 2 {
		for i, r := range c.replicas {
			if c.up(i) && (pass == 1 || !slices.Contains(avoid, i)) {
				return r
			}
		}
	}
	t.Fatal("no replica is up")
	return nil
}

// addAgentds starts n agentds, each with its own fake OCP Agent (fakeEnv:
// FAKE_OCP_*) and --server listing every replica, and waits until all are
// ONLINE.
func (c *cluster) addAgentds(t *testing.T, n int, grace time.Duration, fakeEnv ...string) []*agentd {
	t.Helper()
	r := c.any(t)
	var out []*agentd
	for range n {
		home := newHome(t)
		startFake(t, home, fakeEnv...)
		a := r.launchAgentd(t, home, grace, c.servers())
		out = append(out, a)
	}
	for _, a := range out {
		a.hostID = r.waitHost(t, a.name, 60*time.Second, "ONLINE", func(h hostJSON) bool { return h.Status == "ONLINE" }).ID
		c.waitHolder(t, a, 30*time.Second, "connected", func(int) bool { return true })
	}
	c.mu.Lock()
	c.agents = append(c.agents, out...)
	c.mu.Unlock()
	return out
}

// holder is the replica holding a's stream now, from agentd's log: the
// server of its last "connected to server" with no loss after it; -1 when
// it has none.
func (c *cluster) holder(a *agentd) int {
	holder := -1
	for line := range strings.SplitSeq(a.proc.log(), "\n") {
		var e struct {
			Msg    string `json:"message"`
			Server string `json:"server"`
		}
		if json.Unmarshal([]byte(line), &e) != nil {
			continue
		}
		switch e.Msg {
		case "connected to server":
			holder = slices.IndexFunc(c.replicas, func(r *server) bool { return r.grpcAddr == e.Server })
		case "connection to server lost", "disconnected from server":
			holder = -1
		}
	}
	return holder
}

// waitHolder waits until a holds a stream on a replica for which cond
// holds, and returns that replica.
func (c *cluster) waitHolder(t *testing.T, a *agentd, timeout time.Duration, what string, cond func(i int) bool) int {
	t.Helper()
	h := -1
	waitFor(t, timeout, a.name+"'s stream "+what, func() bool {
		h = c.holder(a)
		return h >= 0 && cond(h)
	})
	return h
}

// leastHolder is the replica holding the fewest of the agents' streams, and
// how many it holds.
func (c *cluster) leastHolder(agents []*agentd) (replica, streams int) {
	n := make([]int, len(c.replicas))
	for _, a := range agents {
		if h := c.holder(a); h >= 0 {
			n[h]++
		}
	}
	replica = slices.Index(n, slices.Min(n))
	return replica, n[replica]
}

// kill SIGKILLs replica i and reaps it.
func (c *cluster) kill(t *testing.T, i int) {
	t.Helper()
	c.replicas[i].proc.kill(t)
	t.Logf("replica r%d killed (SIGKILL)", i+1)
}

// freeze SIGSTOPs replica i; thaw SIGCONTs it.
func (c *cluster) freeze(t *testing.T, i int) { c.signal(t, i, syscall.SIGSTOP, true) }
func (c *cluster) thaw(t *testing.T, i int)   { c.signal(t, i, syscall.SIGCONT, false) }

func (c *cluster) signal(t *testing.T, i int, sig syscall.Signal, frozen bool) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.replicas[i].proc.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("%s to replica r%d: %v", sig, i+1, err)
	}
	if frozen {
		c.frozen[i] = true
	} else {
		delete(c.frozen, i)
	}
	t.Logf("replica r%d: %s", i+1, unix.SignalName(sig))
}

// restart starts replica i again (same data dir, ports and flags) after it
// exited.
func (c *cluster) restart(t *testing.T, i int) {
	t.Helper()
	c.replicas[i].restart(t)
}

// restartDB kills mariadbd (SIGKILL, as a crash) and starts it again on the
// same data dir and port.
func (c *cluster) restartDB(t *testing.T) {
	t.Helper()
	c.db.Kill()
	if err := c.db.Restart(); err != nil {
		t.Fatal(err)
	}
	t.Log("mariadbd killed and restarted")
}

// replicaRow is one replica as GET /api/v2/replicas lists it.
type replicaRow struct {
	ID        string `json:"id"`
	Address   string `json:"address"`
	Live      bool   `json:"live"`
	AgeMillis int64  `json:"heartbeatAgeMillis"`
}

// registry is the replicas registry as replica r lists it.
func (c *cluster) registry(t *testing.T, r *server) []replicaRow {
	t.Helper()
	resp := r.call(t, http.MethodGet, "/api/v2/replicas", admin, nil)
	if resp.status != http.StatusOK {
		t.Fatalf("GET /api/v2/replicas on %s: %d %s", r.httpAddr, resp.status, resp.body)
	}
	var page struct {
		Contents []replicaRow `json:"contents"`
	}
	resp.decode(t, &page)
	return page.Contents
}

// live is the registry as replica r lists it: id → live.
func (c *cluster) live(t *testing.T, r *server) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	for _, x := range c.registry(t, r) {
		out[x.ID] = x.Live
	}
	return out
}

// stop posts a stop of a's host through replica via and records the task.
func (c *cluster) stop(t *testing.T, via int, a *agentd) taskJSON {
	t.Helper()
	tk := c.replicas[via].stopOK(t, a.hostID)
	c.record(tk.ID)
	return tk
}

// batchStop posts a batch stop of the agents' hosts through replica via and
// records the task.
func (c *cluster) batchStop(t *testing.T, via int, agents []*agentd) opTask {
	t.Helper()
	ids := make([]int64, len(agents))
	for i, a := range agents {
		ids[i] = a.hostID
	}
	tk := c.replicas[via].opPost(t, "/compute/hosts/batchStopAgents", map[string]any{"hostIds": ids})
	c.record(tk.ID)
	return tk
}

func (c *cluster) record(id int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.tasks = append(c.tasks, id)
}

// waitFinal waits until task id is final, reading it on whichever replica
// is up, and returns it.
func (c *cluster) waitFinal(t *testing.T, id int64, timeout time.Duration) opTask {
	t.Helper()
	var tk opTask
	waitFor(t, timeout, fmt.Sprintf("task %d to end", id), func() bool {
		tk = c.any(t).opGet(t, id)
		return tk.final()
	})
	return tk
}

// rawTask is task id as REST shows it (every field, times included), read
// on a replica that is up.
func (c *cluster) rawTask(t *testing.T, id int64) any {
	t.Helper()
	r := c.any(t).call(t, http.MethodGet, fmt.Sprintf("/api/v2/tasks/instances/%d", id), admin, nil)
	if r.status != http.StatusOK {
		t.Fatalf("GET task %d: %d %s", id, r.status, r.body)
	}
	return r.obj["data"]
}

// runs counts, over every agentd's logs, how often each (subtask, attempt)
// began on an agent.
func (c *cluster) runs() map[runKey]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := map[runKey]int{}
	for _, a := range c.agents {
		for k, v := range commandRuns(a) {
			n[k] += v
		}
	}
	return n
}

// ranOnce fails the test unless subtask began exactly once on the agents,
// over all its attempts.
func (c *cluster) ranOnce(t *testing.T, subtask int64) {
	t.Helper()
	total := 0
	for k, v := range c.runs() {
		if k.subtask == subtask {
			total += v
		}
	}
	if total != 1 {
		t.Errorf("subtask %d began %d times on the agents, want once", subtask, total)
	}
}

// checkHistory is the check over the whole test: every task it created
// ended final (within timeout), every (subtask, attempt) began at most once
// on the agents, and each agentd started no command twice. It returns the
// tasks as they ended.
func (c *cluster) checkHistory(t *testing.T, timeout time.Duration) map[int64]opTask {
	t.Helper()
	c.mu.Lock()
	ids := slices.Clone(c.tasks)
	agents := slices.Clone(c.agents)
	c.mu.Unlock()
	out := map[int64]opTask{}
	for _, id := range ids {
		out[id] = c.waitFinal(t, id, timeout)
	}
	for k, n := range c.runs() {
		if n > 1 {
			t.Errorf("subtask %d attempt %d began %d times on the agents", k.subtask, k.attempt, n)
		}
	}
	for _, a := range agents {
		a.checkOnce(t)
	}
	return out
}
