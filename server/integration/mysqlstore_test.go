package integration_test

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	iamv1 "agentplane/gen/agentplane/iam/v1"
	"agentplane/internal/mariadbtest"
)

// startServerOnMariaDB starts agentplane-server (startServer, with args)
// on a new database of db: its URL in a --store-dsn-file, as an operator
// keeps the password out of ps. The data dir still holds the CA and keys.
func startServerOnMariaDB(t *testing.T, db *mariadbtest.Server, args ...string) *server {
	t.Helper()
	dsnFile := filepath.Join(tempDir(t), "store.dsn")
	if err := os.WriteFile(dsnFile, []byte(db.URL(db.NewDatabaseName(t))+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return startServer(t, append([]string{"--store-dsn-file", dsnFile}, args...)...)
}

// TestMySQLStore runs the server on MariaDB: a stop through REST ends
// SUCCESSFUL; the task is still there after a restart of the server; with
// the database killed, writes answer REST 503 (code 10503) and gRPC
// UNAVAILABLE within a bound, and once the database is back (same data dir
// and port) the server answers again by itself, with no restart, and stops
// again.
func TestMySQLStore(t *testing.T) {
	t.Parallel()
	db := mariadbtest.Start(t)
	s := startServerOnMariaDB(t, db)
	by := startBystanders(t)
	home := newHome(t)
	startFake(t, home)
	a := s.startAgentd(t, home, time.Second)

	if log := s.proc.log(); !strings.Contains(log, `"store":"mysql://root@`+db.Addr()+`/`) {
		t.Errorf("the server does not log its store:\n%s", tail(s.proc.logPath, 20))
	}

	first := s.stopOK(t, a.hostID)
	if got := s.waitFinal(t, first.ID); got.Status != "SUCCESSFUL" {
		t.Fatalf("stop on MariaDB: %s", got.Status)
	}
	checkNoneUnder(t, home)
	by.checkAlive(t)

	s.proc.stop(t, 15*time.Second)
	s.restart(t)
	if got := s.getTask(t, first.ID); got.Status != "SUCCESSFUL" || got.HostID != a.hostID {
		t.Fatalf("the task after a restart of the server: %+v", got)
	}
	s.waitHost(t, a.name, 30*time.Second, "ONLINE again", func(h hostJSON) bool { return h.Status == "ONLINE" })

	db.Kill()
	start := time.Now()
	user := func(name string) apiResponse {
		return s.call(t, http.MethodPost, "/api/v2/iam/users", admin,
			map[string]any{"username": name, "password": "a-long-enough-password-1", "roles": []string{"HOST_VIEWER"}})
	}
	r := user("refused-while-down")
	if e, _ := r.obj["error"].(map[string]any); r.status != http.StatusServiceUnavailable || e["code"] != float64(10503) ||
		e["message"] != "the data store is unavailable" {
		t.Errorf("REST write with the database down: %d %s, want 503 with code 10503", r.status, r.body)
	}
	if r := s.call(t, http.MethodGet, fmt.Sprintf("/api/v2/compute/hosts/%d", a.hostID), admin, nil); r.status != http.StatusServiceUnavailable {
		t.Errorf("REST read with the database down: %d %s, want 503", r.status, r.body)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err := iamv1.NewIamServiceClient(s.conn(t)).CreateAccessKey(withCreds(ctx, admin), &iamv1.CreateAccessKeyRequest{})
	if st := status.Convert(err); st.Code() != codes.Unavailable || st.Message() != "the data store is unavailable" {
		t.Errorf("gRPC CreateAccessKey with the database down: %s %q, want UNAVAILABLE", st.Code(), st.Message())
	}
	if d := time.Since(start); d > 15*time.Second {
		t.Errorf("the refusals took %v with the database down", d)
	}
	h := s.call(t, http.MethodGet, "/health", nil, nil)
	if d, _ := h.obj["data"].(map[string]any); h.status != http.StatusServiceUnavailable || d["store"] != "UNAVAILABLE" {
		t.Errorf("GET /health with the database down: %d %s, want 503 UNAVAILABLE", h.status, h.body)
	}

	if err := db.Restart(); err != nil {
		t.Fatal(err)
	}
	back := time.Now()
	var again apiResponse
	if !poll(30*time.Second, func() bool {
		again = user(fmt.Sprintf("after-%d", time.Now().UnixNano()))
		return again.status == http.StatusOK
	}) {
		t.Fatalf("REST write 30s after the database came back: %d %s", again.status, again.body)
	}
	t.Logf("REST writes again %v after the database came back", time.Since(back).Round(time.Millisecond))
	checkStoreBack(t, s)
	if s.proc.exited() {
		t.Fatal("the server exited while the database was down")
	}

	s.waitHost(t, a.name, 30*time.Second, "ONLINE", func(h hostJSON) bool { return h.Status == "ONLINE" })
	second := s.stopOK(t, a.hostID)
	if got := s.waitFinal(t, second.ID); got.Status != "SUCCESSFUL" {
		t.Fatalf("stop once the database is back: %s", got.Status)
	}
	a.checkOnce(t)
	by.checkAlive(t)
}
