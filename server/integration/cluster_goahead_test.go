package integration_test

import (
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestClusterGoAheadAfterTheOwnerDiesIsNotRefused: the task's owner dies
// between the command reaching agentd and agentd asking its go-ahead. The
// replica holding the stream ran the command for the owner; the owner's
// death ends that wait, the agent left to finish for the task's next owner.
// agentd's go-ahead, asked in that gap, must not fail the stop: the
// replica tells agentd to keep the command and ask again, the survivor that
// adopts the task resumes it, and the stop ends SUCCESSFUL, run once.
//
// The gap is made wide and certain: agentd is frozen (SIGSTOP) before the
// stop is posted, so the command waits in its socket; mariadbd is frozen
// before the owner is killed, so no survivor can adopt the task until agentd
// has asked.
func TestClusterGoAheadAfterTheOwnerDiesIsNotRefused(t *testing.T) {
	t.Parallel()
	c := startCluster(t, 3, "--log-level", "debug")
	a := c.addAgentds(t, 1, time.Second)[0]
	holder := c.holder(a)
	owner := (holder + 1) % len(c.replicas)
	// Thaw whatever is frozen before the processes' own cleanups (registered
	// earlier, so run later) stop them.
	agentdFrozen, dbFrozen := false, false
	t.Cleanup(func() {
		if agentdFrozen {
			_ = a.proc.cmd.Process.Signal(syscall.SIGCONT)
		}
		if dbFrozen {
			_ = c.db.Signal(syscall.SIGCONT)
		}
	})

	if err := a.proc.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	agentdFrozen = true
	tk := c.stop(t, owner, a)
	t.Logf("stop of %s (stream on r%d) through r%d, agentd frozen", a.name, holder+1, owner+1)
	hp := c.replicas[holder].proc
	waitLog(t, hp, "running a command for another replica", 30*time.Second)

	if err := c.db.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	dbFrozen = true
	c.kill(t, owner)
	waitLog(t, hp, "command for another replica ended without its result", 10*time.Second)

	if err := a.proc.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	agentdFrozen = false
	var outcome string
	waitFor(t, 20*time.Second, "agentd to get its go-ahead's answer", func() bool {
		l := a.proc.log()
		switch {
		case strings.Contains(l, "command ended without the server's go-ahead"):
			outcome = "refused: the attempt ends FAILED"
		case strings.Contains(l, "the server does not wait for the command here yet"):
			outcome = "asked to ask again"
		}
		return outcome != ""
	})
	t.Logf("agentd's go-ahead, asked after the owner's death: %s", outcome)
	if err := c.db.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	dbFrozen = false
	checkStopOnce(t, c, tk.ID, 60*time.Second)
}
