package task_test

import (
	"context"
	"testing"
	"time"

	"agentplane/server/internal/task"
)

// Owned counts the tasks the engine runs: one while its subtask works,
// none once it is final.
func TestEngineOwned(t *testing.T) {
	st := openStore(t, t.TempDir())
	started, release := make(chan struct{}, 1), make(chan struct{})
	block := execFunc(func(ctx context.Context, _ task.Run) task.Result {
		started <- struct{}{}
		select {
		case <-release:
			return task.Result{}
		case <-ctx.Done():
			return task.Result{Err: ctx.Err()}
		}
	})
	e := newEngine(t, st, map[string]task.Executor{"a": block})
	if n := e.Owned(); n != 0 {
		t.Fatalf("Owned before any task = %d", n)
	}
	created, err := e.Submit(context.Background(), plan(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-started:
	case <-time.After(20 * time.Second):
		t.Fatal("the subtask did not start")
	}
	if n := e.Owned(); n != 1 {
		t.Errorf("Owned while the task runs = %d, want 1", n)
	}
	close(release)
	if got := waitFinal(t, e, created.ID); got.Status != task.StatusSuccessful {
		t.Fatalf("task ended %s", got.Status)
	}
	deadline := time.Now().Add(10 * time.Second)
	for e.Owned() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("Owned after the task ended = %d, want 0", e.Owned())
		}
		time.Sleep(10 * time.Millisecond)
	}
}
