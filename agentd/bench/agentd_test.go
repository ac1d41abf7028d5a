package bench

import (
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestAgentdSchedCPUCountsThisProcess(t *testing.T) {
	before, err := agentdSchedCPU(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	for end := time.Now().Add(30 * time.Millisecond); time.Now().Before(end); { // burn CPU
	}
	after, err := agentdSchedCPU(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if d := after - before; d < 10*time.Millisecond || d > 10*time.Second {
		t.Fatalf("30 ms of spinning counted as %s", d)
	}
}

func TestAgentdSleepsAreReaped(t *testing.T) {
	s, err := agentdStartSleeps(t.Context(), 5)
	if err != nil {
		s.kill()
		t.Fatal(err)
	}
	pids := make([]int, 0, len(s.cmds))
	for _, c := range s.cmds {
		pids = append(pids, c.Process.Pid)
	}
	if len(pids) != 5 {
		t.Fatalf("%d processes started", len(pids))
	}
	n, err := agentdRawComm(make([]byte, 64))
	if err != nil || n < 5 {
		t.Fatalf("raw read: %d processes, %v", n, err)
	}
	if err := s.kill(); err != nil {
		t.Fatal(err)
	}
	for _, pid := range pids {
		// Reaped: the pid is gone, not even a zombie (unless reused by another program already).
		if comm, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm"); err == nil && string(comm) == "sleep\n" {
			t.Errorf("pid %d (sleep) still exists after kill", pid)
		}
	}
}

func TestAgentdBuildNamesSettings(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if s := agentdBuild(exe); !strings.Contains(s, "CGO_ENABLED=") || strings.Contains(s, "unknown") {
		t.Fatalf("agentdBuild(test binary) = %q", s)
	}
	if s := agentdBuild(exe + ".missing"); !strings.Contains(s, "unknown") {
		t.Fatalf("agentdBuild(missing) = %q", s)
	}
}
