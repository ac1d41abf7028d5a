package integration_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	hostv1 "agentplane/gen/agentplane/host/v1"
	taskv1 "agentplane/gen/agentplane/task/v1"
)

// The operator's operations on tasks (cancel, rollback, retry, the subtask
// log), start, restart and the batch forms, through REST and gRPC, against
// the real binaries and fake OCP Agents.

// Subtask names of the agent tasks, as agentop plans them.
const (
	prepareStopName    = "Prepare stop OCP agent"
	prepareStartName   = "Prepare start OCP agent"
	prepareRestartName = "Prepare restart OCP agent"
	startAllName       = "Start all OCP agent processes"
	finishName         = "Finish OCP agent operation"
)

// opTask is a task as REST renders it, with the fields these tests check
// beyond the harness's taskJSON.
type opTask struct {
	ID        int64  `json:"id"`
	Name      string `json:"name"`
	Type      string `json:"type"`
	Operation string `json:"operation"`
	Status    string `json:"status"`
	HostID    int64  `json:"hostId"`
	Context   struct {
		ListMap     map[string][]string `json:"listMap"`
		Parallel    bool                `json:"parallel"`
		ParallelIdx int                 `json:"parallelIdx"`
		StringMap   map[string]string   `json:"stringMap"`
	} `json:"context"`
	Subtasks []opSubtask `json:"subtasks"`
}

type opSubtask struct {
	ID          int64  `json:"id"`
	Name        string `json:"name"`
	Operation   string `json:"operation"`
	Status      string `json:"status"`
	Message     string `json:"message"`
	RunTime     int    `json:"runTime"`
	ParallelIdx int    `json:"parallelIdx"`
}

func (tk opTask) final() bool { return tk.Status == "SUCCESSFUL" || tk.Status == "FAILED" }

// sub returns the first subtask named name (the only one in a single-host
// task); it fails the test when there is none.
func (tk opTask) sub(t *testing.T, name string) opSubtask {
	t.Helper()
	for _, st := range tk.Subtasks {
		if st.Name == name {
			return st
		}
	}
	t.Fatalf("task %d has no subtask %q: %+v", tk.ID, name, tk.Subtasks)
	return opSubtask{}
}

// branchSub returns the subtask named name of parallel branch idx.
func (tk opTask) branchSub(t *testing.T, idx int, name string) opSubtask {
	t.Helper()
	for _, st := range tk.Subtasks {
		if st.ParallelIdx == idx && st.Name == name {
			return st
		}
	}
	t.Fatalf("task %d has no subtask %q in branch %d", tk.ID, name, idx)
	return opSubtask{}
}

func (tk opTask) names() []string {
	var out []string
	for _, st := range tk.Subtasks {
		out = append(out, st.Name)
	}
	return out
}

// opGet reads a task over REST as admin.
func (s *server) opGet(t *testing.T, id int64) opTask {
	t.Helper()
	r := s.call(t, http.MethodGet, fmt.Sprintf("/api/v2/tasks/instances/%d", id), admin, nil)
	if r.status != http.StatusOK {
		t.Fatalf("GET task %d: status %d: %s", id, r.status, r.body)
	}
	var tk opTask
	r.decode(t, &tk)
	return tk
}

// opWait polls the task until cond holds.
func (s *server) opWait(t *testing.T, id int64, timeout time.Duration, what string, cond func(opTask) bool) opTask {
	t.Helper()
	var tk opTask
	if !poll(timeout, func() bool {
		tk = s.opGet(t, id)
		return cond(tk)
	}) {
		t.Fatalf("task %d: timed out after %s waiting for %s; last seen %+v", id, timeout, what, tk)
	}
	return tk
}

func (s *server) opWaitFinal(t *testing.T, id int64) opTask {
	t.Helper()
	return s.opWait(t, id, 90*time.Second, "a final status", opTask.final)
}

// opPost posts to path as admin (body may be nil), expects 200 and returns
// the task in the answer.
func (s *server) opPost(t *testing.T, path string, body any) opTask {
	t.Helper()
	r := s.call(t, http.MethodPost, path, admin, body)
	if r.status != http.StatusOK {
		t.Fatalf("POST %s: status %d: %s", path, r.status, r.body)
	}
	var tk opTask
	r.decode(t, &tk)
	if tk.ID <= 0 {
		t.Fatalf("POST %s: no task in %s", path, r.body)
	}
	return tk
}

// wantRefused posts to path as admin and expects OCP's 400 20003 ("not
// allowed in this state") with a message naming task id.
func (s *server) wantRefused(t *testing.T, path string, id int64) {
	t.Helper()
	r := s.call(t, http.MethodPost, path, admin, nil)
	msg := r.wantError(t, http.StatusBadRequest)
	e, _ := r.obj["error"].(map[string]any)
	if e["code"] != float64(20003) {
		t.Errorf("POST %s: error.code %v, want 20003: %s", path, e["code"], r.body)
	}
	if !strings.Contains(msg, fmt.Sprintf("task %d", id)) {
		t.Errorf("POST %s: message %q does not name task %d", path, msg, id)
	}
}

func taskPath(id int64) string { return fmt.Sprintf("/api/v2/tasks/instances/%d", id) }

func subtaskPath(id, sid int64) string { return fmt.Sprintf("%s/subtasks/%d", taskPath(id), sid) }

// subtaskLog reads a subtask's log over REST.
func (s *server) subtaskLog(t *testing.T, id, sid int64) string {
	t.Helper()
	r := s.call(t, http.MethodGet, subtaskPath(id, sid)+"/log", admin, nil)
	if r.status != http.StatusOK {
		t.Fatalf("GET log of subtask %d: status %d: %s", sid, r.status, r.body)
	}
	var l struct {
		Log string `json:"log"`
	}
	r.decode(t, &l)
	return l.Log
}

