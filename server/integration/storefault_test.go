package integration_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	_ "modernc.org/sqlite" // the test holds a read snapshot on the server's store, as a backup does

	iamv1 "agentplane/gen/agentplane/iam/v1"
	"agentplane/server/internal/store"
)

// A full disk under the server's data dir: a small tmpfs, filled by a file
// while the test holds a read transaction on the store (as a backup does),
// so that SQLite cannot start its WAL over and every write needs new space.

// storeFlags make agentd report often, so that heartbeats and progress
// lines are written (and fail) while the disk is full.
var storeFlags = []string{"--heartbeat-interval", "500ms", "--agent-lost-after", "5s"}

// smallDataDir mounts a tmpfs of size for a server's data dir, unmounted
// on cleanup (after the processes are stopped); it skips the test where
// mounting is not permitted.
func smallDataDir(t *testing.T, size string) string {
	t.Helper()
	dir := filepath.Join(tempDir(t), "data")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size="+size+",mode=0700"); err != nil {
		t.Skipf("mounting a tmpfs for the data dir: %v (needs root)", err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, syscall.MNT_DETACH); err != nil {
			t.Errorf("unmounting %s: %v", dir, err)
		}
	})
	return dir
}

// diskFull is a full data dir; free gives the space back.
type diskFull struct {
	db     *sql.DB // w writes, r holds the snapshot
	r      *sql.Conn
	rtx    *sql.Tx
	filler string
	freed  bool
}

// fillDisk holds a read transaction on the store in dataDir, then fills the
// file system with a file, and writes (tables of the test's own) until even
// the smallest write fails, so that no write of the server's can fit (see
// useUp). The snapshot keeps the WAL from starting over only if it includes
// frames not yet copied into the database (else SQLite reads the database
// alone), so the test writes frames of its own just before, and tries again
// if the server's checkpoint came in between.
func fillDisk(t *testing.T, dataDir string) *diskFull {
	t.Helper()
	for try := 1; ; try++ {
		d := tryFillDisk(t, dataDir)
		full, err := d.useUp()
		if full {
			t.Logf("data dir %s filled", dataDir)
			return d
		}
		if err != nil || try == 5 {
			t.Fatalf("writes with the data dir filled (try %d): %v, want database or disk is full", try, err)
		}
		t.Logf("data dir %s not full after try %d: the WAL started over", dataDir, try)
		d.free(t)
	}
}

// useUp writes until a one-page commit fails for want of space, and says
// whether the store is then full: no commit fits. First 32 KiB rows, which
// use up the WAL file's room from before it last started over, then
// one-page changes: a failed commit leaves its frames in the WAL file,
// beyond its last commit, and the next commit writes over them, so a commit
// smaller than the failed one may fit there. Every commit starts at the
// same place in the WAL and takes at least a page: once a one-page commit
// fails, every commit fails, as long as the WAL does not start over. A
// checkpoint followed by one more one-page change checks that it cannot.
func (d *diskFull) useUp() (full bool, err error) {
	isFull := func(err error) bool { return err != nil && strings.Contains(err.Error(), "database or disk is full") }
	blob := make([]byte, 32<<10)
	for i := 0; i < 4000 && err == nil; i++ {
		_, err = d.db.Exec(`INSERT INTO disk_full_test (b) VALUES (?)`, blob)
	}
	if !isFull(err) {
		return false, err
	}
	const tick = `UPDATE disk_full_tick SET n = n + 1`
	err = nil
	for i := 0; i < 1000 && err == nil; i++ { // as many as pages of a 32 KiB row, in practice
		_, err = d.db.Exec(tick)
	}
	if err == nil {
		return false, nil // the WAL started over
	}
	if !isFull(err) {
		return false, fmt.Errorf("one-page writes after a 32 KiB one failed: %w", err)
	}
	_, _ = d.db.Exec(`PRAGMA wal_checkpoint(PASSIVE)`)
	if _, err := d.db.Exec(tick); !isFull(err) {
		return false, err // nil: the WAL started over
	}
	return true, nil
}

