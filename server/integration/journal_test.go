package integration_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestCorruptJournalAtRestart: agentd killed mid-stop, its journal entry
// for the stop then torn (as a disk fault would leave it), starts again:
// it quarantines the entry, logs it at error level, does not run the stop
// again, and reports it FAILED "state lost"; the host comes back ONLINE
// and a retry stops the agent.
func TestCorruptJournalAtRestart(t *testing.T) {
	t.Parallel()
	s, by, home, a, id := startSlowStop(t, "3s")
	a.proc.kill(t)
	st := s.getTask(t, id).subtask(stopAllName)
	marker := filepath.Join(argValue(t, a.argv, "--state-dir"), "runs", fmt.Sprintf("%d-1", st.ID))
	if err := os.WriteFile(marker, []byte("{\"subtask_id\":\x00\x00\x00"), 0o600); err != nil {
		t.Fatal(err)
	}
	a.start(t)

	tk := s.waitFinal(t, id)
	st = tk.subtask(stopAllName)
	if tk.Status != "FAILED" || st.Status != "FAILED" || !strings.Contains(st.Message, agentdStateLostMessage) {
		t.Fatalf("task %s, stop subtask %s %q; want both FAILED with %q", tk.Status, st.Status, st.Message, agentdStateLostMessage)
	}
	if n := commandRuns(a)[runKey{st.ID, 1}]; n != 1 {
		t.Fatalf("attempt 1 of the stop subtask ran %d times, want once", n)
	}
	quarantined := false
	for _, l := range strings.Split(a.proc.log(), "\n") {
		if strings.Contains(l, "corrupt journal file quarantined") && strings.Contains(l, `"level":"error"`) {
			quarantined = true
		}
	}
	if m, _ := filepath.Glob(marker + ".corrupt-*"); !quarantined || len(m) != 1 {
		t.Fatalf("quarantine: logged %v, files %v", quarantined, m)
	}
	s.waitHost(t, a.name, 30*time.Second, "ONLINE again", func(h hostJSON) bool { return h.Status == "ONLINE" })

	s.retryTask(t, id)
	tk = s.waitFinal(t, id)
	checkStopped(t, s, tk, home, by, a.hostID)
	checkRanOnce(t, a, st.ID, 1, 2)
	checkNothingRunning(t, s)
}