// wantInOrder fails the test unless each of parts occurs in text after the
// previous one.
func wantInOrder(t *testing.T, what, text string, parts ...string) {
	t.Helper()
	rest := text
	for _, p := range parts {
		i := strings.Index(rest, p)
		if i < 0 {
			t.Errorf("%s lacks %q (in this order: %q):\n%s", what, p, parts, text)
			return
		}
		rest = rest[i+len(p):]
	}
}

type hostAgentJSON struct {
	ID          int64  `json:"id"`
	HostID      int64  `json:"hostId"`
	InstallHome string `json:"installHome"`
	Status      string `json:"status"`
	Processes   []struct {
		Alias        string `json:"alias"`
		PID          int    `json:"pid"`
		User         string `json:"user"`
		StartCommand string `json:"startCommand"`
		Status       string `json:"status"`
	} `json:"processes"`
}

func (s *server) hostAgent(t *testing.T, hostID int64) hostAgentJSON {
	t.Helper()
	r := s.call(t, http.MethodGet, fmt.Sprintf("/api/v2/compute/hosts/%d/agent", hostID), admin, nil)
	if r.status != http.StatusOK {
		t.Fatalf("GET agent of host %d: status %d: %s", hostID, r.status, r.body)
	}
	var a hostAgentJSON
	r.decode(t, &a)
	return a
}

// waitAgent polls GET /compute/hosts/{id}/agent until every base process
// is reported with status want (and, when pids is not nil, the pid in it),
// and the agent's status is want.
func (s *server) waitAgent(t *testing.T, hostID int64, want string, pids map[string]int) hostAgentJSON {
	t.Helper()
	var a hostAgentJSON
	if !poll(20*time.Second, func() bool {
		a = s.hostAgent(t, hostID)
		if a.Status != want || len(a.Processes) != len(baseNames) {
			return false
		}
		for _, p := range a.Processes {
			if p.Status != want || pids != nil && pids[p.Alias] != p.PID {
				return false
			}
		}
		return true
	}) {
		t.Fatalf("host %d: agent not %s with processes %v after 20s; last seen %+v", hostID, want, pids, a)
	}
	return a
}

// fakeLog returns the log a fake base process writes under home.
func fakeLog(home, name string) string {
	b, _ := os.ReadFile(filepath.Join(home, "log", name+".log"))
	return string(b)
}

// basePIDs returns the running base processes under home, by base name.
func basePIDs(home string) map[string][]int {
	out := map[string][]int{}
	for pid, exe := range procsUnder(home) {
		out[filepath.Base(exe)] = append(out[filepath.Base(exe)], pid)
	}
	return out
}

func ppidOf(pid int) int {
	st, err := readStat(pid)
	if err != nil {
		return 0
	}
	return st.ppid
}

// canceledStop starts a fleet of one whose ocp_agentd exits 5s after
// SIGTERM (agentd's grace is 30s), posts a stop, waits until agentd has
// sent ocp_agentd SIGTERM, cancels the stop subtask over REST, and waits for
// the task to end. It returns the stage, the task as it ended, and the pids
// of the fakes before the stop.
func canceledStop(t *testing.T) (s *server, by *bystanders, home string, a *agentd, tk opTask, pids map[string]int) {
	t.Helper()
	s, by, home, a = fleetOfOne(t, 30*time.Second, "FAKE_OCP_MODE_ocp_agentd=slow", "FAKE_OCP_SLOW=5s")
	pids = waitFakeReady(t, home, baseNames...)
	created := s.stopOK(t, a.hostID)
	running := s.opWait(t, created.ID, 30*time.Second, "the stop subtask RUNNING", func(tk opTask) bool {
		return tk.sub(t, stopAllName).Status == "RUNNING"
	})
	stopAll := running.sub(t, stopAllName)
	// Cancel once the server has logged agentd's SIGTERM: the log is in
	// arrival order, so the CANCEL header then follows that line.
	sigterm := fmt.Sprintf("sent SIGTERM to ocp_agentd pid %d", pids["ocp_agentd"])
	waitFor(t, 30*time.Second, "the fake ocp_agentd to get SIGTERM, and the server to log it", func() bool {
		return strings.Contains(fakeLog(home, "ocp_agentd"), "SIGTERM, exiting in") &&
			strings.Contains(s.subtaskLog(t, created.ID, stopAll.ID), sigterm)
	})

	canceled := s.opPost(t, subtaskPath(created.ID, stopAll.ID)+"/cancel", nil)
	if st := canceled.sub(t, stopAllName); st.Operation != "CANCEL" || st.Status != "CANCELING" && st.Status != "FAILED" {
		t.Errorf("cancel answered the subtask %s with operation %s, want CANCELING (or FAILED) with CANCEL", st.Status, st.Operation)
	}
	tk = s.opWaitFinal(t, created.ID)
	return s, by, home, a, tk, pids
}

