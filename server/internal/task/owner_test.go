package task_test

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"agentplane/server/internal/agentop"
	"agentplane/server/internal/store"
	"agentplane/server/internal/task"
)

// Several replicas on one store: each test runs two engines (replicas "a"
// and "b") on one SQLite store in this process, and plays the replicas
// registry through its own connection to the database file (a SQLite store
// holds its registry alone: Store.RegisterReplica drops other rows).

// registry writes the replicas table of the store in dir.
type registry struct {
	t  *testing.T
	db *sql.DB
}

// twoReplicas opens a store with replicas "a" and "b" live.
func twoReplicas(t *testing.T) (*store.Store, *registry) {
	t.Helper()
	dir := t.TempDir()
	st, reg := openStore(t, dir), openRegistry(t, dir)
	reg.beat("a")
	reg.beat("b")
	return st, reg
}

func openRegistry(t *testing.T, dir string) *registry {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+filepath.Join(dir, store.FileName)+"?_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return &registry{t: t, db: db}
}

// beat registers id with a heartbeat now.
func (r *registry) beat(id string) { r.set(id, "now") }

// age puts id's heartbeat a minute in the past: past any lease.
func (r *registry) age(id string) { r.set(id, "-60 seconds") }

func (r *registry) set(id, when string) {
	r.t.Helper()
	at := `strftime('%Y-%m-%d %H:%M:%f', 'now', '` + when + `')`
	if when == "now" {
		at = `strftime('%Y-%m-%d %H:%M:%f', 'now')`
	}
	if _, err := r.db.ExecContext(r.t.Context(), `DELETE FROM replicas WHERE id = ?`, id); err != nil {
		r.t.Fatal(err)
	}
	if _, err := r.db.ExecContext(r.t.Context(), `INSERT INTO replicas (id, advertise_addr, version, incarnation, beats,
		started_at, heartbeat_at) VALUES (?, 'x:1', 'v', 'i', 0, `+at+`, `+at+`)`, id); err != nil {
		r.t.Fatal(err)
	}
}

