package integration_test

import (
	"encoding/json"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

const stopAllName = "Stop all OCP agent processes"

// startSlowStop starts a server, bystanders, slow fakes (each exits slow
// after SIGTERM) and an agentd, posts a stop, and waits until agentd is
// running the stop subtask's command.
func startSlowStop(t *testing.T, slow string) (*server, *bystanders, string, *agentd, int64) {
	t.Helper()
	s, by, home, a := fleetOfOne(t, 20*time.Second, "FAKE_OCP_MODE=slow", "FAKE_OCP_SLOW="+slow)
	created := s.stopOK(t, a.hostID)
	s.waitTask(t, created.ID, 30*time.Second, "the stop subtask RUNNING", func(tk taskJSON) bool {
		return tk.subtask(stopAllName).Status == "RUNNING"
	})
	waitLog(t, a.proc, "stopping ocp agent processes", 30*time.Second)
	return s, by, home, a, created.ID
}

// waitLog waits until the process's log contains substr.
func waitLog(t *testing.T, p *process, substr string, timeout time.Duration) {
	t.Helper()
	waitFor(t, timeout, p.name+" to log "+substr, func() bool { return strings.Contains(p.log(), substr) })
}

// logAgentd logs agentd's lines about the connection and the command.
func logAgentd(t *testing.T, a *agentd) {
	t.Helper()
	for _, l := range strings.Split(a.proc.log(), "\n") {
		for _, m := range []string{"connection to server lost", "stopping ocp agent processes", "command finished",
			"command already running", "re-sending its result", "result acknowledged", "canceling command"} {
			if strings.Contains(l, m) {
				t.Logf("agentd: %s", l)
				break
			}
		}
	}
}

// TestServerRestartMidStop kills the server with SIGKILL while agentd is
// stopping slow processes, restarts it on the same data dir and ports, and
// expects the task to resume and finish SUCCESSFUL once agentd reconnects
// (resume plus at-least-once dispatch).
func TestServerRestartMidStop(t *testing.T) {
	t.Parallel()
	s, by, home, a, id := startSlowStop(t, "3s")
	s.proc.kill(t)
	t.Logf("server killed with SIGKILL while %q ran on agentd", stopAllName)
	s.restart(t)

	checkResumed(t, s, by, home, a, id)
	checkAskedNotResent(t, s, a, id, "RUNNING", "FINISHED")
}

// TestServerDownWhenStopFinishes kills the server while agentd stops, lets
// agentd finish the command while no server is there, then restarts it: the
// result must be delivered after the reconnect and the task end SUCCESSFUL.
// The restarted server asks agentd what became of the stop and takes the
// FINISHED answer's result: the stop is not sent again, and ran once.
func TestServerDownWhenStopFinishes(t *testing.T) {
	t.Parallel()
	s, by, home, a, id := startSlowStop(t, "1s")
	s.proc.kill(t)
	waitLog(t, a.proc, "command finished", 30*time.Second)
	t.Logf("agentd finished the stop while the server was down")
	s.restart(t)

	checkResumed(t, s, by, home, a, id)
	checkAskedNotResent(t, s, a, id, "FINISHED")
}

// TestServerSIGTERMMidStop stops the server gracefully while agentd stops
// slow processes: it must exit at once with status 0 (agent streams do not
// hold it), leave the task RUNNING, and the restarted server must finish it.
func TestServerSIGTERMMidStop(t *testing.T) {
	t.Parallel()
	s, by, home, a, id := startSlowStop(t, "2s")
	begin := time.Now()
	_ = s.proc.cmd.Process.Signal(syscall.SIGTERM)
	waitFor(t, 10*time.Second, "the server to exit after SIGTERM", s.proc.exited)
	if s.proc.err != nil {
		t.Fatalf("server exited with %v after SIGTERM:\n%s", s.proc.err, tail(s.proc.logPath, 20))
	}
	t.Logf("server exited %s after SIGTERM", time.Since(begin).Round(time.Millisecond))
	s.restart(t)

	checkResumed(t, s, by, home, a, id)
}

// checkResumed waits for the restarted server to finish task id and for
// agentd to be back, then checks the stop's aftermath.
func checkResumed(t *testing.T, s *server, by *bystanders, home string, a *agentd, id int64) {
	t.Helper()
	tk := s.waitFinal(t, id)
	for _, st := range tk.Subtasks {
		t.Logf("subtask %q: %s %q", st.Name, st.Status, st.Message)
	}
	s.waitHost(t, a.name, 45*time.Second, "ONLINE again", func(h hostJSON) bool { return h.Status == "ONLINE" })
	checkStopped(t, s, tk, home, by, a.hostID)
	logAgentd(t, a)
}

// checkAskedNotResent checks, after a restart mid-stop, that the restarted
// server asked agentd what became of task id's stop (ResultQuery) rather
// than sending it again, that agentd's answer was one of states, and that
// the stop ran exactly once on the agent.
func checkAskedNotResent(t *testing.T, s *server, a *agentd, id int64, states ...string) {
	t.Helper()
	st := s.getTask(t, id).subtask(stopAllName)
	type entry struct {
		Msg     string `json:"message"`
		Subtask int64  `json:"subtask_id"`
		State   string `json:"state"`
	}
	find := func(log, msg string) []entry {
		var out []entry
		for line := range strings.SplitSeq(log, "\n") {
			var e entry
			if json.Unmarshal([]byte(line), &e) == nil && e.Msg == msg && e.Subtask == st.ID {
				out = append(out, e)
			}
		}
		return out
	}
	// The answer may come after the result agentd re-sends from its
	// outbox at once on connecting: then the server had its result already
	// and the answer tells it nothing (logged at debug).
	answered := find(a.proc.log(), "answering what became of a command")
	if len(answered) != 1 || !slices.ContainsFunc(states, func(st string) bool { return answered[0].State == "COMMAND_STATE_"+st }) {
		t.Fatalf("agentd answered %+v; want one answer, one of %v", answered, states)
	}
	for _, msg := range []string{"command already running", "command ran before; re-sending its result"} {
		if again := find(a.proc.log(), msg); len(again) != 0 {
			t.Fatalf("the stop was sent again after the restart: agentd logged %q", msg)
		}
	}
	if n := commandRuns(a)[runKey{st.ID, 1}]; n != 1 {
		t.Fatalf("attempt 1 of the stop ran %d times on the agent, want once", n)
	}
	t.Logf("the restarted server asked; agentd answered %s", answered[0].State)
}