func tryFillDisk(t *testing.T, dataDir string) *diskFull {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+filepath.Join(dataDir, store.FileName)+"?_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	d := &diskFull{db: db, filler: filepath.Join(dataDir, "filler")}
	t.Cleanup(func() { d.free(t) })
	ctx := context.Background()
	if d.r, err = db.Conn(ctx); err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{
		`CREATE TABLE IF NOT EXISTS disk_full_test (b BLOB)`,
		`DELETE FROM disk_full_test`,
		`CREATE TABLE IF NOT EXISTS disk_full_tick (n INTEGER)`, // one row: changing it takes one page
		`DELETE FROM disk_full_tick`,
		`INSERT INTO disk_full_tick (n) VALUES (0)`,
	} {
		if _, err := db.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	if d.rtx, err = d.r.BeginTx(ctx, nil); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := d.rtx.QueryRow(`SELECT COUNT(*) FROM tasks`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(d.filler)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	for n := len(buf); n > 0; n /= 2 { // down to the last bytes
		for {
			if _, err := f.Write(buf[:n]); err != nil {
				if !errors.Is(err, syscall.ENOSPC) {
					t.Fatalf("filling %s: %v", dataDir, err)
				}
				break
			}
		}
	}
	return d
}

// free ends the read transaction and removes the filler.
func (d *diskFull) free(t *testing.T) {
	t.Helper()
	if d.freed {
		return
	}
	d.freed = true
	if d.rtx != nil {
		_ = d.rtx.Rollback()
	}
	if d.r != nil {
		_ = d.r.Close()
	}
	_ = d.db.Close()
	if err := os.Remove(d.filler); err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Errorf("removing the filler: %v", err)
	}
	t.Log("data dir space given back")
}

// refusedUser is the user checkStoreFull tries to create on a full disk,
// and checkStoreBack once the space is back.
var refusedUser = map[string]any{"username": "refused-while-full", "password": "a-long-enough-password-1",
	"roles": []string{"HOST_VIEWER"}}

// checkStoreFull checks what clients see while the store cannot be written:
// a writing REST call is a 503 with code 10503 "the data store is full", a
// writing gRPC call UNAVAILABLE with the same message, and both health
// checks say the store is unwritable.
func checkStoreFull(t *testing.T, s *server) {
	t.Helper()
	r := s.call(t, http.MethodPost, "/api/v2/iam/users", admin, refusedUser)
	if e, _ := r.obj["error"].(map[string]any); r.status != http.StatusServiceUnavailable || e["code"] != float64(10503) ||
		e["message"] != "the data store is full" {
		t.Errorf("REST write on a full disk: %d %s, want 503 with code 10503 %q", r.status, r.body, "the data store is full")
	}
	cc := s.conn(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := iamv1.NewIamServiceClient(cc).CreateAccessKey(withCreds(ctx, admin), &iamv1.CreateAccessKeyRequest{})
	if st := status.Convert(err); st.Code() != codes.Unavailable || st.Message() != "the data store is full" {
		t.Errorf("gRPC CreateAccessKey on a full disk: %s %q, want UNAVAILABLE %q", st.Code(), st.Message(), "the data store is full")
	}
	h := s.call(t, http.MethodGet, "/health", nil, nil)
	if d, _ := h.obj["data"].(map[string]any); h.status != http.StatusServiceUnavailable || d["status"] != "NOT_SERVING" || d["store"] != "FULL" {
		t.Errorf("GET /health on a full disk: %d %s, want 503 NOT_SERVING FULL", h.status, h.body)
	}
	hc, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil || hc.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Errorf("gRPC health on a full disk: %v %v, want NOT_SERVING", hc.GetStatus(), err)
	}
}

// checkStoreBack checks both health checks say SERVING again, and that the
// user refused on the full disk left nothing behind: it can be created now.
func checkStoreBack(t *testing.T, s *server) {
	t.Helper()
	if !poll(10*time.Second, func() bool { return s.call(t, http.MethodGet, "/api/v2/health", nil, nil).status == http.StatusOK }) {
		t.Error("GET /api/v2/health not 200 10s after the space came back")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	hc, err := healthpb.NewHealthClient(s.conn(t)).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil || hc.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("gRPC health once the space is back: %v %v, want SERVING", hc.GetStatus(), err)
	}
	if r := s.call(t, http.MethodPost, "/api/v2/iam/users", admin, refusedUser); r.status != http.StatusOK {
		t.Errorf("POST /iam/users of the user refused on the full disk, once the space is back: %d %s, want 200",
			r.status, r.body)
	}
}

// stateDir is agentd's --state-dir.
func (a *agentd) stateDir() string {
	for i, arg := range a.argv {
		if arg == "--state-dir" {
			return a.argv[i+1]
		}
	}
	return ""
}

// outbox lists the results agentd keeps until the server acknowledges them.
func (a *agentd) outbox(t *testing.T) []string {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(a.stateDir(), "outbox"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// TestDiskFullMidStop fills the data dir's disk while agentd stops slow
// processes, and gives the space back after agentd has sent its result:
// meanwhile clients are told "the data store is full" (503/10503,
// UNAVAILABLE), health says so, agentd's stream stays up and its result is
// not acknowledged; afterwards, with no restart, the task ends SUCCESSFUL,
// the result is acknowledged, the host's lock is free, health is back, and
// the refused call's audit record is there.
func TestDiskFullMidStop(t *testing.T) {
	t.Parallel()
	dataDir := smallDataDir(t, "32m")
	s := startServerIn(t, dataDir, storeFlags...)
	by := startBystanders(t)
	home := newHome(t)
	startFake(t, home, "FAKE_OCP_MODE=slow", "FAKE_OCP_SLOW=5s")
	a := s.startAgentd(t, home, 20*time.Second)
	id := s.stopOK(t, a.hostID).ID
	waitLog(t, a.proc, "stopping ocp agent processes", 30*time.Second)

	full := fillDisk(t, dataDir)
	if strings.Contains(a.proc.log(), "command finished") {
		t.Fatal("the stop finished before the disk was full; nothing was tested")
	}
	checkStoreFull(t, s)
	waitLog(t, a.proc, "command finished", 30*time.Second)
	waitLog(t, s.proc, "storing subtask outcome failed", 30*time.Second)
	if tk := s.getTask(t, id); tk.final() {
		t.Fatalf("task %d %s while its outcome could not be stored", id, tk.Status)
	}
	if len(a.outbox(t)) == 0 {
		t.Error("agentd's result was acknowledged before its outcome was stored")
	}
	if h := s.getHost(t, a.hostID); h.Status != "ONLINE" {
		t.Errorf("host %s while the disk is full, want ONLINE (its stream must stay up)", h.Status)
	}

	full.free(t)
	tk := s.waitTask(t, id, 30*time.Second, "a final status once the space is back", taskJSON.final)
	checkStopped(t, s, tk, home, by, a.hostID)
	checkStoreBack(t, s)
	if !poll(10*time.Second, func() bool { return len(a.outbox(t)) == 0 }) {
		t.Errorf("agentd's outbox still holds %v 10s after the task ended: result not acknowledged", a.outbox(t))
	}
	if strings.Contains(a.proc.log(), "connection to server lost") {
		t.Error("agentd's stream ended while the disk was full")
	}
	if len(a.logs) != 1 || strings.Count(s.proc.log(), `"agent connected"`) != 1 {
		t.Errorf("agentd connected %d times, want once", strings.Count(s.proc.log(), `"agent connected"`))
	}
	if !poll(10*time.Second, func() bool {
		r := s.call(t, http.MethodGet, "/api/v2/audit/events?operation=iam/users&outcome=UNAVAILABLE", admin, nil)
		var p struct{ Contents []struct{ Message string } }
		r.decode(t, &p)
		return len(p.Contents) == 1 && p.Contents[0].Message == "the data store is full"
	}) {
		t.Error("no audit record of the POST /iam/users refused while the disk was full")
	}
	start := s.call(t, http.MethodPost, fmt.Sprintf("/api/v2/compute/hosts/%d/agent/start", a.hostID), admin, nil)
	if start.status != http.StatusOK {
		t.Fatalf("start after the stop: %d %s; want the host's lock released", start.status, start.body)
	}
	var started taskJSON
	start.decode(t, &started)
	if tk := s.waitFinal(t, started.ID); tk.Status != "SUCCESSFUL" {
		t.Errorf("start after the stop ended %s", tk.Status)
	}
	checkNothingRunning(t, s)
}

// TestDiskFullPastTimeout keeps the disk full past the stop subtask's
// timeout (shortened in the store while the server is down): once the
// space is back, the subtask ends FAILED with the timeout, without a
// restart, and the host's lock is free.
func TestDiskFullPastTimeout(t *testing.T) {
	t.Parallel()
	dataDir := smallDataDir(t, "32m")
	s := startServerIn(t, dataDir, storeFlags...)
	home := newHome(t)
	startFake(t, home, "FAKE_OCP_MODE=slow", "FAKE_OCP_SLOW=120s")
	a := s.startAgentd(t, home, 90*time.Second)
	id := s.stopOK(t, a.hostID).ID
	tk := s.waitTask(t, id, 30*time.Second, "the stop subtask RUNNING", func(tk taskJSON) bool {
		return tk.subtask(stopAllName).Status == "RUNNING"
	})
	waitLog(t, a.proc, "stopping ocp agent processes", 30*time.Second)

	// The stop's 600 s timeout, cut to what has run plus 30 s: time for
	// the restart and the fill (a few seconds, more on a loaded machine).
	s.proc.kill(t)
	stopID := tk.subtask(stopAllName).ID
	db, err := sql.Open("sqlite", "file:"+filepath.Join(dataDir, store.FileName))
	if err != nil {
		t.Fatal(err)
	}
	_, err = db.Exec(`UPDATE subtasks SET timeout_s = (? - start_time) / 1000 + 30 WHERE id = ?`, time.Now().UnixMilli(), stopID)
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	s.restart(t)
	s.waitHost(t, a.name, 15*time.Second, "ONLINE again", func(h hostJSON) bool { return h.Status == "ONLINE" })

	full := fillDisk(t, dataDir)
	if strings.Contains(s.proc.log(), `"subtask failed"`) {
		t.Fatal("the stop subtask timed out before the disk was full; nothing was tested")
	}
	checkStoreFull(t, s)
	waitLog(t, s.proc, "storing subtask outcome failed", 50*time.Second)
	if tk := s.getTask(t, id); tk.final() {
		t.Fatalf("task %d %s while its outcome could not be stored", id, tk.Status)
	}
	full.free(t)

	tk = s.waitTask(t, id, 30*time.Second, "a final status once the space is back", taskJSON.final)
	st := tk.subtask(stopAllName)
	if tk.Status != "FAILED" || st.Status != "FAILED" || !strings.Contains(st.Message, "timed out") {
		t.Fatalf("task %s, stop subtask %s %q; want both FAILED, timed out", tk.Status, st.Status, st.Message)
	}
	checkStoreBack(t, s)
	r := s.call(t, http.MethodPost, fmt.Sprintf("/api/v2/compute/hosts/%d/agent/start", a.hostID), admin, nil)
	if r.status != http.StatusOK {
		t.Fatalf("start after the failed stop: %d %s; want the host's lock released", r.status, r.body)
	}
}
