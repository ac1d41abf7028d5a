package integration_test

import (
	"encoding/json"
	"errors"
	"io"
	"maps"
	"net"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// A command the server has given up on must never start on the host, and
// whatever agentd did after the give-up is recorded: agentd asks the server
// for a go-ahead on the stream the command came on before its first signal,
// and the server records late results in the subtask's log.

// fenceFlags make the server give up on a silent agentd after 4 s: long
// enough for a stop posted at once to reach agentd's stream first.
var fenceFlags = []string{"--heartbeat-interval", "500ms", "--agent-lost-after", "4s"}

// TestPartitionedCommandNeverRunsLate partitions agentd from the server (the
// proxy holds every byte, the connections stay open) and posts a stop: the
// command waits in the proxy while the server gives up on the host ("agentd
// lost"). When the partition heals, agentd reads the command from the old
// stream; it must not signal anything, and the subtask's log must say what
// agentd did.
func TestPartitionedCommandNeverRunsLate(t *testing.T) {
	t.Parallel()
	late := "late result from agentd after the server gave up (attempt 1): CANCELED: canceled before it started"
	checkNeverRunsLate(t, late, func(t *testing.T, s *server, home string) (*agentd, func(), func()) {
		p := startPartition(t, s.grpcAddr)
		a := s.startAgentdVia(t, home, 20*time.Second, p.addr())
		return a, func() { p.hold(true) }, func() { p.hold(false) }
	})
}

// TestFrozenAgentdCommandNeverRunsLate freezes agentd (SIGSTOP) before a
// stop is posted: the command reaches its socket, but agentd reads it only
// once thawed (SIGCONT), after the server gave up on the host. It must not
// signal anything, and the subtask's log must say what agentd did. Thawed,
// agentd may read the command before it notices that its stream ended, or
// not; either way the Cancel the server kept for the host ends it CANCELED
// when agentd reconnects, nothing signalled.
func TestFrozenAgentdCommandNeverRunsLate(t *testing.T) {
	t.Parallel()
	late := "late result from agentd after the server gave up (attempt 1): CANCELED: canceled before it started"
	checkNeverRunsLate(t, late, func(t *testing.T, s *server, home string) (*agentd, func(), func()) {
		a := s.startAgentd(t, home, 20*time.Second)
		frozen := a.proc
		t.Cleanup(func() { _ = frozen.cmd.Process.Signal(syscall.SIGCONT) })
		signal := func(sig syscall.Signal) func() {
			return func() {
				if err := frozen.cmd.Process.Signal(sig); err != nil {
					t.Fatal(err)
				}
			}
		}
		return a, signal(syscall.SIGSTOP), signal(syscall.SIGCONT)
	})
}

// checkNeverRunsLate runs a stop whose command reaches agentd only after the
// server gave up on the host: setup starts agentd and returns how to cut it
// off from the server and how to let it back. The subtask's log must then
// hold late, agentd's late result.
func checkNeverRunsLate(t *testing.T, late string, setup func(t *testing.T, s *server, home string) (a *agentd, cut, heal func())) {
	s := startServer(t, fenceFlags...)
	by := startBystanders(t)
	home := newHome(t)
	startFake(t, home)
	before := waitFakeReady(t, home, baseNames...)
	a, cut, heal := setup(t, s, home)

	cut()
	id := s.stopOK(t, a.hostID).ID
	tk := s.waitTask(t, id, 30*time.Second, "FAILED", taskJSON.final)
	checkLost(t, tk)
	sid := tk.subtask(stopAllName).ID
	heal()

	waitFor(t, 30*time.Second, "agentd to answer the command", func() bool {
		l := a.proc.log()
		return strings.Contains(l, `"command finished"`) || strings.Contains(l, "cancel for a command not running")
	})
	if after := waitFakeReady(t, home, baseNames...); !maps.Equal(before, after) {
		t.Errorf("OCP Agent processes %v before, %v after: agentd signalled them after the server gave up", before, after)
	}
	checkNoSignalSent(t, a)
	by.checkAlive(t)
	waitFor(t, 20*time.Second, "the late result in the subtask's log", func() bool {
		return strings.Contains(s.subtaskLog(t, id, sid), "late result from agentd after the server gave up")
	})
	log := s.subtaskLog(t, id, sid)
	wantInOrder(t, "the stop subtask's log", log, "the server gave up on attempt 1: agentd lost", late, "nothing was signalled")
	if tk := s.getTask(t, id); tk.Status != "FAILED" {
		t.Errorf("task %s after the late result, want FAILED", tk.Status)
	}
	s.waitAgent(t, a.hostID, "STARTED", before)
	if h := s.getHost(t, a.hostID); h.AgentStatus != "STARTED" || h.OperationTaskID != 0 {
		t.Errorf("host after the refused stop: agentStatus %q operationTaskId %d, want STARTED 0", h.AgentStatus, h.OperationTaskID)
	}
	checkNothingRunning(t, s)
	t.Logf("subtask log:\n%s", log)
	logCommand(t, a)
}

// logCommand logs agentd's lines about commands.
func logCommand(t *testing.T, a *agentd) {
	t.Helper()
	for _, l := range strings.Split(a.proc.log(), "\n") {
		if strings.Contains(l, `"subtask_id"`) {
			t.Logf("agentd: %s", l)
		}
	}
}

// checkNoSignalSent fails the test if agentd logged a SIGTERM or SIGKILL.
func checkNoSignalSent(t *testing.T, a *agentd) {
	t.Helper()
	for _, l := range strings.Split(a.proc.log(), "\n") {
		var e struct {
			Event string `json:"event"`
		}
		if json.Unmarshal([]byte(l), &e) == nil && (e.Event == "sigterm_sent" || e.Event == "sigkill_sent") {
			t.Errorf("agentd signalled a process: %s", l)
		}
	}
}

// signalled returns the base processes (by pid) agentd logged the event
// for. Each signal is logged twice, once by the stopper and once as the
// command's progress line, so lines must not be counted.
func signalled(a *agentd, event string) map[int]bool {
	pids := map[int]bool{}
	for _, l := range strings.Split(a.proc.log(), "\n") {
		var e struct {
			Event string `json:"event"`
			PID   int    `json:"pid"`
		}
		if json.Unmarshal([]byte(l), &e) == nil && e.Event == event && e.PID > 0 {
			pids[e.PID] = true
		}
	}
	return pids
}

// TestFrozenAgentdFinishesStopLate freezes agentd (SIGSTOP) once it has sent
// SIGTERM to every base process: the server gives up on the host ("agentd
// lost") while the processes exit. Thawed (SIGCONT), agentd finishes the
// stop; its late result must be in the subtask's log and the host's agent
// view must show the processes STOPPED, as they are.
func TestFrozenAgentdFinishesStopLate(t *testing.T) {
	t.Parallel()
	s := startServer(t, fenceFlags...)
	by := startBystanders(t)
	home := newHome(t)
	startFake(t, home, "FAKE_OCP_MODE=slow", "FAKE_OCP_SLOW=2s")
	a := s.startAgentd(t, home, 20*time.Second)
	id := s.stopOK(t, a.hostID).ID
	waitFor(t, 30*time.Second, "agentd to send SIGTERM to every base process", func() bool {
		return len(signalled(a, "sigterm_sent")) >= len(baseNames)
	})

	frozen := a.proc
	if err := frozen.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = frozen.cmd.Process.Signal(syscall.SIGCONT) })
	t.Logf("agentd frozen with SIGSTOP after its SIGTERMs")
	tk := s.waitTask(t, id, 30*time.Second, "FAILED", taskJSON.final)
	checkLost(t, tk)
	sid := tk.subtask(stopAllName).ID
	waitFor(t, 20*time.Second, "the base processes to exit", func() bool { return len(procsUnder(home)) == 0 })
	if err := frozen.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}

	waitFor(t, 20*time.Second, "the late result in the subtask's log", func() bool {
		return strings.Contains(s.subtaskLog(t, id, sid), "late result from agentd after the server gave up")
	})
	log := s.subtaskLog(t, id, sid)
	wantInOrder(t, "the stop subtask's log", log, "the server gave up on attempt 1: agentd lost",
		"late result from agentd after the server gave up (attempt 1): SUCCEEDED: stopped 3 OCP Agent base processes")
	s.waitAgent(t, a.hostID, "STOPPED", nil)
	if h := s.getHost(t, a.hostID); h.AgentStatus != "STOPPED" || h.OperationTaskID != 0 {
		t.Errorf("host after the late stop: agentStatus %q operationTaskId %d, want STOPPED 0", h.AgentStatus, h.OperationTaskID)
	}
	checkNoneUnder(t, home)
	by.checkAlive(t)
	checkNothingRunning(t, s)
	t.Logf("subtask log:\n%s", log)
}

// partition is a TCP proxy that can hold traffic: while held, it forwards
// nothing in either direction but keeps every connection open and every
// byte, as a network partition does; healed, it delivers what it held, in
// order.
type partition struct {
	*proxy

	mu     sync.Mutex
	healed chan struct{} // closed while traffic flows; replaced when held
}

func startPartition(t *testing.T, target string) *partition {
	t.Helper()
	p := &partition{healed: make(chan struct{})}
	close(p.healed)
	p.proxy = startForwarder(t, target, p.forward)
	t.Cleanup(func() { p.hold(false) }) // before the proxy's: nothing waits
	return p
}

// forward copies src to dst, waiting while the partition holds; at the
// end of src it closes dst.
func (p *partition) forward(dst, src net.Conn) {
	defer dst.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.wait()
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				return
			}
			p.wait()
			return
		}
	}
}

// wait returns once traffic flows.
func (p *partition) wait() {
	p.mu.Lock()
	healed := p.healed
	p.mu.Unlock()
	<-healed
}

// hold starts (true) or heals (false) the partition.
func (p *partition) hold(on bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.healed:
		if on {
			p.healed = make(chan struct{})
		}
	default:
		if !on {
			close(p.healed)
		}
	}
}