// TestCancelSlowStop cancels the stop subtask while agentd waits for a slow
// ocp_agentd: the subtask ends FAILED with operation CANCEL, before
// ocp_agentd has even exited, and no process is signalled after the cancel.
func TestCancelSlowStop(t *testing.T) {
	t.Parallel()
	s, by, home, a, tk, pids := canceledStop(t)
	ended := time.Now()
	if running(pids["ocp_agentd"]) {
		t.Logf("task ended while ocp_agentd pid %d was still exiting, as it should", pids["ocp_agentd"])
	} else {
		t.Errorf("task %d ended only after ocp_agentd (slow exit, 5s) had exited: the cancel waited for the work", tk.ID)
	}

	if tk.Status != "FAILED" {
		t.Errorf("task ended %s, want FAILED", tk.Status)
	}
	stopAll := tk.sub(t, stopAllName)
	if stopAll.Status != "FAILED" || stopAll.Operation != "CANCEL" {
		t.Errorf("stop subtask %s operation %s (%q), want FAILED CANCEL", stopAll.Status, stopAll.Operation, stopAll.Message)
	}
	if st := tk.sub(t, prepareStopName); st.Status != "SUCCESSFUL" {
		t.Errorf("prepare subtask %s, want SUCCESSFUL", st.Status)
	}
	if st := tk.sub(t, finishName); st.Status != "PENDING" {
		t.Errorf("finish subtask %s, want PENDING", st.Status)
	}

	// ocp_agentd finishes its slow exit on its own; afterwards, for a while,
	// the other two must still run untouched: agentd stopped at the cancel.
	waitFor(t, 15*time.Second, "the slow ocp_agentd to exit", func() bool { return !running(pids["ocp_agentd"]) })
	t.Logf("ocp_agentd exited %s after the task ended", time.Since(ended).Round(time.Millisecond))
	untouched := func() bool {
		for _, name := range []string{"ocp_mgragent", "ocp_monagent"} {
			if !running(pids[name]) || strings.Contains(fakeLog(home, name), "SIGTERM") {
				return false
			}
		}
		return true
	}
	if poll(time.Second, func() bool { return !untouched() }) {
		for _, name := range []string{"ocp_mgragent", "ocp_monagent"} {
			t.Errorf("%s pid %d (running %v) was touched after the cancel; its log:\n%s", name, pids[name], running(pids[name]), fakeLog(home, name))
		}
	}
	for _, name := range []string{"ocp_mgragent", "ocp_monagent"} {
		if strings.Contains(a.proc.log(), "sent SIGTERM to "+name) {
			t.Errorf("agentd says it sent SIGTERM to %s after the cancel", name)
		}
	}
	by.checkAlive(t)

	log := s.subtaskLog(t, tk.ID, stopAll.ID)
	wantInOrder(t, "stop subtask log", log, "############{EXECUTE}{",
		fmt.Sprintf("sent SIGTERM to ocp_agentd pid %d", pids["ocp_agentd"]), "############{CANCEL}{")
	t.Logf("stop subtask log:\n%s", log)

	// Cancel needs a RUNNING subtask: the canceled one, now FAILED, and the
	// finish, PENDING, are refused.
	s.wantRefused(t, subtaskPath(tk.ID, stopAll.ID)+"/cancel", tk.ID)
	s.wantRefused(t, subtaskPath(tk.ID, tk.sub(t, finishName).ID)+"/cancel", tk.ID)
	// A final task holds no host; a retry or rollback takes the lock again.
	if h := s.getHost(t, a.hostID); h.OperationTaskID != 0 {
		t.Errorf("host lock held by task %d after the task ended FAILED", h.OperationTaskID)
	}
}

// TestRollbackAfterCancel rolls a canceled stop back: the stop is undone by
// a start, so agentd starts ocp_agentd again from its recorded command
// line, and the task ends SUCCESSFUL with every subtask PENDING.
func TestRollbackAfterCancel(t *testing.T) {
	t.Parallel()
	s, by, home, a, tk, pids := canceledStop(t)
	if tk.Status != "FAILED" {
		t.Fatalf("canceled stop ended %s, want FAILED", tk.Status)
	}
	waitFor(t, 15*time.Second, "the slow ocp_agentd to exit", func() bool { return !running(pids["ocp_agentd"]) })

	rb := s.opPost(t, taskPath(tk.ID)+"/rollback", nil)
	if rb.Operation != "ROLLBACK" || rb.Status != "RUNNING" {
		t.Errorf("rollback answered the task %s operation %s, want RUNNING ROLLBACK", rb.Status, rb.Operation)
	}
	done := s.opWaitFinal(t, tk.ID)
	if done.Status != "SUCCESSFUL" || done.Operation != "ROLLBACK" {
		t.Errorf("rolled-back task %s operation %s, want SUCCESSFUL ROLLBACK; subtasks %+v", done.Status, done.Operation, done.Subtasks)
	}
	for _, st := range done.Subtasks {
		if st.Status != "PENDING" {
			t.Errorf("subtask %q %s after the rollback, want PENDING", st.Name, st.Status)
		}
	}
	stopAll := done.sub(t, stopAllName)
	if stopAll.RunTime != 2 || stopAll.Operation != "ROLLBACK" {
		t.Errorf("stop subtask runTime %d operation %s, want 2 ROLLBACK", stopAll.RunTime, stopAll.Operation)
	}
	if st := done.sub(t, prepareStopName); st.RunTime != 2 {
		t.Errorf("prepare subtask runTime %d, want 2 (it ran, so it was rolled back)", st.RunTime)
	}
	if st := done.sub(t, finishName); st.RunTime != 1 {
		t.Errorf("finish subtask runTime %d, want 1 (it never ran)", st.RunTime)
	}

	// agentd started a new ocp_agentd, which starts the other two.
	var sup int
	waitFor(t, 15*time.Second, "a new ocp_agentd, started by agentd, supervising the others", func() bool {
		procs := basePIDs(home)
		sup = 0
		for _, pid := range procs["ocp_agentd"] {
			if pid != pids["ocp_agentd"] && ppidOf(pid) == a.proc.pid() {
				sup = pid
			}
		}
		if sup == 0 {
			return false
		}
		for _, name := range []string{"ocp_mgragent", "ocp_monagent"} {
			if !slices.ContainsFunc(procs[name], func(pid int) bool { return ppidOf(pid) == sup }) {
				return false
			}
		}
		return true
	})
	if got := basePIDs(home); len(got) != len(baseNames) {
		t.Errorf("base processes under the home after the rollback: %v, want all of %v", got, baseNames)
	}
	if !strings.Contains(fakeLog(home, "ocp_agentd"), fmt.Sprintf("ocp_agentd pid %d started", sup)) {
		t.Errorf("the fake ocp_agentd's log does not show pid %d starting:\n%s", sup, fakeLog(home, "ocp_agentd"))
	}
	log := s.subtaskLog(t, tk.ID, stopAll.ID)
	wantInOrder(t, "stop subtask log", log, "############{EXECUTE}{", "############{CANCEL}{", "############{ROLLBACK}{",
		fmt.Sprintf("started ocp_agentd pid %d", sup))
	if h := s.getHost(t, a.hostID); h.OperationTaskID != 0 {
		t.Errorf("host lock still held by task %d after the rollback", h.OperationTaskID)
	}
	by.checkAlive(t)

	// A SUCCESSFUL task cannot be rolled back (or retried).
	s.wantRefused(t, taskPath(tk.ID)+"/rollback", tk.ID)
	s.wantRefused(t, taskPath(tk.ID)+"/retry", tk.ID)
}

