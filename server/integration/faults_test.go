package integration_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Faults during a stop: agentd killed or frozen, its stream cut, the server
// killed, and many clients asking at once. Each test checks that the stop's
// attempt ran at most once on the host, that no task is left non-final, and
// that nothing but the OCP Agent's base processes was touched.

// lostFlags make the lost-agent tests' server give up on a silent agentd
// after 2 s; their deadlines stay far below the stop subtask's 600 s timeout.
var lostFlags = []string{"--heartbeat-interval", "500ms", "--agent-lost-after", "2s"}

// TestAgentdKilledMidStop SIGKILLs agentd while it stops slow processes and
// starts it again on the same state dir: the attempt it was running must not
// run again but fail with the not-re-run message; retrying the task runs a
// second attempt that finishes the stop.
func TestAgentdKilledMidStop(t *testing.T) {
	t.Parallel()
	s, by, home, a, id := startSlowStop(t, "3s")
	a.proc.kill(t)
	t.Logf("agentd killed with SIGKILL while %q ran", stopAllName)
	a.start(t)

	tk := s.waitFinal(t, id)
	st := tk.subtask(stopAllName)
	if tk.Status != "FAILED" || st.Status != "FAILED" || !strings.Contains(st.Message, agentdRestartedMessage) {
		t.Fatalf("task %s, stop subtask %s %q; want both FAILED with %q", tk.Status, st.Status, st.Message, agentdRestartedMessage)
	}
	if n := commandRuns(a)[runKey{st.ID, 1}]; n != 1 {
		t.Fatalf("attempt 1 of the stop subtask ran %d times, want once (not re-run after the restart)", n)
	}
	s.waitHost(t, a.name, 30*time.Second, "ONLINE again", func(h hostJSON) bool { return h.Status == "ONLINE" })

	s.retryTask(t, id)
	tk = s.waitFinal(t, id)
	checkStopped(t, s, tk, home, by, a.hostID)
	if rt := s.runTimes(t, id); rt[stopAllName] != 2 {
		t.Errorf("%q runTime %d after the retry, want 2", stopAllName, rt[stopAllName])
	}
	checkRanOnce(t, a, st.ID, 1, 2)
	checkNothingRunning(t, s)
}

// TestStreamCutMidStop cuts agentd's connection while it stops slow
// processes: agentd reconnects at once, the server sends the command again,
// agentd (still running it) does not start it twice, and its result arrives
// on the new stream.
func TestStreamCutMidStop(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	by := startBystanders(t)
	home := newHome(t)
	startFake(t, home, "FAKE_OCP_MODE=slow", "FAKE_OCP_SLOW=3s")
	p := startProxy(t, s.grpcAddr)
	a := s.startAgentdVia(t, home, 20*time.Second, p.addr())
	id := s.stopOK(t, a.hostID).ID
	waitLog(t, a.proc, "stopping ocp agent processes", 30*time.Second)

	if n := p.cut(); n == 0 {
		t.Fatal("no connection through the proxy to cut")
	}
	if strings.Contains(a.proc.log(), "command finished") {
		t.Fatal("the stop finished before the cut; nothing was tested")
	}
	waitLog(t, a.proc, "connection to server lost", 10*time.Second)

	tk := s.waitFinal(t, id)
	checkStopped(t, s, tk, home, by, a.hostID)
	stopID := tk.subtask(stopAllName).ID
	if rt := s.runTimes(t, id); rt[stopAllName] != 1 {
		t.Errorf("%q runTime %d, want 1", stopAllName, rt[stopAllName])
	}
	checkRanOnce(t, a, stopID, 1)
	checkNothingRunning(t, s)
	logAgentd(t, a)
}

