package integration_test

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"agentplane/internal/mariadbtest"
)

// TestStopThroughTheOtherReplica runs two replicas of one MariaDB store
// (the same CA and access-key sealing key, each its own data dir) and an
// agentd given both (--server a,b): a stop requested through the replica
// that does NOT hold the host's stream ends SUCCESSFUL, the agent command
// run once, on the replica that holds it.
func TestStopThroughTheOtherReplica(t *testing.T) {
	t.Parallel()
	holder, other, ag, by, home := replicaPair(t, time.Second)
	t.Logf("stream on %s, stop through %s", holder.grpcAddr, other.grpcAddr)
	tk := other.stopOK(t, ag.hostID)
	if got := other.waitFinal(t, tk.ID); got.Status != "SUCCESSFUL" {
		t.Fatalf("stop through the other replica: %+v", got)
	}
	ag.checkOnce(t)
	checkNoneUnder(t, home)
	by.checkAlive(t)
	if !strings.Contains(other.proc.log(), `"message":"connected to replica"`) {
		t.Errorf("the replica that took the request did not dial the other:\n%s", tail(other.proc.logPath, 20))
	}
}

// connectedTo reports whether s logged the connection of host id's agentd.
func connectedTo(s *server, id int64) bool {
	for _, line := range strings.Split(s.proc.log(), "\n") {
		if strings.Contains(line, `"message":"agent connected"`) && strings.Contains(line, `"host_id":`+strconv.FormatInt(id, 10)+`,`) {
			return true
		}
	}
	return false
}

// replicaPair starts two replicas of one new MariaDB database (b with a
// copy of a's CA and sealing key), the bystanders, a fake OCP Agent (with
// fakeEnv) and an agentd given both replicas (grace); it returns the
// replica that holds the agent's stream, then the other.
func replicaPair(t *testing.T, grace time.Duration, fakeEnv ...string) (holder, other *server, ag *agentd, by *bystanders, home string) {
	t.Helper()
	db := mariadbtest.Start(t)
	dsnFile := filepath.Join(tempDir(t), "store.dsn")
	if err := os.WriteFile(dsnFile, []byte(db.URL(db.NewDatabaseName(t))+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	a := startServer(t, "--store-dsn-file", dsnFile, "--advertise-addr", "127.0.0.1")
	// b's data dir gets a's CA and sealing key, as an operator copies them.
	bDir := filepath.Join(tempDir(t), "data")
	if err := os.MkdirAll(bDir, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"ca.crt", "ca.key", "access-key.key"} {
		data, err := os.ReadFile(filepath.Join(a.dataDir, f))
		if err == nil {
			err = os.WriteFile(filepath.Join(bDir, f), data, 0o600)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	b := startServerIn(t, bDir, "--store-dsn-file", dsnFile, "--advertise-addr", "127.0.0.1")
	by = startBystanders(t)
	home = newHome(t)
	startFake(t, home, fakeEnv...)
	ag = a.startAgentdVia(t, home, grace, a.grpcAddr+","+b.grpcAddr)

	// Which replica holds the stream: the one that logged its connection.
	holder, other = a, b
	waitFor(t, 30*time.Second, "a replica logging the agent's connection", func() bool {
		switch {
		case connectedTo(a, ag.hostID):
			return true
		case connectedTo(b, ag.hostID):
			holder, other = b, a
			return true
		}
		return false
	})
	return holder, other, ag, by, home
}

// TestStopSurvivesTheStreamReplicaKilled: a stop through one replica runs
// on the other, which holds the stream; that one is killed (-9) while the
// agent works (its processes ignore SIGTERM, so the stop takes the grace);
// agentd reconnects to the surviving replica, which asks it what became of
// the command instead of sending it again: SUCCESSFUL, run once.
func TestStopSurvivesTheStreamReplicaKilled(t *testing.T) {
	t.Parallel()
	holder, other, ag, by, home := replicaPair(t, 4*time.Second, "FAKE_OCP_MODE=ignore-term")
	tk := other.stopOK(t, ag.hostID)
	waitFor(t, 30*time.Second, "agentd starting the stop", func() bool {
		return strings.Contains(ag.proc.log(), `"message":"command started`)
	})
	holder.proc.kill(t)
	got := other.waitFinal(t, tk.ID)
	if got.Status != "SUCCESSFUL" {
		t.Fatalf("stop after the stream's replica was killed: %+v", got)
	}
	ag.checkOnce(t)
	checkNoneUnder(t, home)
	by.checkAlive(t)
	if !connectedTo(other, ag.hostID) {
		t.Fatalf("agentd did not reconnect to the surviving replica:\n%s", tail(other.proc.logPath, 30))
	}
	if log := other.proc.log(); !strings.Contains(log, `"message":"agentd told what became of a resumed command"`) {
		t.Errorf("the surviving replica did not ask agentd about the command (resumed):\n%s", tail(other.proc.logPath, 30))
	}
}