// TestSubtaskLogWhileRunning reads the stop subtask's log while agentd waits
// for a slow ocp_agentd: the attempt's header and agentd's first lines are
// there before the subtask ends.
func TestSubtaskLogWhileRunning(t *testing.T) {
	t.Parallel()
	s, by, home, a := fleetOfOne(t, 30*time.Second, "FAKE_OCP_MODE_ocp_agentd=slow", "FAKE_OCP_SLOW=3s")
	pids := waitFakeReady(t, home, baseNames...)
	created := s.stopOK(t, a.hostID)
	var stopAll opSubtask
	s.opWait(t, created.ID, 30*time.Second, "the stop subtask RUNNING", func(tk opTask) bool {
		stopAll = tk.sub(t, stopAllName)
		return stopAll.Status == "RUNNING"
	})
	sigterm := fmt.Sprintf("sent SIGTERM to ocp_agentd pid %d", pids["ocp_agentd"])
	var log string
	waitFor(t, 30*time.Second, "agentd's SIGTERM line in the running subtask's log", func() bool {
		log = s.subtaskLog(t, created.ID, stopAll.ID)
		return strings.Contains(log, sigterm)
	})
	// Read after the log: if the subtask runs now, it ran when the log was read.
	if st := s.opGet(t, created.ID).sub(t, stopAllName); st.Status != "RUNNING" {
		t.Fatalf("stop subtask %s right after reading its log, want RUNNING (ocp_agentd exits 3s after SIGTERM)", st.Status)
	}
	wantInOrder(t, "log of the running stop subtask", log, "############{EXECUTE}{",
		fmt.Sprintf("found ocp_agentd pid %d", pids["ocp_agentd"]), sigterm)
	if strings.Count(log, "############{") != 1 {
		t.Errorf("running subtask log has %d headers, want 1:\n%s", strings.Count(log, "############{"), log)
	}

	tk := s.opWaitFinal(t, created.ID)
	if tk.Status != "SUCCESSFUL" {
		t.Fatalf("stop ended %s, want SUCCESSFUL: %+v", tk.Status, tk.Subtasks)
	}
	final := s.subtaskLog(t, created.ID, stopAll.ID)
	if !strings.HasPrefix(final, log) {
		t.Errorf("final log does not extend the log read while running:\nwhile running:\n%s\nfinal:\n%s", log, final)
	}
	wantInOrder(t, "final stop subtask log", final, sigterm, fmt.Sprintf("ocp_agentd pid %d exited", pids["ocp_agentd"]))
	checkNoneUnder(t, home)
	by.checkAlive(t)
}