// syncLog is a log the engines write concurrently.
type syncLog struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *syncLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// waitLogged waits until l holds s, for 10 s at most.
func waitLogged(t *testing.T, l *syncLog, s string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for l.count(s) == 0 {
		if time.Now().After(deadline) {
			l.mu.Lock()
			defer l.mu.Unlock()
			t.Fatalf("not logged %q: %s", s, l.b.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (l *syncLog) count(s string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Count(l.b.String(), s)
}

// replicaEngine starts replica id's engine on st, sweeping every sweep.
func replicaEngine(t *testing.T, st task.Store, id string, sweep time.Duration, log *syncLog, execs map[string]task.Executor,
	onChange func([]int64)) *engine {
	t.Helper()
	l := zerolog.Nop()
	if log != nil {
		l = zerolog.New(log)
	}
	e := serve(task.New(task.Config{Store: st, Executors: execs, Executor: id, Log: l, Holds: agentop.Holds,
		Replica: id, Lease: 6 * time.Second, SweepInterval: sweep, OnChange: onChange}))
	if err := e.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	return e
}

// runs records the attempts executors ran: which replica, whether resumed.
type runs struct {
	mu   sync.Mutex
	list []string // "replica:subtask[:resumed]"
}

func (r *runs) add(replica string, run task.Run) {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := replica + ":" + run.Subtask.Name
	if run.Resumed {
		s += ":resumed"
	}
	r.list = append(r.list, s)
}

func (r *runs) String() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return strings.Join(r.list, " ")
}

// recordOn is an executor that records its runs as replica's and then
// calls then (nil: succeed).
func recordOn(rs *runs, replica string, then func(ctx context.Context, r task.Run) task.Result) task.Executor {
	return execFunc(func(ctx context.Context, r task.Run) task.Result {
		rs.add(replica, r)
		if then != nil {
			return then(ctx, r)
		}
		return task.Result{Message: "on " + replica}
	})
}

// blockUntilDone is an attempt that runs until its context ends, and says
// on started that it runs.
func blockUntilDone(started chan<- task.Run) func(ctx context.Context, r task.Run) task.Result {
	return func(ctx context.Context, r task.Run) task.Result {
		started <- r
		<-ctx.Done()
		return task.Result{Err: context.Cause(ctx)}
	}
}

func receive[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(10 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

// A task is run by the replica that created it only, while that replica
// is live, however often the other sweeps.
func TestOwnerRunsItsTasksAlone(t *testing.T) {
	st, _ := twoReplicas(t)
	var rs runs
	slow := func(ctx context.Context, r task.Run) task.Result {
		time.Sleep(100 * time.Millisecond) // several of b's sweeps
		return task.Result{Message: "done"}
	}
	execsOf := func(id string) map[string]task.Executor {
		return map[string]task.Executor{"a": recordOn(&rs, id, slow), "b": recordOn(&rs, id, slow), "c": recordOn(&rs, id, slow)}
	}
	a := replicaEngine(t, st, "a", 10*time.Millisecond, nil, execsOf("a"), nil)
	b := replicaEngine(t, st, "b", 10*time.Millisecond, nil, execsOf("b"), nil)
	created, err := a.Submit(context.Background(), plan(time.Minute, time.Minute, time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if created.Owner != (task.Owner{Replica: "a", Epoch: 1}) {
		t.Fatalf("created owned by %+v", created.Owner)
	}
	if got := waitFinal(t, b, created.ID); got.Status != task.StatusSuccessful || got.Owner.Replica != "a" {
		t.Fatalf("task %+v", got)
	}
	if got := rs.String(); got != "a:a a:b a:c" {
		t.Fatalf("runs %q, want a's only", got)
	}
}

// A replica that dies (its engine stopped mid-attempt, its heartbeat past
// the lease) has its task adopted by the other's sweep, which resumes the
// running attempt (Run.Resumed) and finishes the task, each attempt once.
func TestSweepAdoptsTheTasksOfADeadReplica(t *testing.T) {
	st, reg := twoReplicas(t)
	var rs runs
	started := make(chan task.Run, 1)
	onA := map[string]task.Executor{"a": recordOn(&rs, "a", nil), "b": recordOn(&rs, "a", blockUntilDone(started)),
		"c": recordOn(&rs, "a", nil)}
	a := replicaEngine(t, st, "a", 10*time.Millisecond, nil, onA, nil)
	logs := &syncLog{}
	b := replicaEngine(t, st, "b", 20*time.Millisecond, logs, map[string]task.Executor{"a": recordOn(&rs, "b", nil),
		"b": recordOn(&rs, "b", nil), "c": recordOn(&rs, "b", nil)}, nil)
	created, err := a.Submit(context.Background(), plan(time.Minute, time.Minute, time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	receive(t, started, "b's attempt on a")
	a.Close() // a dies: b is still RUNNING in the store
	time.Sleep(100 * time.Millisecond)
	if got := rs.String(); got != "a:a a:b" {
		t.Fatalf("b adopted a live replica's task: runs %q", got)
	}
	reg.age("a")
	got := waitFinal(t, b, created.ID)
	if got.Status != task.StatusSuccessful || got.Owner != (task.Owner{Replica: "b", Epoch: 2}) {
		t.Fatalf("task %+v", got)
	}
	if runs := rs.String(); runs != "a:a a:b b:b:resumed b:c" {
		t.Fatalf("runs %q, want b's attempt resumed on b, c run there, each once", runs)
	}
	if n := logs.count("adopted the tasks of a replica that is not live"); n != 1 {
		t.Fatalf("%d adoption log lines: %s", n, logs.b.String())
	}
}

// Adopt claims a replica's tasks at once, its heartbeat still fresh.
func TestAdoptClaimsAtOnce(t *testing.T) {
	st, _ := twoReplicas(t)
	var rs runs
	started := make(chan task.Run, 1)
	a := replicaEngine(t, st, "a", time.Hour, nil, map[string]task.Executor{"a": recordOn(&rs, "a", blockUntilDone(started))}, nil)
	b := replicaEngine(t, st, "b", time.Hour, nil, map[string]task.Executor{"a": recordOn(&rs, "b", nil)}, nil)
	created, err := a.Submit(context.Background(), plan(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	receive(t, started, "the attempt on a")
	a.Close() // kill -9 as the routing layer sees it: the connection refused
	if _, err := b.Adopt(context.Background(), "b"); err == nil {
		t.Fatal("adopting its own tasks")
	}
	n, err := b.Adopt(context.Background(), "a")
	if err != nil || n != 1 {
		t.Fatalf("Adopt: %d %v", n, err)
	}
	if got := waitFinal(t, b, created.ID); got.Status != task.StatusSuccessful || got.Owner.Replica != "b" {
		t.Fatalf("task %+v", got)
	}
	if runs := rs.String(); runs != "a:a b:a:resumed" {
		t.Fatalf("runs %q", runs)
	}
	if n, err := b.Adopt(context.Background(), "a"); err != nil || n != 0 {
		t.Fatalf("Adopt again: %d %v", n, err)
	}
}

// A paused owner (its engine running on, unaware) whose task was claimed
// by another replica stores nothing: its attempt's outcome is dropped,
// and the agent's result is not acknowledged (AfterCommit).
func TestPausedOwnerStoresNothing(t *testing.T) {
	testPausedOwner(t, func(t *testing.T, st task.Store, execs map[string]task.Executor) *engine {
		b := replicaEngine(t, st, "b", time.Hour, nil, execs, nil)
		if n, err := b.Adopt(context.Background(), "a"); err != nil || n != 1 {
			t.Fatalf("Adopt: %d %v", n, err)
		}
		return b
	}, task.Owner{Replica: "b", Epoch: 2})
}

// A replica restarted with the same id claims its tasks again at a new
// epoch: the previous process, paused rather than dead, stores nothing.
func TestRestartWithTheSameIDFencesThePreviousProcess(t *testing.T) {
	testPausedOwner(t, func(t *testing.T, st task.Store, execs map[string]task.Executor) *engine {
		return replicaEngine(t, st, "a", time.Hour, nil, execs, nil)
	}, task.Owner{Replica: "a", Epoch: 2})
}

// testPausedOwner runs a task on replica "a" whose attempt pauses, has
// takeOver start the engine that claims it (with execs), and checks that
// the paused attempt's outcome, reported while the new owner's resumed
// attempt runs (the task's state unchanged: only the fence refuses it), is
// neither stored nor acknowledged, and that the new owner finishes the
// task.
func testPausedOwner(t *testing.T, takeOver func(t *testing.T, st task.Store, execs map[string]task.Executor) *engine, want task.Owner) {
	st, _ := twoReplicas(t)
	var rs runs
	started, release := make(chan task.Run, 1), make(chan struct{})
	var acked atomic.Bool
	paused := func(ctx context.Context, r task.Run) task.Result {
		started <- r
		select { // paused, then resumed: its context never ends (unless the test fails)
		case <-release:
		case <-ctx.Done():
		}
		return task.Result{Message: "late", AfterCommit: func() { acked.Store(true) }}
	}
	logs := &syncLog{}
	old := replicaEngine(t, st, "a", time.Hour, logs, map[string]task.Executor{"a": recordOn(&rs, "old", paused)}, nil)
	created, err := old.Submit(context.Background(), plan(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	receive(t, started, "the attempt on the old owner")
	resumed, finish := make(chan task.Run, 1), make(chan struct{})
	next := takeOver(t, st, map[string]task.Executor{"a": recordOn(&rs, "new", func(ctx context.Context, r task.Run) task.Result {
		resumed <- r
		select {
		case <-finish:
		case <-ctx.Done():
		}
		return task.Result{Message: "on new"}
	})})
	if r := receive(t, resumed, "the attempt resumed on the new owner"); !r.Resumed {
		t.Fatal("the new owner's attempt is not marked resumed")
	}
	close(release)
	waitLogged(t, logs, "task taken over by another replica")
	old.Close() // waits for the attempt
	if acked.Load() {
		t.Fatal("the old owner acknowledged an outcome it did not store")
	}
	now, err := st.GetTask(context.Background(), created.ID)
	if err != nil || now.Owner != want || now.Subtasks[0].Status != task.SubtaskRunning || now.Subtasks[0].Message != "" {
		t.Fatalf("the old owner's outcome was stored: %+v %v", now, err)
	}
	close(finish)
	got := waitFinal(t, next, created.ID)
	if got.Status != task.StatusSuccessful || got.Subtasks[0].Message != "on new" || got.Owner != want {
		t.Fatalf("task %+v", got)
	}
	if runs := rs.String(); runs != "old:a new:a:resumed" {
		t.Fatalf("runs %q", runs)
	}
	if n := logs.count("task taken over by another replica"); n != 1 {
		t.Fatalf("%d drop log lines", n)
	}
}

// wire makes each engine's OnChange the other's Changed, as the routing
// layer does between replicas.
type wire struct {
	mu    sync.Mutex
	peers []*engine
}

func (w *wire) from(i int) func([]int64) {
	return func(ids []int64) {
		w.mu.Lock()
		var peers []*engine
		for j, p := range w.peers {
			if j != i && p != nil {
				peers = append(peers, p)
			}
		}
		w.mu.Unlock()
		for _, p := range peers {
			p.Changed(ids)
		}
	}
}

func (w *wire) set(es ...*engine) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.peers = es
}

// An operator's operation on b for a task a runs (a live) hands the task
// over to b, which applies it; a, told of the change, stops its attempt
// (cause ErrNotOwner) without storing anything.
func TestOperationElsewhereHandsTheTaskOver(t *testing.T) {
	st, _ := twoReplicas(t)
	var rs runs
	var w wire
	startedA, startedB := make(chan task.Run, 1), make(chan task.Run, 1)
	causeA := make(chan error, 1)
	onA := func(ctx context.Context, r task.Run) task.Result {
		startedA <- r
		<-ctx.Done()
		causeA <- context.Cause(ctx)
		return task.Result{Err: context.Cause(ctx)}
	}
	a := replicaEngine(t, st, "a", time.Hour, nil, map[string]task.Executor{"a": recordOn(&rs, "a", onA)}, w.from(0))
	b := replicaEngine(t, st, "b", time.Hour, nil, map[string]task.Executor{"a": recordOn(&rs, "b", blockUntilDone(startedB))}, w.from(1))
	w.set(a, b)
	created, err := a.Submit(context.Background(), plan(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	receive(t, startedA, "the attempt on a")
	// An operation the task's state refuses claims nothing.
	if _, err := b.RetryTask(manager, created.ID); err == nil {
		t.Fatal("retrying a running task")
	}
	if now, _ := st.GetTask(context.Background(), created.ID); now.Owner != created.Owner {
		t.Fatalf("a refused operation claimed the task: %+v", now.Owner)
	}
	canceled, err := b.CancelSubtask(manager, created.ID, created.Subtasks[0].ID)
	if err != nil {
		t.Fatal(err)
	}
	if canceled.Owner != (task.Owner{Replica: "b", Epoch: 2}) || canceled.Subtasks[0].Status != task.SubtaskCanceling {
		t.Fatalf("after the cancel on b: %+v", canceled)
	}
	if cause := receive(t, causeA, "a's attempt stopped"); !errors.Is(cause, task.ErrNotOwner) {
		t.Fatalf("a's attempt stopped with %v, want ErrNotOwner", cause)
	}
	if r := receive(t, startedB, "the attempt resumed on b"); !r.Resumed {
		t.Fatal("b's attempt is not marked resumed")
	}
	got := waitFinal(t, a, created.ID) // watched on a, run on b
	if got.Status != task.StatusFailed || got.Subtasks[0].Operation != task.OpCancel {
		t.Fatalf("task %+v", got)
	}
	// Retry through a: handed back.
	if _, err := a.RetrySubtask(manager, created.ID, created.Subtasks[0].ID); err != nil {
		t.Fatal(err)
	}
	receive(t, startedA, "the retry on a")
	if now, _ := st.GetTask(context.Background(), created.ID); now.Owner != (task.Owner{Replica: "a", Epoch: 3}) {
		t.Fatalf("after the retry on a: %+v", now.Owner)
	}
}

// A watcher on b of a task a runs is woken by a's change through Changed,
// well before its 5 s safety re-read.
func TestChangedWakesAWatcherOnAnotherReplica(t *testing.T) {
	st, _ := twoReplicas(t)
	var w wire
	started, release := make(chan task.Run, 1), make(chan struct{})
	wait := func(ctx context.Context, r task.Run) task.Result {
		started <- r
		select {
		case <-release:
		case <-ctx.Done():
		}
		return task.Result{Message: "done"}
	}
	a := replicaEngine(t, st, "a", time.Hour, nil, map[string]task.Executor{"a": execFunc(wait)}, w.from(0))
	b := replicaEngine(t, st, "b", time.Hour, nil, map[string]task.Executor{}, w.from(1))
	w.set(a, b)
	created, err := a.Submit(context.Background(), plan(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	receive(t, started, "the attempt on a")
	ctx, cancel := context.WithTimeout(viewer, 3*time.Second)
	defer cancel()
	seen := make(chan *task.Task, 10)
	done := make(chan error, 1)
	go func() { done <- b.WatchTask(ctx, created.ID, func(tk *task.Task) error { seen <- tk; return nil }) }()
	if first := receive(t, seen, "the watch's first send"); first.Status != task.StatusRunning {
		t.Fatalf("first %+v", first)
	}
	began := time.Now()
	close(release)
	if err := receive(t, done, "the watch's end"); err != nil {
		t.Fatalf("watch on b: %v", err)
	}
	if took := time.Since(began); took > 2*time.Second {
		t.Fatalf("the watcher on b took %s", took)
	}
}

// countingStore counts the engine's calls of its store.
type countingStore struct {
	task.Store
	calls atomic.Int64
}

func (c *countingStore) OrphanedTasks(ctx context.Context, replica string, deadAfter time.Duration, limit int) ([]task.OwnedTask, error) {
	c.calls.Add(1)
	return c.Store.OrphanedTasks(ctx, replica, deadAfter, limit)
}

func (c *countingStore) GetTask(ctx context.Context, id int64) (*task.Task, error) {
	c.calls.Add(1)
	return c.Store.GetTask(ctx, id)
}

func (c *countingStore) OwnedTasks(ctx context.Context, replica string) ([]task.OwnedTask, error) {
	c.calls.Add(1)
	return c.Store.OwnedTasks(ctx, replica)
}

func (c *countingStore) ListTasks(ctx context.Context, q task.ListQuery) (task.Page, error) {
	c.calls.Add(1)
	return c.Store.ListTasks(ctx, q)
}

// An idle engine's queries: one per sweep (with the registry's heartbeat,
// one UPDATE every 2 s, an idle replica makes 0.7 queries a second at the
// defaults).
func TestIdleEngineQueriesOncePerSweep(t *testing.T) {
	if task.DefaultSweepInterval < 5*time.Second {
		t.Fatalf("DefaultSweepInterval %s", task.DefaultSweepInterval)
	}
	dir := t.TempDir()
	st, reg := openStore(t, dir), openRegistry(t, dir)
	reg.beat("a")
	c := &countingStore{Store: st}
	replicaEngine(t, c, "a", 50*time.Millisecond, nil, map[string]task.Executor{}, nil)
	base := c.calls.Load()
	time.Sleep(525 * time.Millisecond)
	if n := c.calls.Load() - base; n < 8 || n > 11 {
		t.Fatalf("%d queries in 10 sweeps", n)
	}
}
