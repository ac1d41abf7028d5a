package task_test

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"agentplane/server/internal/agentop"
	"agentplane/server/internal/auth"
	"agentplane/server/internal/host"
	"agentplane/server/internal/store"
	"agentplane/server/internal/task"
)

// execFunc adapts a function to task.Executor.
type execFunc func(ctx context.Context, r task.Run) task.Result

func (f execFunc) Execute(ctx context.Context, r task.Run) task.Result { return f(ctx, r) }

// Rollback runs the same function; r.Task.Operation says which it is.
func (f execFunc) Rollback(ctx context.Context, r task.Run) task.Result { return f(ctx, r) }

func ok(context.Context, task.Run) task.Result { return task.Result{Message: "done"} }

func openStore(t *testing.T, dir string) *store.Store {
	t.Helper()
	st, err := store.Open(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// engine is an engine and the task service over it, as the server wires
// them: tests submit to the one and operate through the other.
type engine struct {
	*task.Engine
	*task.Service
}

func serve(e *task.Engine) *engine { return &engine{e, task.NewService(e)} }

func newEngine(t *testing.T, st *store.Store, execs map[string]task.Executor) *engine {
	t.Helper()
	e := serve(task.New(task.Config{Store: st, Executors: execs, Executor: "127.0.0.1", Log: zerolog.Nop(), Holds: agentop.Holds}))
	if err := e.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	return e
}

// plan is a chain a → b → c on host 0 with the given timeouts.
func plan(timeouts ...time.Duration) task.Plan {
	p := task.Plan{Task: task.Task{Name: "test", Type: task.TypeManual, Creator: "admin", TaskDefinitionID: -1,
		Context: task.Context{ListMap: map[string][]string{}, StringMap: map[string]string{}, ParallelIdx: -1}}}
	for i, to := range timeouts {
		name := string(rune('a' + i))
		p.Task.Subtasks = append(p.Task.Subtasks, task.Subtask{Name: name, ClassName: name, SeriesID: i, Timeout: to, ParallelIdx: -1})
		if i > 0 {
			p.Edges = append(p.Edges, [2]int{i - 1, i})
		}
	}
	return p
}

var viewer = auth.WithPrincipal(context.Background(), auth.Principal{Username: "v", Roles: []auth.Role{auth.RoleTaskViewer}})

// waitFinal watches the task until it is final, with a deadline.
func waitFinal(t *testing.T, e *engine, id int64) *task.Task {
	t.Helper()
	ctx, cancel := context.WithTimeout(viewer, 20*time.Second)
	defer cancel()
	var last *task.Task
	if err := e.WatchTask(ctx, id, func(tk *task.Task) error { last = tk; return nil }); err != nil {
		t.Fatalf("watching task %d: %v (last %+v)", id, err, last)
	}
	return last
}

func TestEngineRunsTheChainInOrder(t *testing.T) {
	st := openStore(t, t.TempDir())
	var mu sync.Mutex
	var order []string
	rec := execFunc(func(_ context.Context, r task.Run) task.Result {
		mu.Lock()
		order = append(order, r.Subtask.Name)
		mu.Unlock()
		r.Log("working on " + r.Subtask.Name)
		return task.Result{Message: "did " + r.Subtask.Name}
	})
	e := newEngine(t, st, map[string]task.Executor{"a": rec, "b": rec, "c": rec})
	created, err := e.Submit(context.Background(), plan(time.Minute, time.Minute, time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if created.Status != task.StatusRunning || created.Subtasks[0].Status != task.SubtaskReady ||
		created.Subtasks[1].Status != task.SubtaskPending {
		t.Fatalf("created task: %+v", created)
	}
	got := waitFinal(t, e, created.ID)
	if got.Status != task.StatusSuccessful {
		t.Fatalf("status %s, want SUCCESSFUL: %+v", got.Status, got)
	}
	if strings.Join(order, "") != "abc" {
		t.Fatalf("order %v", order)
	}
	for _, s := range got.Subtasks {
		if s.Status != task.SubtaskSuccessful || s.Message != "did "+s.Name || s.StartTime.IsZero() || s.EndTime.IsZero() {
			t.Errorf("subtask %+v", s)
		}
	}
	if got.Subtasks[1].Upstreams[0] != got.Subtasks[0].ID || got.Subtasks[0].Downstreams[0] != got.Subtasks[1].ID {
		t.Errorf("edges: %+v", got.Subtasks)
	}
	lines, _, err := st.SubtaskLog(context.Background(), got.ID, got.Subtasks[1].ID, 0, 100, 1<<20)
	if err != nil || len(lines) != 2 || !strings.HasPrefix(lines[0].Line, "############{EXECUTE}{") ||
		lines[1].Line != "working on b" {
		t.Fatalf("log %+v, %v", lines, err)
	}
}

func TestEngineFailureStopsTheChain(t *testing.T) {
	st := openStore(t, t.TempDir())
	var ranC atomic.Bool
	e := newEngine(t, st, map[string]task.Executor{
		"a": execFunc(ok),
		"b": execFunc(func(context.Context, task.Run) task.Result {
			return task.Result{Err: errors.New("host 7: agentd not connected")}
		}),
		"c": execFunc(func(context.Context, task.Run) task.Result { ranC.Store(true); return task.Result{} }),
	})
	created, err := e.Submit(context.Background(), plan(time.Minute, time.Minute, time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	got := waitFinal(t, e, created.ID)
	if got.Status != task.StatusFailed || got.Subtasks[1].Status != task.SubtaskFailed ||
		got.Subtasks[1].Message != "host 7: agentd not connected" || got.Subtasks[2].Status != task.SubtaskPending {
		t.Fatalf("task %+v", got)
	}
	if ranC.Load() {
		t.Fatal("c ran after b failed")
	}
}

func TestEngineTimeoutStopsTheWork(t *testing.T) {
	st := openStore(t, t.TempDir())
	stopped := make(chan struct{})
	e := newEngine(t, st, map[string]task.Executor{
		"a": execFunc(func(ctx context.Context, _ task.Run) task.Result {
			<-ctx.Done() // the work stops when the deadline passes
			close(stopped)
			return task.Result{Err: errors.New("stop interrupted")}
		}),
	})
	created, err := e.Submit(context.Background(), plan(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	got := waitFinal(t, e, created.ID)
	select {
	case <-stopped:
	default:
		t.Fatal("the executor's context was not ended")
	}
	if got.Status != task.StatusFailed || !strings.Contains(got.Subtasks[0].Message, "timed out after 1s") {
		t.Fatalf("task %+v", got)
	}
}

func TestEngineResumesAfterRestart(t *testing.T) {
	dir := t.TempDir()
	st := openStore(t, dir)
	started := make(chan task.Run, 1)
	block := execFunc(func(ctx context.Context, r task.Run) task.Result {
		started <- r
		<-ctx.Done()
		if !errors.Is(context.Cause(ctx), task.ErrShutdown) {
			t.Errorf("cause %v, want ErrShutdown", context.Cause(ctx))
		}
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
	first := <-started
	e1.Close() // a crash at this point leaves b RUNNING in the store

	mid, err := st.GetTask(context.Background(), created.ID)
	if err != nil || mid.Subtasks[1].Status != task.SubtaskRunning {
		t.Fatalf("after close: %+v %v", mid, err)
	}
	var attempts []int
	var mu sync.Mutex
	e2 := newEngine(t, st, map[string]task.Executor{"a": execFunc(ok), "c": execFunc(ok),
		"b": execFunc(func(_ context.Context, r task.Run) task.Result {
			mu.Lock()
			attempts = append(attempts, r.Subtask.RunTime)
			mu.Unlock()
			return task.Result{Message: "resumed"}
		})})
	got := waitFinal(t, e2, created.ID)
	if got.Status != task.StatusSuccessful {
		t.Fatalf("task %+v", got)
	}
	if len(attempts) != 1 || attempts[0] != first.Subtask.RunTime {
		t.Fatalf("resumed attempts %v, want [%d]", attempts, first.Subtask.RunTime)
	}
}

func TestEngineHostLockConflict(t *testing.T) {
	st := openStore(t, t.TempDir())
	h, err := st.RegisterHost(context.Background(), host.Host{Name: "h1"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	e := newEngine(t, st, map[string]task.Executor{"a": execFunc(func(context.Context, task.Run) task.Result {
		<-release
		return task.Result{}
	})})
	p := plan(time.Minute)
	p.Resources = []task.Resource{agentop.HostResource(h.ID)}
	first, err := e.Submit(context.Background(), p)
	if err != nil {
		t.Fatal(err)
	}
	_, err = e.Submit(context.Background(), p)
	if err == nil || !strings.Contains(err.Error(), "task "+strconv.FormatInt(first.ID, 10)) {
		t.Fatalf("second submit: %v, want a conflict naming task %d", err, first.ID)
	}
	close(release)
	waitFinal(t, e, first.ID)
	if _, err := e.Submit(context.Background(), p); err != nil {
		t.Fatalf("submit after the first ended: %v", err)
	}
}