// TestStartRestart stops the agent, starts it (agentd starts ocp_agentd
// from its recorded command line; ocp_agentd starts the others), restarts
// it (all three replaced), and follows GET .../agent through it all.
func TestStartRestart(t *testing.T) {
	t.Parallel()
	s := startServer(t, "--heartbeat-interval", "500ms", "--agent-lost-after", "5s")
	by := startBystanders(t)
	home := newHome(t)
	startFake(t, home)
	orig := waitFakeReady(t, home, baseNames...)
	a := s.startAgentd(t, home, time.Second)

	ag := s.waitAgent(t, a.hostID, "STARTED", orig)
	if ag.InstallHome != home || ag.ID != a.hostID || ag.HostID != a.hostID {
		t.Errorf("agent: id %d hostId %d installHome %q, want %d %d %q", ag.ID, ag.HostID, ag.InstallHome, a.hostID, a.hostID, home)
	}
	for _, p := range ag.Processes {
		if p.User == "" || !strings.Contains(p.StartCommand, filepath.Join(home, "bin", p.Alias)) {
			t.Errorf("process %s: user %q startCommand %q, want a user and %s", p.Alias, p.User, p.StartCommand, filepath.Join(home, "bin", p.Alias))
		}
	}

	stop := s.opWaitFinal(t, s.stopOK(t, a.hostID).ID)
	if stop.Status != "SUCCESSFUL" {
		t.Fatalf("stop ended %s: %+v", stop.Status, stop.Subtasks)
	}
	checkNoneUnder(t, home)
	s.waitAgent(t, a.hostID, "STOPPED", nil)

	created := s.opPost(t, fmt.Sprintf("/compute/hosts/%d/agent/start", a.hostID), nil)
	if created.Name != "Start OCP agent" || !slices.Equal(created.names(), []string{prepareStartName, startAllName, finishName}) {
		t.Errorf("start task %q with subtasks %q", created.Name, created.names())
	}
	start := s.opWaitFinal(t, created.ID)
	if start.Status != "SUCCESSFUL" {
		t.Fatalf("start ended %s: %+v", start.Status, start.Subtasks)
	}
	started := waitFakeReady(t, home, baseNames...)
	for _, name := range baseNames {
		if started[name] == orig[name] {
			t.Errorf("%s has its old pid %d after stop and start", name, started[name])
		}
	}
	if pp := ppidOf(started["ocp_agentd"]); pp != a.proc.pid() {
		t.Errorf("ocp_agentd pid %d has parent %d, want agentd %d", started["ocp_agentd"], pp, a.proc.pid())
	}
	for _, name := range []string{"ocp_mgragent", "ocp_monagent"} {
		if pp := ppidOf(started[name]); pp != started["ocp_agentd"] {
			t.Errorf("%s pid %d has parent %d, want ocp_agentd %d", name, started[name], pp, started["ocp_agentd"])
		}
	}
	s.waitAgent(t, a.hostID, "STARTED", started)
	if h := s.getHost(t, a.hostID); h.AgentStatus != "STARTED" || h.OperationTaskID != 0 {
		t.Errorf("host after the start: agentStatus %s operationTaskId %d, want STARTED 0", h.AgentStatus, h.OperationTaskID)
	}

	created = s.opPost(t, fmt.Sprintf("/api/v2/compute/hosts/%d/agent/restart", a.hostID), nil)
	want := []string{prepareRestartName, stopAllName, startAllName, finishName}
	if created.Name != "Restart OCP agent" || !slices.Equal(created.names(), want) {
		t.Errorf("restart task %q with subtasks %q, want %q", created.Name, created.names(), want)
	}
	restart := s.opWaitFinal(t, created.ID)
	if restart.Status != "SUCCESSFUL" || len(restart.Subtasks) != 4 {
		t.Fatalf("restart ended %s with %d subtasks: %+v", restart.Status, len(restart.Subtasks), restart.Subtasks)
	}
	restarted := waitFakeReady(t, home, baseNames...)
	for _, name := range baseNames {
		if restarted[name] == started[name] {
			t.Errorf("%s kept pid %d through the restart", name, started[name])
		}
	}
	s.waitAgent(t, a.hostID, "STARTED", restarted)

	stop = s.opWaitFinal(t, s.stopOK(t, a.hostID).ID)
	if stop.Status != "SUCCESSFUL" {
		t.Fatalf("second stop ended %s: %+v", stop.Status, stop.Subtasks)
	}
	checkNoneUnder(t, home)
	s.waitAgent(t, a.hostID, "STOPPED", restarted) // the last pids seen, now STOPPED
	by.checkAlive(t)
	a.checkOnce(t)
}

