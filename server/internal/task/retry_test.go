package task_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"agentplane/server/internal/agentop"
	"agentplane/server/internal/errs"
	"agentplane/server/internal/store"
	"agentplane/server/internal/task"
)

// failingStore fails UpdateTask, as a full disk does, while failing says so.
type failingStore struct {
	*store.Store
	mu      sync.Mutex
	failing func() bool // nil: never
	failed  atomic.Int64
}

func (f *failingStore) fail(cond func() bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failing = cond
}

func (f *failingStore) UpdateTask(ctx context.Context, before, after *task.Task, take []task.Resource, logs ...task.SubtaskLogLine) error {
	f.mu.Lock()
	failing := f.failing
	f.mu.Unlock()
	if failing != nil && failing() {
		f.failed.Add(1)
		return &errs.StoreError{Full: true, Err: errors.New("database or disk is full (13)")}
	}
	return f.Store.UpdateTask(ctx, before, after, take, logs...)
}

func newFailingEngine(t *testing.T, execs map[string]task.Executor) (*engine, *failingStore) {
	t.Helper()
	fs := &failingStore{Store: openStore(t, t.TempDir())}
	e := serve(task.New(task.Config{Store: fs, Executors: execs, Executor: "127.0.0.1", Log: testLog(t), Holds: agentop.Holds}))
	if err := e.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	return e, fs
}

// TestOutcomeRetriedUntilStored: an attempt's outcome whose store fails
// (three times) is stored on a retry; its AfterCommit (the agent's ack)
// runs once, only then; the task goes on to the end.
func TestOutcomeRetriedUntilStored(t *testing.T) {
	var fs *failingStore
	var acks atomic.Int64
	first := execFunc(func(_ context.Context, r task.Run) task.Result {
		left := atomic.Int64{}
		left.Store(3)
		fs.fail(func() bool { return left.Add(-1) >= 0 })
		return task.Result{Message: "done", AfterCommit: func() {
			if fs.failed.Load() < 3 {
				t.Errorf("acknowledged after %d failed stores, before the outcome was stored", fs.failed.Load())
			}
			acks.Add(1)
		}}
	})
	var e *engine
	e, fs = newFailingEngine(t, map[string]task.Executor{"a": first, "b": execFunc(ok), "c": execFunc(ok)})
	got := runPlan(t, e, plan(time.Minute, time.Minute, time.Minute), 10*time.Second)
	if got.Status != task.StatusSuccessful {
		t.Fatalf("task %s, want SUCCESSFUL: %+v", got.Status, got.Subtasks)
	}
	if n := fs.failed.Load(); n != 3 {
		t.Errorf("%d failed stores, want 3", n)
	}
	// The attempt acknowledges once its outcome is stored, which may be
	// after the next subtasks ran and the task ended: Close waits for it.
	e.Close()
	if n := acks.Load(); n != 1 {
		t.Errorf("AfterCommit ran %d times, want once", n)
	}
}

// TestTimeoutStoredAfterWritesFail: a subtask times out while every write
// fails; once writes work again it ends FAILED with the timeout, not
// RUNNING for ever.
func TestTimeoutStoredAfterWritesFail(t *testing.T) {
	var fs *failingStore
	var until atomic.Int64
	wait := execFunc(func(ctx context.Context, r task.Run) task.Result {
		until.Store(time.Now().Add(3 * time.Second).UnixNano()) // past the 1 s timeout
		fs.fail(func() bool { return time.Now().UnixNano() < until.Load() })
		<-ctx.Done()
		return task.Result{Err: context.Cause(ctx)}
	})
	var e *engine
	e, fs = newFailingEngine(t, map[string]task.Executor{"a": wait, "b": execFunc(ok), "c": execFunc(ok)})
	got := runPlan(t, e, plan(time.Second, time.Minute, time.Minute), 15*time.Second)
	a := got.Subtasks[0]
	if got.Status != task.StatusFailed || a.Status != task.SubtaskFailed || !strings.Contains(a.Message, "timed out") {
		t.Fatalf("task %s, subtask a %s %q; want both FAILED, timed out", got.Status, a.Status, a.Message)
	}
	if fs.failed.Load() == 0 {
		t.Fatal("no write failed: nothing was tested")
	}
}

// TestStartRetriedUntilStored: the step that starts a new task fails to
// store; it is retried, and the task runs.
func TestStartRetriedUntilStored(t *testing.T) {
	e, fs := newFailingEngine(t, map[string]task.Executor{"a": execFunc(ok), "b": execFunc(ok), "c": execFunc(ok)})
	left := atomic.Int64{}
	left.Store(2)
	fs.fail(func() bool { return left.Add(-1) >= 0 })
	if got := runPlan(t, e, plan(time.Minute, time.Minute, time.Minute), 10*time.Second); got.Status != task.StatusSuccessful {
		t.Fatalf("task %s, want SUCCESSFUL", got.Status)
	}
}

// runPlan submits p and watches its task until it is final, failing the
// test after timeout.
func runPlan(t *testing.T, e *engine, p task.Plan, timeout time.Duration) *task.Task {
	t.Helper()
	created, err := e.Submit(context.Background(), p)
	if err != nil {
		t.Fatal(err)
	}
	id := created.ID
	ctx, cancel := context.WithTimeout(viewer, timeout)
	defer cancel()
	var last *task.Task
	if err := e.WatchTask(ctx, id, func(tk *task.Task) error { last = tk; return nil }); err != nil {
		var st []string
		if last != nil {
			for _, s := range last.Subtasks {
				st = append(st, s.Name+":"+string(s.Status))
			}
		}
		t.Fatalf("task %d not final within %s: %v (last %v)", id, timeout, err, st)
	}
	return last
}

func testLog(t *testing.T) zerolog.Logger { return zerolog.New(zerolog.NewTestWriter(t)) }
