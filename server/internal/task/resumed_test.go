package task_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"agentplane/server/internal/agentop"
	"agentplane/server/internal/task"
)

// An attempt an engine starts is not resumed; one it found running in the
// store (started before a restart) is, and a later attempt it starts after
// the restart is not.
func TestRunSaysWhetherTheAttemptIsResumed(t *testing.T) {
	st := openStore(t, t.TempDir())
	started := make(chan task.Run, 1)
	block := execFunc(func(ctx context.Context, r task.Run) task.Result {
		started <- r
		<-ctx.Done()
		return task.Result{Err: ctx.Err()}
	})
	e1 := serve(task.New(task.Config{Store: st, Executors: map[string]task.Executor{"a": execFunc(ok), "b": block}, Executor: "x", Log: zerolog.Nop(), Holds: agentop.Holds}))
	if err := e1.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	created, err := e1.Submit(context.Background(), plan(time.Minute, time.Minute, time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if first := <-started; first.Resumed {
		t.Fatal("a fresh attempt is marked resumed")
	}
	e1.Close()

	var mu sync.Mutex
	resumed := map[string]bool{}
	record := func(name string) task.Executor {
		return execFunc(func(_ context.Context, r task.Run) task.Result {
			mu.Lock()
			resumed[name] = r.Resumed
			mu.Unlock()
			return task.Result{Message: "done"}
		})
	}
	e2 := newEngine(t, st, map[string]task.Executor{"a": execFunc(ok), "b": record("b"), "c": record("c")})
	if got := waitFinal(t, e2, created.ID); got.Status != task.StatusSuccessful {
		t.Fatalf("task %+v", got)
	}
	mu.Lock()
	defer mu.Unlock()
	if !resumed["b"] || resumed["c"] {
		t.Fatalf("resumed %v, want b (running across the restart) only", resumed)
	}
}
