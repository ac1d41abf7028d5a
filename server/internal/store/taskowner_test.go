package store

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"agentplane/server/internal/errs"
	"agentplane/server/internal/task"
)

// ownerTestLease is the lease of the owner tests' replicas.
const ownerTestLease = 6 * time.Second

// ownerStore opens the test backend's store, with replicas ids registered
// and live (beside each other, as on a shared MySQL database).
func ownerStore(t *testing.T, ids ...string) *Store {
	t.Helper()
	s, err := OpenTest(t, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	for _, id := range ids {
		err := s.tx(t.Context(), func(ctx context.Context, tx *wtx) error {
			_, err := registerReplica(ctx, tx, s.dialect, reg(id, "inc-"+id), ownerTestLease, false)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return s
}

// ownedPlan is a one-subtask task owned by owner.
func ownedPlan(owner task.Owner) task.Plan {
	return task.Plan{Task: task.Task{Name: "t", Type: task.TypeManual, Operation: task.OpExecute, Status: task.StatusRunning,
		Creator: "admin", TaskDefinitionID: -1, StartTime: time.Now(), Owner: owner,
		Context: task.Context{ListMap: map[string][]string{}, StringMap: map[string]string{}, ParallelIdx: -1},
		Subtasks: []task.Subtask{{Name: "a", ClassName: "a", Operation: task.OpExecute, Status: task.SubtaskReady,
			Timeout: time.Minute, RunTime: 1}}}}
}

func createOwned(t *testing.T, s *Store, owner task.Owner) *task.Task {
	t.Helper()
	created, _, err := s.CreateTask(t.Context(), ownedPlan(owner))
	if err != nil {
		t.Fatal(err)
	}
	return created
}

// ageReplica sets id's heartbeat d in the past, on the database's clock.
func ageReplica(t *testing.T, s *Store, id string, d time.Duration) {
	t.Helper()
	if _, err := s.exec(t.Context(), `UPDATE replicas SET heartbeat_at = `+s.dialect.ago()+` WHERE id = ?`, d.Microseconds(), id); err != nil {
		t.Fatal(err)
	}
}

func ids(os []task.OwnedTask) []int64 {
	out := make([]int64, len(os))
	for i, o := range os {
		out[i] = o.ID
	}
	return out
}

func TestTaskOwnerFencesUpdates(t *testing.T) {
	ctx := t.Context()
	s := ownerStore(t, "a", "b")
	created := createOwned(t, s, task.Owner{Replica: "a", Epoch: 1})
	got, err := s.GetTask(ctx, created.ID)
	if err != nil || got.Owner != (task.Owner{Replica: "a", Epoch: 1}) {
		t.Fatalf("owner as stored: %+v %v", got.Owner, err)
	}
	running := func(from *task.Task) *task.Task {
		after := *from
		after.Subtasks = slices.Clone(from.Subtasks)
		after.Subtasks[0].Status = task.SubtaskRunning
		return &after
	}
	// b takes it over (a hand-over: a is live) at epoch 2.
	owner, err := s.ClaimTask(ctx, got.ID, got.Owner, "b", 0)
	if err != nil || owner != (task.Owner{Replica: "b", Epoch: 2}) {
		t.Fatalf("claim: %+v %v", owner, err)
	}
	// a's write, fenced by its epoch, is refused, and nothing is written.
	err = s.UpdateTask(ctx, got, running(got), nil, task.SubtaskLogLine{SubtaskID: got.Subtasks[0].ID,
		LogLine: task.LogLine{RunTime: 1, Time: time.Now(), Line: "header", Header: true}})
	if !errors.Is(err, task.ErrNotOwner) || !errors.Is(err, errs.ErrAborted) || errors.Is(err, task.ErrChanged) {
		t.Fatalf("the old owner's write: %v, want ErrNotOwner", err)
	}
	now, err := s.GetTask(ctx, got.ID)
	if err != nil || now.Subtasks[0].Status != task.SubtaskReady || now.Owner != owner {
		t.Fatalf("after the refused write: %+v %v", now, err)
	}
	if lines, _, err := s.SubtaskLog(ctx, got.ID, got.Subtasks[0].ID, 0, 10, 1<<20); err != nil || len(lines) != 0 {
		t.Fatalf("the refused write's header was stored: %v %v", lines, err)
	}
	// The new owner's write passes; a stale one of the same owner is a
	// plain lost race.
	if err := s.UpdateTask(ctx, now, running(now), nil); err != nil {
		t.Fatal(err)
	}
	if err := s.UpdateTask(ctx, now, running(now), nil); !errors.Is(err, task.ErrChanged) || errors.Is(err, task.ErrNotOwner) {
		t.Fatalf("a stale write of the owner: %v, want ErrChanged", err)
	}
	// A claim from an epoch that is gone loses.
	if _, err := s.ClaimTask(ctx, got.ID, got.Owner, "a", 0); !errors.Is(err, task.ErrChanged) {
		t.Fatalf("a claim from a stale epoch: %v, want ErrChanged", err)
	}
}

func TestTaskOwnerSweepClaimsOnlyFromDeadOwners(t *testing.T) {
	ctx := t.Context()
	s := ownerStore(t, "a", "b")
	ofA := createOwned(t, s, task.Owner{Replica: "a", Epoch: 1})
	ofB := createOwned(t, s, task.Owner{Replica: "b", Epoch: 1})
	legacy := createOwned(t, s, task.Owner{})                        // made before tasks had owners
	gone := createOwned(t, s, task.Owner{Replica: "gone", Epoch: 3}) // its replica deregistered
	final := createOwned(t, s, task.Owner{Replica: "gone", Epoch: 1})
	done := *final
	done.Status, done.EndTime = task.StatusSuccessful, time.Now()
	if err := s.UpdateTask(ctx, final, &done, nil); err != nil {
		t.Fatal(err)
	}

	orphans, err := s.OrphanedTasks(ctx, "b", ownerTestLease, 100)
	if err != nil || !slices.Equal(ids(orphans), []int64{legacy.ID, gone.ID}) {
		t.Fatalf("orphans seen by b, a live: %+v %v", orphans, err)
	}
	if orphans[1].Owner != gone.Owner {
		t.Fatalf("an orphan's owner: %+v", orphans[1])
	}
	if got, err := s.OrphanedTasks(ctx, "b", ownerTestLease, 1); err != nil || len(got) != 1 {
		t.Fatalf("limit 1: %+v %v", got, err)
	}
	// a is live: the sweep's claim is refused, in the same statement.
	if _, err := s.ClaimTask(ctx, ofA.ID, ofA.Owner, "b", ownerTestLease); !errors.Is(err, task.ErrChanged) {
		t.Fatalf("claiming a live replica's task: %v, want ErrChanged", err)
	}
	if owned, err := s.OwnedTasks(ctx, "a"); err != nil || !slices.Equal(ids(owned), []int64{ofA.ID}) {
		t.Fatalf("a's tasks: %+v %v", owned, err)
	}
	// a's heartbeat ages past the lease on the database's clock: b claims.
	ageReplica(t, s, "a", ownerTestLease+time.Second)
	orphans, err = s.OrphanedTasks(ctx, "b", ownerTestLease, 100)
	if err != nil || !slices.Equal(ids(orphans), []int64{ofA.ID, legacy.ID, gone.ID}) {
		t.Fatalf("orphans seen by b, a dead: %+v %v", orphans, err)
	}
	for _, o := range orphans {
		owner, err := s.ClaimTask(ctx, o.ID, o.Owner, "b", ownerTestLease)
		if err != nil || owner != (task.Owner{Replica: "b", Epoch: o.Owner.Epoch + 1}) {
			t.Fatalf("claiming %+v: %+v %v", o, owner, err)
		}
	}
	if owned, err := s.OwnedTasks(ctx, "b"); err != nil || !slices.Equal(ids(owned), []int64{ofA.ID, ofB.ID, legacy.ID, gone.ID}) {
		t.Fatalf("b's tasks: %+v %v", owned, err)
	}
	if orphans, err := s.OrphanedTasks(ctx, "b", ownerTestLease, 100); err != nil || len(orphans) != 0 {
		t.Fatalf("orphans after the claims: %+v %v", orphans, err)
	}
	// b's own tasks are never its orphans, live or not; a (back) sees them
	// once b is dead.
	ageReplica(t, s, "b", ownerTestLease+time.Second)
	if orphans, err := s.OrphanedTasks(ctx, "b", ownerTestLease, 100); err != nil || len(orphans) != 0 {
		t.Fatalf("b's own tasks as its orphans: %+v %v", orphans, err)
	}
	if orphans, err := s.OrphanedTasks(ctx, "a", ownerTestLease, 100); err != nil || len(orphans) != 4 {
		t.Fatalf("b's tasks as a's orphans: %+v %v", orphans, err)
	}
}

// TestTaskOwnerMigration: the columns and index of 00004 on the test's
// backend, tasks made before it owned by nobody at epoch 0.
func TestTaskOwnerMigration(t *testing.T) {
	s := ownerStore(t)
	if _, err := s.exec(t.Context(), `INSERT INTO tasks (name, type, operation, status, creator, executor, host_id,
		task_definition_id, context, start_time, end_time, update_time) VALUES ('old','MANUAL','EXECUTE','RUNNING','admin','',0,-1,'{}',1,0,1)`); err != nil {
		t.Fatal(err)
	}
	orphans, err := s.OrphanedTasks(t.Context(), "a", ownerTestLease, 10)
	if err != nil || len(orphans) != 1 || orphans[0].Owner != (task.Owner{}) {
		t.Fatalf("a task made before owners: %+v %v", orphans, err)
	}
	q := `SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND name = 'tasks_owner'`
	if s.dialect == dialectMySQL {
		q = `SELECT COUNT(*) FROM information_schema.statistics WHERE table_schema = DATABASE() AND table_name = 'tasks'
			AND index_name = 'tasks_owner'`
	}
	var n int
	if err := s.r.QueryRowContext(t.Context(), q).Scan(&n); err != nil || n == 0 {
		t.Fatalf("index tasks_owner: %d %v", n, err)
	}
}

// TestHeartbeatIsOneStatement: a heartbeat on MySQL is one autocommitted
// statement (no BEGIN, no COMMIT), and says why it matched nothing.
func TestHeartbeatIsOneStatement(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenTest(t, dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	if _, err := s.RegisterReplica(t.Context(), reg("a", "i1"), ownerTestLease); err != nil {
		t.Fatal(err)
	}
	txns := func() int64 { return 0 }
	if s.dialect == dialectMySQL {
		db := RawTestDB(t, dir)
		txns = func() int64 {
			var total int64
			for _, v := range []string{"Com_begin", "Com_commit"} {
				var name string
				var n int64
				if err := db.QueryRowContext(t.Context(), `SHOW GLOBAL STATUS LIKE '`+v+`'`).Scan(&name, &n); err != nil {
					t.Fatal(err)
				}
				total += n
			}
			return total
		}
	}
	before := txns()
	for range 5 {
		if err := s.HeartbeatReplica(t.Context(), "a", "i1"); err != nil {
			t.Fatal(err)
		}
	}
	if n := txns() - before; n != 0 {
		t.Errorf("5 heartbeats ran %d BEGIN/COMMIT statements", n)
	}
	if err := s.HeartbeatReplica(t.Context(), "a", "other"); !errors.Is(err, errs.ErrConflict) {
		t.Errorf("another incarnation's heartbeat: %v", err)
	}
	if err := s.DeregisterReplica(t.Context(), "a", "i1"); err != nil {
		t.Fatal(err)
	}
	if err := s.HeartbeatReplica(t.Context(), "a", "i1"); !errors.Is(err, errs.ErrNotFound) {
		t.Errorf("heartbeat without a row: %v", err)
	}
}