// TestBatchStopRetry stops 20 hosts in one batch while one host's agentd is
// down: that branch fails, the 19 others stop their agents; once the agentd
// is back, a retry re-runs only the failed branch.
func TestBatchStopRetry(t *testing.T) {
	t.Parallel()
	const n = 20
	s := startServer(t)
	by := startBystanders(t)
	homes := make([]string, n)
	for i := range homes {
		homes[i] = newHome(t)
		startProcess(t, fmt.Sprintf("fake-ocp_agentd-%d", i), nil, filepath.Join(homes[i], "bin", "ocp_agentd"))
	}
	for _, home := range homes {
		waitFakeReady(t, home, baseNames...)
	}
	// Start the agentds together, then wait for each to be ONLINE.
	agents := make([]*agentd, n)
	for i, home := range homes {
		agents[i] = s.launchAgentd(t, home, time.Second, s.grpcAddr)
	}
	// Stop them together too: a -race binary sleeps 1s when it exits, and
	// the harness's cleanups run one by one.
	t.Cleanup(func() {
		var wg sync.WaitGroup
		for _, a := range agents {
			wg.Go(func() { a.proc.stop(t, 5*time.Second) })
		}
		wg.Wait()
	})
	ids := make([]int64, n)
	for i, a := range agents {
		a.hostID = s.waitHost(t, a.name, 60*time.Second, "ONLINE", func(h hostJSON) bool { return h.Status == "ONLINE" }).ID
		ids[i] = a.hostID
	}

	const down = 7 // the host whose agentd is stopped
	agents[down].proc.stop(t, 10*time.Second)
	s.waitHost(t, agents[down].name, 15*time.Second, "OFFLINE", func(h hostJSON) bool { return h.Status == "OFFLINE" })

	begin := time.Now()
	created := s.opPost(t, "/compute/hosts/batchStopAgents", map[string]any{"hostIds": ids})
	if created.Name != "Batch stop OCP agent" || !created.Context.Parallel {
		t.Errorf("batch task %q parallel %v, want %q true", created.Name, created.Context.Parallel, "Batch stop OCP agent")
	}
	wantIDs := make([]string, n)
	for i, id := range ids {
		wantIDs[i] = strconv.FormatInt(id, 10)
	}
	if got := created.Context.ListMap["host_ids"]; !slices.Equal(got, wantIDs) {
		t.Errorf("context.listMap.host_ids %q, want %q", got, wantIDs)
	}
	if len(created.Subtasks) != 3*n {
		t.Fatalf("%d subtasks, want %d", len(created.Subtasks), 3*n)
	}
	perIdx := map[int][]string{}
	for _, st := range created.Subtasks {
		perIdx[st.ParallelIdx] = append(perIdx[st.ParallelIdx], st.Name)
	}
	for i := range n {
		if want := []string{prepareStopName, stopAllName, finishName}; !slices.Equal(perIdx[i], want) {
			t.Errorf("branch %d: subtasks %q, want %q", i, perIdx[i], want)
		}
	}
	if len(perIdx) != n {
		t.Errorf("parallelIdx values %v, want 0..%d", slices.Sorted(maps.Keys(perIdx)), n-1)
	}

	tk := s.opWaitFinal(t, created.ID)
	t.Logf("batch of %d ended %s after %s", n, tk.Status, time.Since(begin).Round(time.Millisecond))
	if tk.Status != "FAILED" {
		t.Fatalf("batch ended %s, want FAILED", tk.Status)
	}
	for i := range n {
		for _, name := range []string{prepareStopName, stopAllName, finishName} {
			st := tk.branchSub(t, i, name)
			want := "SUCCESSFUL"
			if i == down {
				want = "PENDING"
				if name == prepareStopName {
					want = "FAILED"
				}
			}
			if st.Status != want {
				t.Errorf("branch %d %q: %s (%q), want %s", i, name, st.Status, st.Message, want)
			}
		}
		if i != down {
			checkNoneUnder(t, homes[i])
		}
	}
	if msg := tk.branchSub(t, down, prepareStopName).Message; !strings.Contains(msg, "agentd not connected") {
		t.Errorf("offline host's prepare failed with %q, want it to say agentd not connected", msg)
	}
	if got := basePIDs(homes[down]); len(got) != len(baseNames) {
		t.Errorf("the offline host's agent was touched: running %v", got)
	}

	agents[down].start(t)
	s.waitHost(t, agents[down].name, 30*time.Second, "ONLINE again", func(h hostJSON) bool { return h.Status == "ONLINE" })
	retried := s.opPost(t, taskPath(tk.ID)+"/retry", nil)
	if retried.Operation != "RETRY" || retried.Status != "RUNNING" {
		t.Errorf("retry answered the task %s operation %s, want RUNNING RETRY", retried.Status, retried.Operation)
	}
	tk = s.opWaitFinal(t, tk.ID)
	if tk.Status != "SUCCESSFUL" {
		t.Fatalf("retried batch ended %s: %+v", tk.Status, tk.Subtasks)
	}
	for _, st := range tk.Subtasks {
		want := 1
		if st.ParallelIdx == down && st.Name == prepareStopName {
			want = 2
			if st.Operation != "RETRY" {
				t.Errorf("retried prepare has operation %s, want RETRY", st.Operation)
			}
		}
		if st.Status != "SUCCESSFUL" || st.RunTime != want {
			t.Errorf("branch %d %q: %s runTime %d, want SUCCESSFUL %d", st.ParallelIdx, st.Name, st.Status, st.RunTime, want)
		}
	}
	for _, home := range homes {
		checkNoneUnder(t, home)
	}
	by.checkAlive(t)
	for _, a := range agents {
		a.checkOnce(t)
	}
}

