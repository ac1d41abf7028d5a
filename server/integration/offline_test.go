package integration_test

import (
	"database/sql"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	_ "modernc.org/sqlite" // read the server's store to catch the instant a host turns ONLINE

	"agentplane/server/internal/store"
)

// TestHostOfflineWhenAgentdLeavesAtOnce stops agentd the instant its host
// row says ONLINE, i.e. while the server may still be inside its Connect
// handler, and expects the host to go OFFLINE. It reads the store's file
// directly (read-only) because polling REST is too slow to hit the window.
func TestHostOfflineWhenAgentdLeavesAtOnce(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	home := newHome(t)
	db, err := sql.Open("sqlite", "file:"+filepath.Join(s.dataDir, store.FileName)+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for i := range 10 {
		name := fmt.Sprintf("leaver-%d", i)
		p := startProcess(t, "agentd-"+name, []string{"AGENTPLANE_JOIN_TOKEN=" + s.joinToken(t, name)}, agentdBin,
			"--server", s.grpcAddr, "--ca-file", s.caFile, "--state-dir", filepath.Join(tempDir(t), "state"),
			"--host-name", name, "--install-home", home, "--grace", "1s", "--log-format", "json")
		status := func() string {
			var st string
			_ = db.QueryRow(`SELECT status FROM hosts WHERE name = ?`, name).Scan(&st)
			return st
		}
		// Busy-poll: the window is a few hundred microseconds wide.
		for deadline := time.Now().Add(30 * time.Second); status() != "ONLINE"; {
			if time.Now().After(deadline) {
				t.Fatalf("host %s not ONLINE after 30s", name)
			}
		}
		p.stop(t, 5*time.Second)
		if !poll(10*time.Second, func() bool { return status() == "OFFLINE" }) {
			h := s.waitHost(t, name, time.Second, "any status", func(hostJSON) bool { return true })
			opened := strings.Contains(s.proc.log(), `"host_name":"`+name+`"`)
			t.Fatalf("host %s (id %d) still %s over REST 10s after its agentd exited (server logged \"agent connected\" for it: %v)",
				name, h.ID, h.Status, opened)
		}
	}
}
