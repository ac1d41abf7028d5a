package integration_test

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"agentplane/server/internal/store/mariadbtest"
)

// TestStopThroughTheOtherReplica runs two replicas of one MariaDB store
// (the same CA and access-key sealing key, each its own data dir) and an
// agentd given both (--server a,b): a stop requested through the replica
// that does NOT hold the host's stream ends SUCCESSFUL, the agent command
// run once, on the replica that holds it.
func TestStopThroughTheOtherReplica(t *testing.T) {
	t.Parallel()
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
	by := startBystanders(t)
	home := newHome(t)
	startFake(t, home)
	ag := a.startAgentdVia(t, home, time.Second, a.grpcAddr+","+b.grpcAddr)

	// Which replica holds the stream: the one that logged its connection.
	holder, other := a, b
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