// TestStreamDownUntilStopEnds cuts agentd's connection while it stops and
// keeps it down until the stop has ended: the result waits in agentd's
// outbox and is delivered once the connection is back.
func TestStreamDownUntilStopEnds(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	by := startBystanders(t)
	home := newHome(t)
	startFake(t, home, "FAKE_OCP_MODE=slow", "FAKE_OCP_SLOW=2s")
	g := startGate(t, s.grpcAddr)
	a := s.startAgentdVia(t, home, 20*time.Second, g.addr())
	id := s.stopOK(t, a.hostID).ID
	waitLog(t, a.proc, "stopping ocp agent processes", 30*time.Second)

	g.setDown(true)
	if strings.Contains(a.proc.log(), "command finished") {
		t.Fatal("the stop finished before the cut; nothing was tested")
	}
	s.waitHost(t, a.name, 10*time.Second, "OFFLINE", func(h hostJSON) bool { return h.Status == "OFFLINE" })
	waitLog(t, a.proc, "command finished", 30*time.Second)
	if tk := s.getTask(t, id); tk.final() {
		t.Fatalf("task %d is %s while agentd's result could not be delivered", id, tk.Status)
	}
	g.setDown(false)

	tk := s.waitFinal(t, id)
	checkStopped(t, s, tk, home, by, a.hostID)
	if rt := s.runTimes(t, id); rt[stopAllName] != 1 {
		t.Errorf("%q runTime %d, want 1", stopAllName, rt[stopAllName])
	}
	if !strings.Contains(a.proc.log(), "re-sending pending result") {
		t.Error("agentd did not re-send its result from the outbox after reconnecting")
	}
	checkRanOnce(t, a, tk.subtask(stopAllName).ID, 1)
	checkNothingRunning(t, s)
	logAgentd(t, a)
}

// TestServerKilledTwiceMidStop SIGKILLs the server while agentd stops, and
// again as soon as agentd has reconnected to the restarted one: the task
// resumes each time, the attempt runs once on agentd, and nothing is left
// non-final.
func TestServerKilledTwiceMidStop(t *testing.T) {
	t.Parallel()
	s, by, home, a, id := startSlowStop(t, "3s")
	for i := 1; i <= 2; i++ {
		s.proc.kill(t)
		t.Logf("server killed with SIGKILL (%d)", i)
		s.restart(t)
		if i == 1 {
			waitLog(t, s.proc, `"agent connected"`, 30*time.Second)
		}
	}

	checkResumed(t, s, by, home, a, id)
	tk := s.getTask(t, id)
	if rt := s.runTimes(t, id); rt[stopAllName] != 1 {
		t.Errorf("%q runTime %d, want 1", stopAllName, rt[stopAllName])
	}
	checkRanOnce(t, a, tk.subtask(stopAllName).ID, 1)
	checkNothingRunning(t, s)
}

// TestLostAgentdSilent freezes agentd (SIGSTOP) while it stops: its stream
// stays open but it says nothing, so the server must count it lost within
// the bound, take the host OFFLINE and fail the stop subtask long before its
// 600 s timeout. Thawed, agentd reconnects and a retry finishes the stop.
func TestLostAgentdSilent(t *testing.T) {
	t.Parallel()
	s := startServer(t, lostFlags...)
	by := startBystanders(t)
	home := newHome(t)
	startFake(t, home, "FAKE_OCP_MODE=slow", "FAKE_OCP_SLOW=3s")
	a := s.startAgentd(t, home, 20*time.Second)
	id := s.stopOK(t, a.hostID).ID
	waitLog(t, a.proc, "stopping ocp agent processes", 30*time.Second)

	frozen := a.proc
	if err := frozen.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	// Registered after startProcess's cleanup, so it runs first: a frozen
	// agentd could not handle the harness's SIGTERM.
	t.Cleanup(func() { _ = frozen.cmd.Process.Signal(syscall.SIGCONT) })
	t.Logf("agentd frozen with SIGSTOP while %q ran", stopAllName)

	s.waitHost(t, a.name, 20*time.Second, "OFFLINE", func(h hostJSON) bool { return h.Status == "OFFLINE" })
	tk := s.waitTask(t, id, 20*time.Second, "FAILED", taskJSON.final)
	checkLost(t, tk)

	if err := frozen.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	s.waitHost(t, a.name, 20*time.Second, "ONLINE again", func(h hostJSON) bool { return h.Status == "ONLINE" })
	s.retryTask(t, id)
	tk = s.waitFinal(t, id)
	checkStopped(t, s, tk, home, by, a.hostID)
	if rt := s.runTimes(t, id); rt[stopAllName] != 2 {
		t.Errorf("%q runTime %d after the retry, want 2", stopAllName, rt[stopAllName])
	}
	checkRanOnce(t, a, tk.subtask(stopAllName).ID, 1, 2)
	checkNothingRunning(t, s)
	logAgentd(t, a)
}