// TestOperationsGRPC drives start, batch restart, the subtask log, refused
// subtask operations, task lists and the host's agent through the Go gRPC
// client, and checks the REST list filters on the same tasks.
func TestOperationsGRPC(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	homeA, homeB := newHome(t), newHome(t)
	startFake(t, homeA)
	startFake(t, homeB)
	a, b := s.startAgentd(t, homeA, time.Second), s.startAgentd(t, homeB, time.Second)

	cc := s.conn(t)
	hosts, tasks := hostv1.NewHostServiceClient(cc), taskv1.NewTaskServiceClient(cc)
	ctx, cancel := context.WithTimeout(withCreds(context.Background(), admin), 120*time.Second)
	defer cancel()
	watch := func(id int64) *taskv1.Task {
		t.Helper()
		stream, err := tasks.WatchTask(ctx, &taskv1.WatchTaskRequest{Id: id})
		if err != nil {
			t.Fatalf("WatchTask %d: %v", id, err)
		}
		var last *taskv1.Task
		for {
			m, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("WatchTask %d: %v", id, err)
			}
			last = m.GetTask()
		}
		if last == nil {
			t.Fatalf("WatchTask %d ended without a message", id)
		}
		return last
	}
	wantCode := func(what string, err error, want codes.Code) {
		t.Helper()
		if got := status.Code(err); got != want {
			t.Errorf("%s: gRPC code %s (%v), want %s", what, got, err, want)
		}
	}

	// 1. Batch restart of both hosts.
	br, err := hosts.BatchRestartAgents(ctx, &hostv1.BatchRestartAgentsRequest{HostIds: []int64{a.hostID, b.hostID}})
	if err != nil {
		t.Fatalf("BatchRestartAgents: %v", err)
	}
	batch := watch(br.GetTask().GetId())
	if batch.GetStatus() != taskv1.TaskStatus_TASK_STATUS_SUCCESSFUL || batch.GetName() != "Batch restart OCP agent" ||
		len(batch.GetSubtasks()) != 8 || !batch.GetContext().GetParallel() {
		t.Fatalf("batch restart ended %s, name %q, %d subtasks, parallel %v", batch.GetStatus(), batch.GetName(),
			len(batch.GetSubtasks()), batch.GetContext().GetParallel())
	}
	var stopAll, startAll *taskv1.Subtask
	for _, st := range batch.GetSubtasks() {
		if st.GetParallelIdx() == 0 && st.GetName() == stopAllName {
			stopAll = st
		}
		if st.GetParallelIdx() == 0 && st.GetName() == startAllName {
			startAll = st
		}
	}
	if stopAll == nil || startAll == nil {
		t.Fatalf("batch restart lacks branch 0's stop or start subtask: %v", batch.GetSubtasks())
	}
	pidsA := waitFakeReady(t, homeA, baseNames...)
	waitFakeReady(t, homeB, baseNames...)

	lg, err := tasks.GetSubtaskLog(ctx, &taskv1.GetSubtaskLogRequest{TaskId: batch.GetId(), SubtaskId: startAll.GetId()})
	if err != nil {
		t.Fatalf("GetSubtaskLog: %v", err)
	}
	wantInOrder(t, "start subtask log", lg.GetLog(), "############{EXECUTE}{", fmt.Sprintf("started ocp_agentd pid %d", pidsA["ocp_agentd"]))

	// 2. Operations a SUCCESSFUL subtask or task refuses.
	_, err = tasks.CancelSubtask(ctx, &taskv1.CancelSubtaskRequest{TaskId: batch.GetId(), SubtaskId: stopAll.GetId()})
	wantCode("CancelSubtask of a SUCCESSFUL subtask", err, codes.FailedPrecondition)
	_, err = tasks.RetrySubtask(ctx, &taskv1.RetrySubtaskRequest{TaskId: batch.GetId(), SubtaskId: stopAll.GetId()})
	wantCode("RetrySubtask of a SUCCESSFUL subtask", err, codes.FailedPrecondition)
	_, err = tasks.SkipSubtask(ctx, &taskv1.SkipSubtaskRequest{TaskId: batch.GetId(), SubtaskId: stopAll.GetId()})
	wantCode("SkipSubtask of a SUCCESSFUL subtask", err, codes.FailedPrecondition)
	_, err = tasks.RetryTask(ctx, &taskv1.RetryTaskRequest{Id: batch.GetId()})
	wantCode("RetryTask of a SUCCESSFUL task", err, codes.FailedPrecondition)
	_, err = tasks.RollbackTask(ctx, &taskv1.RollbackTaskRequest{Id: batch.GetId()})
	wantCode("RollbackTask of a SUCCESSFUL task", err, codes.FailedPrecondition)
	_, err = tasks.CancelSubtask(ctx, &taskv1.CancelSubtaskRequest{TaskId: batch.GetId(), SubtaskId: 987654})
	wantCode("CancelSubtask of a subtask not in the task", err, codes.NotFound)

	// 3. Stop host A over REST, start it over gRPC.
	stop := s.opWaitFinal(t, s.stopOK(t, a.hostID).ID)
	if stop.Status != "SUCCESSFUL" {
		t.Fatalf("stop ended %s", stop.Status)
	}
	checkNoneUnder(t, homeA)
	sr, err := hosts.StartAgent(ctx, &hostv1.StartAgentRequest{HostId: a.hostID})
	if err != nil {
		t.Fatalf("StartAgent: %v", err)
	}
	start := watch(sr.GetTask().GetId())
	if start.GetStatus() != taskv1.TaskStatus_TASK_STATUS_SUCCESSFUL || start.GetName() != "Start OCP agent" || start.GetHostId() != a.hostID {
		t.Fatalf("start ended %s, name %q, host %d", start.GetStatus(), start.GetName(), start.GetHostId())
	}
	pidsA = waitFakeReady(t, homeA, baseNames...)
	var agent *hostv1.HostAgent
	if !poll(20*time.Second, func() bool {
		r, err := hosts.GetHostAgent(ctx, &hostv1.GetHostAgentRequest{HostId: a.hostID})
		if err != nil {
			t.Fatalf("GetHostAgent: %v", err)
		}
		agent = r.GetAgent()
		if agent.GetStatus() != hostv1.AgentStatus_AGENT_STATUS_STARTED || len(agent.GetProcesses()) != 3 {
			return false
		}
		for _, p := range agent.GetProcesses() {
			if p.GetStatus() != hostv1.AgentStatus_AGENT_STATUS_STARTED || int(p.GetPid()) != pidsA[p.GetAlias()] {
				return false
			}
		}
		return true
	}) {
		t.Errorf("GetHostAgent: %v, want STARTED with processes %v", agent, pidsA)
	}
	if agent.GetInstallHome() != homeA || agent.GetHostId() != a.hostID {
		t.Errorf("GetHostAgent: installHome %q hostId %d, want %q %d", agent.GetInstallHome(), agent.GetHostId(), homeA, a.hostID)
	}
	_, err = hosts.GetHostAgent(ctx, &hostv1.GetHostAgentRequest{HostId: 987654})
	wantCode("GetHostAgent of an unknown host", err, codes.NotFound)

	// 4. A failed task: a stop of host B while its agentd is down.
	b.proc.stop(t, 10*time.Second)
	s.waitHost(t, b.name, 15*time.Second, "OFFLINE", func(h hostJSON) bool { return h.Status == "OFFLINE" })
	failed := s.opWaitFinal(t, s.stopOK(t, b.hostID).ID)
	if failed.Status != "FAILED" {
		t.Fatalf("stop of an offline host ended %s", failed.Status)
	}

	// The tasks, oldest first: batch restart (A, B), stop A, start A, stop B.
	all := []int64{batch.GetId(), stop.ID, start.GetId(), failed.ID}

	// 5. ListTasks filters.
	list := func(req *taskv1.ListTasksRequest) ([]int64, int64) {
		t.Helper()
		r, err := tasks.ListTasks(ctx, req)
		if err != nil {
			t.Fatalf("ListTasks %v: %v", req, err)
		}
		var ids []int64
		for _, tk := range r.GetTasks() {
			ids = append(ids, tk.GetId())
		}
		return ids, r.GetTotalElements()
	}
	for _, c := range []struct {
		what  string
		req   *taskv1.ListTasksRequest
		want  []int64
		total int64
	}{
		{"all, newest first", &taskv1.ListTasksRequest{}, []int64{all[3], all[2], all[1], all[0]}, 4},
		{"sort id,asc", &taskv1.ListTasksRequest{Sort: "id,asc"}, all, 4},
		{"name stop ocp", &taskv1.ListTasksRequest{Name: "stop ocp", Sort: "id,asc"}, []int64{all[1], all[3]}, 2},
		{"name RESTART", &taskv1.ListTasksRequest{Name: "RESTART"}, []int64{all[0]}, 1},
		{"type MANUAL", &taskv1.ListTasksRequest{Type: taskv1.TaskType_TASK_TYPE_MANUAL, Sort: "id,asc"}, all, 4},
		{"type SCHEDULED", &taskv1.ListTasksRequest{Type: taskv1.TaskType_TASK_TYPE_SCHEDULED}, nil, 0},
		{"status FAILED", &taskv1.ListTasksRequest{Status: taskv1.TaskStatus_TASK_STATUS_FAILED}, []int64{all[3]}, 1},
		{"host B", &taskv1.ListTasksRequest{HostId: b.hostID, Sort: "id,asc"}, []int64{all[0], all[3]}, 2},
		{"host A, page 2 of size 2", &taskv1.ListTasksRequest{HostId: a.hostID, Sort: "id,asc", Page: 2, Size: 2}, []int64{all[2]}, 3},
		{"sort name,desc", &taskv1.ListTasksRequest{Sort: "name,desc"}, []int64{all[3], all[1], all[2], all[0]}, 4},
	} {
		if got, total := list(c.req); !slices.Equal(got, c.want) || total != c.total {
			t.Errorf("ListTasks %s: ids %v total %d, want %v %d", c.what, got, total, c.want, c.total)
		}
	}
	_, err = tasks.ListTasks(ctx, &taskv1.ListTasksRequest{Sort: "color,asc"})
	wantCode("ListTasks with an unknown sort field", err, codes.InvalidArgument)

	// 6. The same filters over REST.
	restList := func(query url.Values) ([]int64, map[string]float64) {
		t.Helper()
		r := s.call(t, http.MethodGet, "/api/v2/tasks/instances?"+query.Encode(), admin, nil)
		if r.status != http.StatusOK {
			t.Fatalf("GET tasks ?%s: status %d: %s", query.Encode(), r.status, r.body)
		}
		var page struct {
			Contents []opTask           `json:"contents"`
			Page     map[string]float64 `json:"page"`
		}
		r.decode(t, &page)
		var ids []int64
		for _, tk := range page.Contents {
			ids = append(ids, tk.ID)
		}
		return ids, page.Page
	}
	for _, c := range []struct {
		query url.Values
		want  []int64
		page  map[string]float64
	}{
		{url.Values{}, []int64{all[3], all[2], all[1], all[0]}, map[string]float64{"totalElements": 4, "totalPages": 1, "number": 1, "size": 20}},
		{url.Values{"name": {"stop ocp"}, "sort": {"id,asc"}}, []int64{all[1], all[3]}, map[string]float64{"totalElements": 2, "totalPages": 1, "number": 1, "size": 20}},
		{url.Values{"status": {"SUCCESSFUL"}, "sort": {"id,asc"}}, all[:3], map[string]float64{"totalElements": 3, "totalPages": 1, "number": 1, "size": 20}},
		{url.Values{"status": {"FAILED"}}, []int64{all[3]}, map[string]float64{"totalElements": 1, "totalPages": 1, "number": 1, "size": 20}},
		{url.Values{"type": {"MANUAL"}, "sort": {"id,asc"}, "page": {"2"}, "size": {"3"}}, []int64{all[3]}, map[string]float64{"totalElements": 4, "totalPages": 2, "number": 2, "size": 3}},
		{url.Values{"hostId": {strconv.FormatInt(b.hostID, 10)}, "sort": {"id,asc"}}, []int64{all[0], all[3]}, map[string]float64{"totalElements": 2, "totalPages": 1, "number": 1, "size": 20}},
		{url.Values{"hostId": {strconv.FormatInt(a.hostID, 10)}, "sort": {"id,desc"}, "size": {"2"}}, []int64{all[2], all[1]}, map[string]float64{"totalElements": 3, "totalPages": 2, "number": 1, "size": 2}},
		{url.Values{"name": {"no such task"}}, nil, map[string]float64{"totalElements": 0, "totalPages": 0, "number": 1, "size": 20}},
	} {
		got, page := restList(c.query)
		if !slices.Equal(got, c.want) {
			t.Errorf("GET tasks ?%s: ids %v, want %v", c.query.Encode(), got, c.want)
		}
		for k, v := range c.page {
			if page[k] != v {
				t.Errorf("GET tasks ?%s: page.%s %v, want %v (page %v)", c.query.Encode(), k, page[k], v, page)
			}
		}
	}
	for _, q := range []string{"status=DONE", "type=AUTO", "sort=color", "hostId=x", "size=0", "page=0"} {
		s.call(t, http.MethodGet, "/api/v2/tasks/instances?"+q, admin, nil).wantError(t, http.StatusBadRequest)
	}
}