// TestLostAgentdGone SIGKILLs agentd while it stops and does not start it
// again: the stop subtask must fail as lost once the bound has passed. Then
// agentd comes back and a retry finishes the stop.
func TestLostAgentdGone(t *testing.T) {
	t.Parallel()
	s := startServer(t, lostFlags...)
	by := startBystanders(t)
	home := newHome(t)
	startFake(t, home, "FAKE_OCP_MODE=slow", "FAKE_OCP_SLOW=3s")
	a := s.startAgentd(t, home, 20*time.Second)
	id := s.stopOK(t, a.hostID).ID
	waitLog(t, a.proc, "stopping ocp agent processes", 30*time.Second)

	a.proc.kill(t)
	t.Logf("agentd killed with SIGKILL while %q ran; not restarted", stopAllName)
	tk := s.waitTask(t, id, 20*time.Second, "FAILED", taskJSON.final)
	checkLost(t, tk)
	if h := s.getHost(t, a.hostID); h.Status != "OFFLINE" {
		t.Errorf("host %s after its agentd died, want OFFLINE", h.Status)
	}
	by.checkAlive(t)
	checkNothingRunning(t, s)

	a.start(t)
	s.waitHost(t, a.name, 20*time.Second, "ONLINE again", func(h hostJSON) bool { return h.Status == "ONLINE" })
	s.retryTask(t, id)
	tk = s.waitFinal(t, id)
	checkStopped(t, s, tk, home, by, a.hostID)
	checkRanOnce(t, a, tk.subtask(stopAllName).ID, 1, 2)
	checkNothingRunning(t, s)
}

// checkLost checks a task failed because its host's agentd was lost.
func checkLost(t *testing.T, tk taskJSON) {
	t.Helper()
	st := tk.subtask(stopAllName)
	if tk.Status != "FAILED" || st.Status != "FAILED" || !strings.Contains(st.Message, "agentd lost") {
		t.Fatalf("task %s, stop subtask %s %q; want both FAILED with \"agentd lost\"", tk.Status, st.Status, st.Message)
	}
	t.Logf("stop subtask failed: %s", st.Message)
}

// TestConcurrentStops sends many stops of one host at once: exactly one
// creates a task, every other is refused naming it. Then it checks that an
// Idempotency-Key makes a repeated stop return the same task, whether that
// task still runs or has finished, even when repeated concurrently, and that
// a key cannot be reused for another request.
func TestConcurrentStops(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	home := newHome(t)
	startFake(t, home, "FAKE_OCP_MODE=slow", "FAKE_OCP_SLOW=3s")
	a := s.startAgentd(t, home, 20*time.Second)

	answers := postStops(t, s, a.hostID, "", 100)
	var created []int64
	var refused []stopAnswer
	for _, r := range answers {
		switch r.status {
		case http.StatusOK:
			created = append(created, r.id)
		case http.StatusConflict:
			refused = append(refused, r)
		default:
			t.Errorf("stop: status %d: %s", r.status, r.body)
		}
	}
	if len(created) != 1 || len(refused) != len(answers)-1 {
		t.Fatalf("%d stops created tasks %v and %d were refused with 409, want 1 and %d", len(created), created, len(refused), len(answers)-1)
	}
	first := created[0]
	for _, r := range refused {
		if !strings.Contains(r.message, fmt.Sprintf("task %d", first)) {
			t.Errorf("409 message %q does not name task %d", r.message, first)
			break
		}
	}
	if n := s.countTasks(t, fmt.Sprintf("hostId=%d", a.hostID)); n != 1 {
		t.Errorf("%d tasks for host %d, want 1", n, a.hostID)
	}
	if tk := s.waitFinal(t, first); tk.Status != "SUCCESSFUL" {
		t.Fatalf("task %d ended %s: %+v", first, tk.Status, tk.Subtasks)
	}

	// The same key twice: while its task runs (holding the host's lock),
	// and once it has finished.
	startFake(t, home, "FAKE_OCP_MODE=slow", "FAKE_OCP_SLOW=2s")
	k1 := postStops(t, s, a.hostID, "fault-key-1", 1)[0]
	if k1.status != http.StatusOK {
		t.Fatalf("stop with a new Idempotency-Key: status %d: %s", k1.status, k1.body)
	}
	if again := postStops(t, s, a.hostID, "fault-key-1", 1)[0]; again.status != http.StatusOK || again.id != k1.id {
		t.Errorf("repeat while task %d runs: status %d task %d, want 200 and the same task: %s", k1.id, again.status, again.id, again.body)
	}
	if tk := s.getTask(t, k1.id); tk.final() {
		t.Errorf("task %d already %s: the repeat was not tested against a running task", k1.id, tk.Status)
	}
	if tk := s.waitFinal(t, k1.id); tk.Status != "SUCCESSFUL" {
		t.Fatalf("task %d ended %s: %+v", k1.id, tk.Status, tk.Subtasks)
	}
	if again := postStops(t, s, a.hostID, "fault-key-1", 1)[0]; again.status != http.StatusOK || again.id != k1.id {
		t.Errorf("repeat after task %d finished: status %d task %d, want 200 and the same task: %s", k1.id, again.status, again.id, again.body)
	}

	// A new key sent concurrently: one task.
	ids := map[int64]int{}
	for _, r := range postStops(t, s, a.hostID, "fault-key-2", 20) {
		if r.status != http.StatusOK {
			t.Errorf("concurrent stop with one Idempotency-Key: status %d: %s", r.status, r.body)
			continue
		}
		ids[r.id]++
	}
	if len(ids) != 1 {
		t.Fatalf("20 stops with one Idempotency-Key created tasks %v, want one", ids)
	}
	var k2 int64
	for id := range ids {
		k2 = id
	}
	s.waitFinal(t, k2)
	if n := s.countTasks(t, fmt.Sprintf("hostId=%d", a.hostID)); n != 3 {
		t.Errorf("%d tasks for host %d, want 3", n, a.hostID)
	}

	// The key again, for another host: refused.
	other := s.startAgentd(t, newHome(t), time.Second)
	r := postStops(t, s, other.hostID, "fault-key-2", 1)[0]
	if r.status != http.StatusConflict {
		t.Fatalf("Idempotency-Key reused for another host: status %d, want 409: %s", r.status, r.body)
	}
	t.Logf("reused key refused: %s", r.message)
	if n := s.countTasks(t, fmt.Sprintf("hostId=%d", other.hostID)); n != 0 {
		t.Errorf("%d tasks for host %d after the refused stop, want 0", n, other.hostID)
	}
	checkNothingRunning(t, s)
}

// ---- helpers ----

// stopAnswer is one answer to a stop: the created task's id (200) or the
// error message.
type stopAnswer struct {
	status  int
	id      int64
	message string
	body    []byte
}

// postStops sends n stops of hostID at once as admin, with the
// Idempotency-Key key unless it is empty, and returns their answers.
func postStops(t *testing.T, s *server, hostID int64, key string, n int) []stopAnswer {
	t.Helper()
	client := &http.Client{Timeout: 30 * time.Second, Transport: s.client.Transport}
	url := s.url(fmt.Sprintf("/compute/hosts/%d/agent/stop", hostID))
	out := make([]stopAnswer, n)
	errs := make([]error, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			<-start
			out[i], errs[i] = postStop(client, url, key)
		})
	}
	close(start)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("stop %d of %d: %v", i+1, n, err)
		}
	}
	return out
}

func postStop(client *http.Client, url, key string) (stopAnswer, error) {
	req, err := http.NewRequest(http.MethodPost, url, nil)
	if err != nil {
		return stopAnswer{}, err
	}
	req.SetBasicAuth(admin.user, admin.pass)
	if key != "" {
		req.Header.Set("Idempotency-Key", key)
	}
	resp, err := client.Do(req)
	if err != nil {
		return stopAnswer{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return stopAnswer{}, err
	}
	var env struct {
		Data  struct{ ID int64 } `json:"data"`
		Error struct {
			Message string `json:"message"`
		} `json:"error"`
	}
	if err := json.Unmarshal(b, &env); err != nil {
		return stopAnswer{}, fmt.Errorf("status %d, body not JSON: %w: %s", resp.StatusCode, err, b)
	}
	return stopAnswer{status: resp.StatusCode, id: env.Data.ID, message: env.Error.Message, body: b}, nil
}

// retryTask retries a failed task over REST and returns it as the answer
// shows it (RUNNING again).
func (s *server) retryTask(t *testing.T, id int64) taskJSON {
	t.Helper()
	r := s.call(t, http.MethodPost, fmt.Sprintf("/api/v2/tasks/instances/%d/retry", id), admin, nil)
	if r.status != http.StatusOK {
		t.Fatalf("retry of task %d: status %d: %s", id, r.status, r.body)
	}
	var tk taskJSON
	r.decode(t, &tk)
	if tk.Status != "RUNNING" {
		t.Errorf("task %d after retry: %s, want RUNNING", id, tk.Status)
	}
	return tk
}

// runTimes returns each subtask's runTime (its attempt number) by name.
func (s *server) runTimes(t *testing.T, id int64) map[string]int {
	t.Helper()
	r := s.call(t, http.MethodGet, fmt.Sprintf("/api/v2/tasks/instances/%d", id), admin, nil)
	if r.status != http.StatusOK {
		t.Fatalf("GET task %d: status %d: %s", id, r.status, r.body)
	}
	var tk struct {
		Subtasks []struct {
			Name    string `json:"name"`
			RunTime int    `json:"runTime"`
		} `json:"subtasks"`
	}
	r.decode(t, &tk)
	out := map[string]int{}
	for _, st := range tk.Subtasks {
		out[st.Name] = st.RunTime
	}
	return out
}

// countTasks returns the number of tasks the task list finds with query.
func (s *server) countTasks(t *testing.T, query string) int {
	t.Helper()
	r := s.call(t, http.MethodGet, "/api/v2/tasks/instances?"+query, admin, nil)
	if r.status != http.StatusOK {
		t.Fatalf("GET tasks?%s: status %d: %s", query, r.status, r.body)
	}
	var page struct {
		Page struct {
			TotalElements int `json:"totalElements"`
		} `json:"page"`
	}
	r.decode(t, &page)
	return page.Page.TotalElements
}

// checkNothingRunning fails the test if the server has a task that is not
// final.
func checkNothingRunning(t *testing.T, s *server) {
	t.Helper()
	if n := s.countTasks(t, "status=RUNNING"); n != 0 {
		t.Errorf("%d tasks still RUNNING, want 0", n)
	}
}

type runKey struct {
	subtask int64
	attempt int
}

// commandRuns counts, over all of agentd's runs, how often it began the
// work of each (subtask, attempt): the lines it logs as a stop or a start
// begins.
func commandRuns(a *agentd) map[runKey]int {
	n := map[runKey]int{}
	for _, p := range a.logs {
		for line := range strings.SplitSeq(p.log(), "\n") {
			var e struct {
				Msg     string `json:"message"`
				Subtask int64  `json:"subtask_id"`
				Attempt int    `json:"attempt"`
			}
			if json.Unmarshal([]byte(line), &e) != nil {
				continue
			}
			if e.Msg == "stopping ocp agent processes" || e.Msg == "starting ocp agent processes" {
				n[runKey{e.Subtask, e.Attempt}]++
			}
		}
	}
	return n
}

// checkRanOnce checks that agentd began each given attempt of subtask
// exactly once and no other, and runs the harness's checkOnce.
func checkRanOnce(t *testing.T, a *agentd, subtask int64, attempts ...int) {
	t.Helper()
	a.checkOnce(t)
	want := map[runKey]int{}
	for _, at := range attempts {
		want[runKey{subtask, at}] = 1
	}
	got := commandRuns(a)
	for k, n := range got {
		if n != want[k] {
			t.Errorf("agentd began subtask %d attempt %d %d times, want %d", k.subtask, k.attempt, n, want[k])
		}
	}
	for k := range want {
		if got[k] == 0 {
			t.Errorf("agentd never began subtask %d attempt %d", k.subtask, k.attempt)
		}
	}
}

// gate is a TCP proxy that can be held down: while down it closes every
// connection it has and accepts new ones only to close them, so a client
// stays disconnected until it is up again.
type gate struct {
	ln     net.Listener
	target string

	mu    sync.Mutex
	down  bool
	conns []net.Conn
}

func startGate(t *testing.T, target string) *gate {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := &gate{ln: ln, target: target}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); g.setDown(true); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			g.mu.Lock()
			down := g.down
			g.mu.Unlock()
			if down {
				c.Close()
				continue
			}
			u, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			g.mu.Lock()
			if g.down {
				g.mu.Unlock()
				c.Close()
				u.Close()
				continue
			}
			g.conns = append(g.conns, c, u)
			g.mu.Unlock()
			wg.Go(func() { io.Copy(u, c); u.Close() })
			wg.Go(func() { io.Copy(c, u); c.Close() })
		}
	})
	return g
}

func (g *gate) addr() string { return g.ln.Addr().String() }

// setDown holds the gate down (closing every open connection) or lets
// connections through again.
func (g *gate) setDown(down bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.down = down
	if down {
		for _, c := range g.conns {
			c.Close()
		}
		g.conns = nil
	}
}
