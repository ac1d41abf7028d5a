package task_test

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"agentplane/server/internal/agentop"
	"agentplane/server/internal/auth"
	"agentplane/server/internal/errs"
	"agentplane/server/internal/host"
	"agentplane/server/internal/task"
)

var manager = auth.WithPrincipal(context.Background(), auth.Principal{Username: "m", Roles: []auth.Role{auth.RoleTaskManager}})

// recorder is a fake executor for every class: it records each call (Execute
// or Rollback, subtask, operation, attempt) and answers with the class's
// function, or success when there is none.
type recorder struct {
	mu    sync.Mutex
	calls []string
	do    map[string]func(ctx context.Context, r task.Run, rollback bool) task.Result
}

type recorded struct {
	rec   *recorder
	class string
}

func (x recorded) Execute(ctx context.Context, r task.Run) task.Result {
	return x.rec.run(ctx, x.class, r, false)
}
func (x recorded) Rollback(ctx context.Context, r task.Run) task.Result {
	return x.rec.run(ctx, x.class, r, true)
}

func (rec *recorder) run(ctx context.Context, class string, r task.Run, rollback bool) task.Result {
	method := "Execute"
	if rollback {
		method = "Rollback"
	}
	rec.mu.Lock()
	rec.calls = append(rec.calls, fmt.Sprintf("%s(%s,%s,%d)", method, r.Subtask.Name, r.Subtask.Operation, r.Subtask.RunTime))
	do := rec.do[class]
	rec.mu.Unlock()
	if do == nil {
		return task.Result{Message: "done"}
	}
	return do(ctx, r, rollback)
}

// executors returns the recorder as the executor of every class named.
func (rec *recorder) executors(classes ...string) map[string]task.Executor {
	m := map[string]task.Executor{}
	for _, c := range classes {
		m[c] = recorded{rec, c}
	}
	return m
}

func (rec *recorder) String() string {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	return strings.Join(rec.calls, " ")
}

// failFirst fails the first attempt (forward) and succeeds after.
func failFirst(_ context.Context, r task.Run, rollback bool) task.Result {
	if !rollback && r.Subtask.RunTime == 1 {
		return task.Result{Err: errors.New("first attempt fails")}
	}
	return task.Result{Message: "done"}
}

func wantStatus(t *testing.T, tk *task.Task, status task.Status, subtasks string) {
	t.Helper()
	var parts []string
	for _, st := range tk.Subtasks {
		parts = append(parts, fmt.Sprintf("%s/%s/%d", st.Status, st.Operation, st.RunTime))
	}
	if got := strings.Join(parts, " "); tk.Status != status || got != subtasks {
		t.Fatalf("task %s [%s], want %s [%s]", tk.Status, got, status, subtasks)
	}
}

// await receives from ch, failing the test after a deadline.
func await[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(20 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

func submit(t *testing.T, e *engine, p task.Plan) *task.Task {
	t.Helper()
	created, err := e.Submit(context.Background(), p)
	if err != nil {
		t.Fatal(err)
	}
	return created
}

func TestEngineRetry(t *testing.T) {
	tests := []struct {
		name  string
		retry func(e *engine, tk *task.Task) (*task.Task, error)
		op    task.Operation // the task's operation after
	}{
		{"task", func(e *engine, tk *task.Task) (*task.Task, error) { return e.RetryTask(manager, tk.ID) }, task.OpRetry},
		{"subtask", func(e *engine, tk *task.Task) (*task.Task, error) {
			return e.RetrySubtask(manager, tk.ID, tk.Subtasks[1].ID)
		}, task.OpRetry},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := &recorder{do: map[string]func(context.Context, task.Run, bool) task.Result{"b": failFirst}}
			e := newEngine(t, openStore(t, t.TempDir()), rec.executors("a", "b", "c"))
			created := submit(t, e, plan(time.Minute, time.Minute, time.Minute))
			failed := waitFinal(t, e, created.ID)
			wantStatus(t, failed, task.StatusFailed, "SUCCESSFUL/EXECUTE/1 FAILED/EXECUTE/1 PENDING/EXECUTE/1")

			retried, err := tt.retry(e, failed)
			if err != nil {
				t.Fatal(err)
			}
			if retried.Status != task.StatusRunning || retried.Operation != tt.op || !retried.EndTime.IsZero() {
				t.Fatalf("after retry: task %s op %s end %v", retried.Status, retried.Operation, retried.EndTime)
			}
			if b := retried.Subtasks[1]; b.Status != task.SubtaskRunning || b.RunTime != 2 || b.Operation != task.OpRetry {
				t.Fatalf("after retry: b %+v", b)
			}
			got := waitFinal(t, e, created.ID)
			wantStatus(t, got, task.StatusSuccessful, "SUCCESSFUL/EXECUTE/1 SUCCESSFUL/RETRY/2 SUCCESSFUL/EXECUTE/1")
			if got.Operation != tt.op {
				t.Errorf("task operation %s, want %s", got.Operation, tt.op)
			}
			if want := "Execute(a,EXECUTE,1) Execute(b,EXECUTE,1) Execute(b,RETRY,2) Execute(c,EXECUTE,1)"; rec.String() != want {
				t.Fatalf("calls %s\nwant  %s", rec, want)
			}
			if _, err := tt.retry(e, got); !errors.Is(err, errs.ErrFailedPrecondition) {
				t.Fatalf("retry of a SUCCESSFUL task: %v, want ErrFailedPrecondition", err)
			}
		})
	}
}

func TestEngineRollback(t *testing.T) {
	rec := &recorder{do: map[string]func(context.Context, task.Run, bool) task.Result{
		"c": func(_ context.Context, _ task.Run, rollback bool) task.Result {
			if !rollback {
				return task.Result{Err: errors.New("c fails")}
			}
			return task.Result{Message: "undone"}
		},
	}}
	e := newEngine(t, openStore(t, t.TempDir()), rec.executors("a", "b", "c", "d"))
	created := submit(t, e, plan(time.Minute, time.Minute, time.Minute, time.Minute))
	waitFinal(t, e, created.ID)

	rolling, err := e.RollbackTask(manager, created.ID)
	if err != nil {
		t.Fatal(err)
	}
	// Only c, the last that ran, starts; b and a wait for it.
	wantStatus(t, rolling, task.StatusRunning, "READY/ROLLBACK/2 READY/ROLLBACK/2 RUNNING/ROLLBACK/2 PENDING/EXECUTE/1")
	got := waitFinal(t, e, created.ID)
	wantStatus(t, got, task.StatusSuccessful, "PENDING/ROLLBACK/2 PENDING/ROLLBACK/2 PENDING/ROLLBACK/2 PENDING/EXECUTE/1")
	if got.Operation != task.OpRollback || got.EndTime.IsZero() {
		t.Fatalf("task op %s end %v", got.Operation, got.EndTime)
	}
	want := "Execute(a,EXECUTE,1) Execute(b,EXECUTE,1) Execute(c,EXECUTE,1) " +
		"Rollback(c,ROLLBACK,2) Rollback(b,ROLLBACK,2) Rollback(a,ROLLBACK,2)"
	if rec.String() != want {
		t.Fatalf("calls %s\nwant  %s", rec, want)
	}
	if _, err := e.RollbackTask(manager, created.ID); !errors.Is(err, errs.ErrFailedPrecondition) {
		t.Fatalf("rollback of a rolled back task: %v, want ErrFailedPrecondition", err)
	}
}

func TestEngineRollbackProhibited(t *testing.T) {
	rec := &recorder{do: map[string]func(context.Context, task.Run, bool) task.Result{
		"a": func(context.Context, task.Run, bool) task.Result { return task.Result{ProhibitRollback: true} },
		"b": func(context.Context, task.Run, bool) task.Result { return task.Result{Err: errors.New("b fails")} },
	}}
	e := newEngine(t, openStore(t, t.TempDir()), rec.executors("a", "b", "ok"))

	byWork := submit(t, e, plan(time.Minute, time.Minute))
	p := plan(time.Minute, time.Minute)
	p.Task.Context.StringMap["prohibit_rollback"] = "true"
	p.Task.Subtasks[0].ClassName = "ok"
	byContext := submit(t, e, p)
	for id, why := range map[int64]string{byWork.ID: "prohibits rollback", byContext.ID: "context prohibits rollback"} {
		before := waitFinal(t, e, id)
		_, err := e.RollbackTask(manager, id)
		if !errors.Is(err, errs.ErrRollbackProhibited) || !strings.Contains(err.Error(), "task "+strconv.FormatInt(id, 10)) ||
			!strings.Contains(err.Error(), why) {
			t.Fatalf("rollback of task %d: %v, want ErrRollbackProhibited naming it and %q", id, err, why)
		}
		after, err := e.GetTask(viewer, id)
		if err != nil || after.Operation != before.Operation || after.Status != task.StatusFailed {
			t.Fatalf("task %d after a refused rollback: %+v %v", id, after, err)
		}
	}
}

func TestEngineCancelSubtask(t *testing.T) {
	started := make(chan struct{})
	causes := make(chan error, 1)
	rec := &recorder{do: map[string]func(context.Context, task.Run, bool) task.Result{
		"a": func(ctx context.Context, _ task.Run, _ bool) task.Result {
			close(started)
			<-ctx.Done()
			causes <- context.Cause(ctx)
			return task.Result{Err: ctx.Err()}
		},
	}}
	e := newEngine(t, openStore(t, t.TempDir()), rec.executors("a", "b"))
	created := submit(t, e, plan(time.Minute, time.Minute))
	a, b := created.Subtasks[0].ID, created.Subtasks[1].ID
	await(t, started, "the attempt to start")

	if _, err := e.CancelSubtask(manager, created.ID, b); !errors.Is(err, errs.ErrFailedPrecondition) ||
		!strings.Contains(err.Error(), "PENDING") {
		t.Fatalf("cancel of a PENDING subtask: %v, want ErrFailedPrecondition", err)
	}
	canceling, err := e.CancelSubtask(manager, created.ID, a)
	if err != nil {
		t.Fatal(err)
	}
	if st := canceling.Subtask(a); st.Status != task.SubtaskCanceling || st.Operation != task.OpCancel {
		t.Fatalf("after cancel: %+v", st)
	}
	got := waitFinal(t, e, created.ID)
	if cause := await(t, causes, "the attempt to end"); !errors.Is(cause, task.ErrCanceled) {
		t.Fatalf("executor's context cause %v, want ErrCanceled", cause)
	}
	wantStatus(t, got, task.StatusFailed, "FAILED/CANCEL/1 PENDING/EXECUTE/1")
	if msg := got.Subtask(a).Message; !strings.Contains(msg, task.ErrCanceled.Error()) {
		t.Errorf("message %q does not say it was canceled", msg)
	}
	if rec.String() != "Execute(a,EXECUTE,1)" {
		t.Errorf("calls %s", rec)
	}
	if _, err := e.CancelSubtask(manager, created.ID, a); !errors.Is(err, errs.ErrFailedPrecondition) {
		t.Fatalf("cancel of a FAILED subtask: %v, want ErrFailedPrecondition", err)
	}
	if _, err := e.CancelSubtask(manager, created.ID, b+100); !errors.Is(err, errs.ErrNotFound) {
		t.Fatalf("cancel of an unknown subtask: %v, want ErrNotFound", err)
	}
	if _, err := e.CancelSubtask(manager, created.ID+100, a); !errors.Is(err, errs.ErrNotFound) {
		t.Fatalf("cancel in an unknown task: %v, want ErrNotFound", err)
	}
	log, err := e.SubtaskLog(viewer, created.ID, a, task.LogQuery{})
	if err != nil || !strings.Contains(log.Text, "############{CANCEL}{") {
		t.Fatalf("log %q, %v; want a CANCEL header", log.Text, err)
	}
}

func TestEngineSkipSubtask(t *testing.T) {
	rec := &recorder{do: map[string]func(context.Context, task.Run, bool) task.Result{
		"b": func(context.Context, task.Run, bool) task.Result { return task.Result{Err: errors.New("b fails")} },
	}}
	e := newEngine(t, openStore(t, t.TempDir()), rec.executors("a", "b", "c"))
	created := submit(t, e, plan(time.Minute, time.Minute, time.Minute))
	waitFinal(t, e, created.ID)
	if _, err := e.SkipSubtask(manager, created.ID, created.Subtasks[0].ID); !errors.Is(err, errs.ErrFailedPrecondition) {
		t.Fatalf("skip of a SUCCESSFUL subtask: %v, want ErrFailedPrecondition", err)
	}
	if _, err := e.SkipSubtask(manager, created.ID, created.Subtasks[1].ID); err != nil {
		t.Fatal(err)
	}
	got := waitFinal(t, e, created.ID)
	wantStatus(t, got, task.StatusSuccessful, "SUCCESSFUL/EXECUTE/1 SUCCESSFUL/SKIP/1 SUCCESSFUL/EXECUTE/1")
	if got.Subtasks[1].Message != "skipped by an operator" {
		t.Errorf("skipped subtask's message %q", got.Subtasks[1].Message)
	}
	if want := "Execute(a,EXECUTE,1) Execute(b,EXECUTE,1) Execute(c,EXECUTE,1)"; rec.String() != want {
		t.Fatalf("calls %s\nwant  %s", rec, want)
	}
}

func TestEngineOperationsNeedTaskManager(t *testing.T) {
	rec := &recorder{do: map[string]func(context.Context, task.Run, bool) task.Result{
		"a": func(context.Context, task.Run, bool) task.Result { return task.Result{Err: errors.New("a fails")} },
	}}
	e := newEngine(t, openStore(t, t.TempDir()), rec.executors("a"))
	created := submit(t, e, plan(time.Minute))
	waitFinal(t, e, created.ID)
	id, sid := created.ID, created.Subtasks[0].ID
	ops := map[string]func(ctx context.Context) error{
		"retry task":     func(ctx context.Context) error { _, err := e.RetryTask(ctx, id); return err },
		"rollback task":  func(ctx context.Context) error { _, err := e.RollbackTask(ctx, id); return err },
		"retry subtask":  func(ctx context.Context) error { _, err := e.RetrySubtask(ctx, id, sid); return err },
		"skip subtask":   func(ctx context.Context) error { _, err := e.SkipSubtask(ctx, id, sid); return err },
		"cancel subtask": func(ctx context.Context) error { _, err := e.CancelSubtask(ctx, id, sid); return err },
	}
	for name, op := range ops {
		t.Run(name, func(t *testing.T) {
			if err := op(viewer); !errors.Is(err, errs.ErrPermissionDenied) {
				t.Errorf("viewer: %v, want ErrPermissionDenied", err)
			}
			if err := op(context.Background()); !errors.Is(err, errs.ErrUnauthenticated) {
				t.Errorf("anonymous: %v, want ErrUnauthenticated", err)
			}
		})
	}
	if _, err := e.SubtaskLog(context.Background(), id, sid, task.LogQuery{}); !errors.Is(err, errs.ErrUnauthenticated) {
		t.Errorf("anonymous log: %v, want ErrUnauthenticated", err)
	}
	if _, err := e.ListTasks(context.Background(), task.ListQuery{}); !errors.Is(err, errs.ErrUnauthenticated) {
		t.Errorf("anonymous list: %v, want ErrUnauthenticated", err)
	}
	if got, err := e.GetTask(viewer, id); err != nil || got.Status != task.StatusFailed || got.Subtasks[0].RunTime != 1 {
		t.Fatalf("refused operations changed the task: %+v %v", got, err)
	}
	if rec.String() != "Execute(a,EXECUTE,1)" {
		t.Errorf("calls %s", rec)
	}
}

func TestEngineSubtaskLog(t *testing.T) {
	logged := make(chan struct{})
	release := make(chan struct{})
	rec := &recorder{do: map[string]func(context.Context, task.Run, bool) task.Result{
		"a": func(ctx context.Context, r task.Run, _ bool) task.Result {
			if r.Subtask.RunTime == 1 {
				r.Log("first try")
				return task.Result{Err: errors.New("first attempt fails")}
			}
			r.Log("second try")
			close(logged)
			select {
			case <-release:
			case <-ctx.Done():
			}
			return task.Result{}
		},
	}}
	e := newEngine(t, openStore(t, t.TempDir()), rec.executors("a"))
	created := submit(t, e, plan(time.Minute))
	id, sid := created.ID, created.Subtasks[0].ID
	waitFinal(t, e, id)
	if _, err := e.RetryTask(manager, id); err != nil {
		t.Fatal(err)
	}
	await(t, logged, "attempt 2 to log")
	page, err := e.SubtaskLog(viewer, id, sid, task.LogQuery{}) // while attempt 2 runs
	close(release)
	if err != nil {
		t.Fatal(err)
	}
	const at = `\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}(Z|[+-]\d\d:\d\d)`
	want := regexp.MustCompile(`^` +
		`############\{EXECUTE\}\{` + at + `\}############\n` +
		at + ` first try\n` +
		at + ` failed: first attempt fails\n` + // the engine ends a failed attempt's log with why
		`############\{RETRY\}\{` + at + `\}############\n` +
		at + ` second try\n$`)
	if !want.MatchString(page.Text) || page.Lines != 5 || page.More {
		t.Fatalf("log (%d lines, more %v):\n%s", page.Lines, page.More, page.Text)
	}
	waitFinal(t, e, id)

	// Page by page, one line each: the same text.
	var paged strings.Builder
	for q := (task.LogQuery{Limit: 1}); ; {
		p, err := e.SubtaskLog(viewer, id, sid, q)
		if err != nil || p.Lines > 1 {
			t.Fatalf("page after %d: %+v %v", q.After, p, err)
		}
		paged.WriteString(p.Text)
		if !p.More {
			break
		}
		q.After = p.Next
	}
	if full, _ := e.SubtaskLog(viewer, id, sid, task.LogQuery{}); paged.String() != full.Text {
		t.Fatalf("paged:\n%s\nwhole:\n%s", paged.String(), full.Text)
	}
	for _, q := range []task.LogQuery{{After: -1}, {Limit: -1}, {Limit: task.MaxLogPageLines + 1}} {
		if _, err := e.SubtaskLog(viewer, id, sid, q); !errors.Is(err, errs.ErrInvalidArgument) {
			t.Errorf("query %+v: %v, want ErrInvalidArgument", q, err)
		}
	}

	for _, tt := range []struct {
		name    string
		task    int64
		subtask int64
		want    error
	}{
		{"unknown subtask", id, sid + 100, errs.ErrNotFound},
		{"unknown task", id + 100, sid, errs.ErrNotFound},
		{"no subtask", id, 0, errs.ErrInvalidArgument},
		{"bad task id", 0, sid, errs.ErrInvalidArgument},
	} {
		if _, err := e.SubtaskLog(viewer, tt.task, tt.subtask, task.LogQuery{}); !errors.Is(err, tt.want) {
			t.Errorf("%s: %v, want %v", tt.name, err, tt.want)
		}
	}
}

func TestEngineIdempotentSubmit(t *testing.T) {
	st := openStore(t, t.TempDir())
	e := newEngine(t, st, (&recorder{}).executors("a"))
	key := func(k string) context.Context {
		ctx, err := task.WithIdempotencyKey(context.Background(), k)
		if err != nil {
			t.Fatal(err)
		}
		return ctx
	}
	named := func(name, creator string) task.Plan {
		p := plan(time.Minute)
		p.Task.Name, p.Task.Creator = name, creator
		return p
	}
	count := func(name string) int64 {
		t.Helper()
		page, err := e.ListTasks(viewer, task.ListQuery{Name: name})
		if err != nil {
			t.Fatal(err)
		}
		return page.Total
	}

	first, err := e.Submit(key("k1"), named("once", "admin"))
	if err != nil {
		t.Fatal(err)
	}
	again, err := e.Submit(key("k1"), named("once", "admin"))
	if err != nil || again.ID != first.ID {
		t.Fatalf("repeat: task %+v, %v; want task %d", again, err, first.ID)
	}
	if n := count("once"); n != 1 {
		t.Fatalf("%d tasks stored, want 1", n)
	}
	if _, err := e.Submit(key("k1"), named("other", "admin")); !errors.Is(err, errs.ErrConflict) {
		t.Fatalf("same key, another plan: %v, want ErrConflict", err)
	}
	if n := count("other"); n != 0 {
		t.Fatalf("%d conflicting tasks stored", n)
	}
	if theirs, err := e.Submit(key("k1"), named("once", "someone")); err != nil || theirs.ID == first.ID {
		t.Fatalf("another caller's key: task %+v, %v; want a new task", theirs, err)
	}

	// Fifty concurrent requests with one key (and one plan value) make one task.
	p := named("burst", "admin")
	ids := make([]int64, 50)
	errc := make([]error, 50)
	var wg sync.WaitGroup
	for i := range ids {
		wg.Go(func() {
			tk, err := e.Submit(key("k2"), p)
			if err == nil {
				ids[i] = tk.ID
			}
			errc[i] = err
		})
	}
	wg.Wait()
	if err := errors.Join(errc...); err != nil {
		t.Fatal(err)
	}
	if slices.Min(ids) != slices.Max(ids) {
		t.Fatalf("ids %v, want one", ids)
	}
	if n := count("burst"); n != 1 {
		t.Fatalf("%d tasks stored, want 1", n)
	}
	waitFinal(t, e, ids[0])

	for _, k := range []string{"", strings.Repeat("k", task.MaxIdempotencyKey+1), "a\nb", "ключ"} {
		if _, err := task.WithIdempotencyKey(context.Background(), k); !errors.Is(err, errs.ErrInvalidArgument) {
			t.Errorf("key %q: %v, want ErrInvalidArgument", k, err)
		}
	}
}

func TestEngineRetryRetakesTheHostLock(t *testing.T) {
	st := openStore(t, t.TempDir())
	h, err := st.RegisterHost(context.Background(), host.Host{Name: "h1"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	holder := func() int64 {
		t.Helper()
		got, err := st.GetHost(context.Background(), h.ID)
		if err != nil {
			t.Fatal(err)
		}
		return got.OpTaskID
	}
	release := make(chan struct{})
	retrying := make(chan struct{})
	rec := &recorder{do: map[string]func(context.Context, task.Run, bool) task.Result{
		"a": func(ctx context.Context, r task.Run, _ bool) task.Result {
			if r.Subtask.RunTime == 1 {
				return task.Result{Err: errors.New("first attempt fails")}
			}
			select {
			case retrying <- struct{}{}:
			case <-ctx.Done():
				return task.Result{Err: ctx.Err()}
			}
			select {
			case <-retrying:
			case <-ctx.Done():
			}
			return task.Result{}
		},
		"other": func(ctx context.Context, _ task.Run, _ bool) task.Result {
			select {
			case <-release:
			case <-ctx.Done():
			}
			return task.Result{}
		},
	}}
	e := newEngine(t, st, rec.executors("a", "other"))
	onHost := func(class string) task.Plan {
		p := plan(time.Minute)
		p.Task.Name, p.Task.HostID, p.Resources = class, h.ID, []task.Resource{agentop.HostResource(h.ID)}
		p.Task.Subtasks[0].ClassName, p.Task.Subtasks[0].HostID = class, h.ID
		return p
	}
	first := submit(t, e, onHost("a"))
	waitFinal(t, e, first.ID)
	if id := holder(); id != 0 {
		t.Fatalf("host held by task %d after the task failed", id)
	}
	other := submit(t, e, onHost("other"))
	for name, op := range map[string]func() (*task.Task, error){
		"retry":    func() (*task.Task, error) { return e.RetryTask(manager, first.ID) },
		"rollback": func() (*task.Task, error) { return e.RollbackTask(manager, first.ID) },
	} {
		_, err := op()
		if !errors.Is(err, errs.ErrConflict) || !strings.Contains(err.Error(), "task "+strconv.FormatInt(other.ID, 10)) {
			t.Fatalf("%s while task %d holds the host: %v, want ErrConflict naming it", name, other.ID, err)
		}
	}
	if got, err := e.GetTask(viewer, first.ID); err != nil || got.Status != task.StatusFailed || got.Subtasks[0].RunTime != 1 {
		t.Fatalf("task %d after refused operations: %+v %v", first.ID, got, err)
	}
	close(release)
	waitFinal(t, e, other.ID)

	if _, err := e.RetryTask(manager, first.ID); err != nil {
		t.Fatal(err)
	}
	await(t, retrying, "attempt 2") // attempt 2 runs: the retried task holds the host again
	if id := holder(); id != first.ID {
		t.Errorf("host held by task %d during the retry, want %d", id, first.ID)
	}
	if _, err := e.Submit(context.Background(), onHost("other")); !errors.Is(err, errs.ErrConflict) {
		t.Errorf("submit during the retry: %v, want ErrConflict", err)
	}
	select {
	case retrying <- struct{}{}:
	case <-time.After(20 * time.Second):
		t.Fatal("attempt 2 did not wait")
	}
	if got := waitFinal(t, e, first.ID); got.Status != task.StatusSuccessful {
		t.Fatalf("retried task %s", got.Status)
	}
	if id := holder(); id != 0 {
		t.Fatalf("host held by task %d after the retry", id)
	}
}

func TestEngineCancelingSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	st := openStore(t, dir)
	started := make(chan struct{})
	release := make(chan struct{})
	// The first engine's work ignores the cancel (an agent that does not
	// answer), so the subtask is still CANCELING when the engine stops.
	stubborn := &recorder{do: map[string]func(context.Context, task.Run, bool) task.Result{
		"a": func(context.Context, task.Run, bool) task.Result { close(started); <-release; return task.Result{} },
	}}
	e1 := serve(task.New(task.Config{Store: st, Executors: stubborn.executors("a", "b"), Executor: "x", Log: zerolog.Nop(), Holds: agentop.Holds}))
	t.Cleanup(e1.Close)
	releaseOnce := sync.OnceFunc(func() { close(release) })
	t.Cleanup(releaseOnce) // runs first: lets e1.Close return should the test fail
	if err := e1.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	created := submit(t, e1, plan(time.Minute, time.Minute))
	await(t, started, "the attempt to start")
	if _, err := e1.CancelSubtask(manager, created.ID, created.Subtasks[0].ID); err != nil {
		t.Fatal(err)
	}
	watched := make(chan error, 1)
	go func() { watched <- e1.WatchTask(viewer, created.ID, func(*task.Task) error { return nil }) }()
	closed := make(chan struct{})
	go func() { e1.Close(); close(closed) }()
	if err := await(t, watched, "the watch to end"); !errors.Is(err, errs.ErrUnavailable) { // the engine is shutting down
		t.Fatalf("watch: %v, want ErrUnavailable", err)
	}
	releaseOnce() // the work returns after the shutdown began: its outcome is not stored
	await(t, closed, "the engine to close")
	mid, err := st.GetTask(context.Background(), created.ID)
	if err != nil {
		t.Fatal(err)
	}
	wantStatus(t, mid, task.StatusRunning, "CANCELING/CANCEL/1 PENDING/EXECUTE/1")

	type entry struct {
		done  bool
		cause error
	}
	entries := make(chan entry, 1)
	rec := &recorder{do: map[string]func(context.Context, task.Run, bool) task.Result{
		"a": func(ctx context.Context, _ task.Run, _ bool) task.Result {
			entries <- entry{ctx.Err() != nil, context.Cause(ctx)}
			<-ctx.Done()
			return task.Result{Err: ctx.Err()}
		},
	}}
	e2 := newEngine(t, st, rec.executors("a", "b"))
	got := waitFinal(t, e2, created.ID)
	wantStatus(t, got, task.StatusFailed, "FAILED/CANCEL/1 PENDING/EXECUTE/1")
	if en := await(t, entries, "the resumed attempt"); !en.done || !errors.Is(en.cause, task.ErrCanceled) {
		t.Fatalf("resumed attempt: context done %v, cause %v; want done with ErrCanceled at once", en.done, en.cause)
	}
	if rec.String() != "Execute(a,CANCEL,1)" {
		t.Fatalf("calls %s", rec)
	}
}

func TestEngineListTasks(t *testing.T) {
	st := openStore(t, t.TempDir())
	rec := &recorder{do: map[string]func(context.Context, task.Run, bool) task.Result{
		"bad": func(context.Context, task.Run, bool) task.Result { return task.Result{Err: errors.New("fails")} },
	}}
	e := newEngine(t, st, rec.executors("ok", "bad"))
	type spec struct {
		name   string
		typ    task.Type
		class  string
		hostID int64   // the task's
		hosts  []int64 // its subtasks'
	}
	specs := []spec{
		{"Stop agent", task.TypeManual, "ok", 101, []int64{101}},
		{"stop_agent", task.TypeManual, "bad", 0, nil},
		{"100% stop", task.TypeScheduled, "ok", 0, nil},
		{"Restart agents", task.TypeSysScheduled, "ok", 0, []int64{101, 102}}, // a batch
		{"stopXagent", task.TypeManual, "ok", 0, nil},
		{"100 stop", task.TypeManual, "ok", 0, nil},
		{"wow!", task.TypeManual, "ok", 0, nil},
	}
	ids := map[string]int64{}
	var all []int64
	for _, s := range specs {
		p := plan()
		p.Task.Name, p.Task.Type, p.Task.HostID = s.name, s.typ, s.hostID
		hosts := s.hosts
		if len(hosts) == 0 {
			hosts = []int64{0}
		}
		for i, h := range hosts {
			p.Task.Subtasks = append(p.Task.Subtasks, task.Subtask{Name: "s" + strconv.Itoa(i), ClassName: s.class,
				Timeout: time.Minute, HostID: h, ParallelIdx: i})
		}
		created := submit(t, e, p)
		waitFinal(t, e, created.ID)
		ids[s.name] = created.ID
		all = append(all, created.ID)
	}
	idsOf := func(names ...string) []int64 {
		var out []int64
		for _, n := range names {
			out = append(out, ids[n])
		}
		return out
	}
	reversed := slices.Clone(all)
	slices.Reverse(reversed)
	byNameDesc := slices.Clone(specs)
	slices.SortFunc(byNameDesc, func(a, b spec) int { return strings.Compare(b.name, a.name) })
	var nameDesc []int64
	for _, s := range byNameDesc {
		nameDesc = append(nameDesc, ids[s.name])
	}

	tests := []struct {
		name  string
		q     task.ListQuery
		want  []int64
		total int64
	}{
		{"all, newest first", task.ListQuery{}, reversed, 7},
		{"name, case-insensitive", task.ListQuery{Name: "STOP", Sort: task.Sort{Field: task.SortID}},
			idsOf("Stop agent", "stop_agent", "100% stop", "stopXagent", "100 stop"), 5},
		{"underscore is literal", task.ListQuery{Name: "p_a"}, idsOf("stop_agent"), 1},
		{"lone underscore", task.ListQuery{Name: "_"}, idsOf("stop_agent"), 1},
		{"percent is literal", task.ListQuery{Name: "0%"}, idsOf("100% stop"), 1},
		{"lone percent", task.ListQuery{Name: "%"}, idsOf("100% stop"), 1},
		{"escape character is literal", task.ListQuery{Name: "w!"}, idsOf("wow!"), 1},
		{"status", task.ListQuery{Status: task.StatusFailed}, idsOf("stop_agent"), 1},
		{"name and status", task.ListQuery{Name: "stop", Status: task.StatusSuccessful, Sort: task.Sort{Field: task.SortID}},
			idsOf("Stop agent", "100% stop", "stopXagent", "100 stop"), 4},
		{"type", task.ListQuery{Type: task.TypeScheduled}, idsOf("100% stop"), 1},
		{"system type", task.ListQuery{Type: task.TypeSysScheduled}, idsOf("Restart agents"), 1},
		{"host, directly or through a subtask", task.ListQuery{HostID: 101, Sort: task.Sort{Field: task.SortID}},
			idsOf("Stop agent", "Restart agents"), 2},
		{"host of a batch subtask", task.ListQuery{HostID: 102}, idsOf("Restart agents"), 1},
		{"host of nothing", task.ListQuery{HostID: 103}, nil, 0},
		{"id ascending", task.ListQuery{Sort: task.Sort{Field: task.SortID}}, all, 7},
		{"name descending", task.ListQuery{Sort: task.Sort{Field: task.SortName, Desc: true}}, nameDesc, 7},
		{"second page", task.ListQuery{Sort: task.Sort{Field: task.SortID}, Page: 2, Size: 3}, all[3:6], 7},
		{"last page", task.ListQuery{Sort: task.Sort{Field: task.SortID}, Page: 3, Size: 3}, all[6:], 7},
		{"past the end", task.ListQuery{Page: 9, Size: 3}, nil, 7},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			page, err := e.ListTasks(viewer, tt.q)
			if err != nil {
				t.Fatal(err)
			}
			var got []int64
			for _, tk := range page.Tasks {
				got = append(got, tk.ID)
				if len(tk.Subtasks) == 0 {
					t.Errorf("task %d listed without its subtasks", tk.ID)
				}
			}
			if !slices.Equal(got, tt.want) || page.Total != tt.total {
				t.Fatalf("ids %v total %d, want %v total %d", got, page.Total, tt.want, tt.total)
			}
		})
	}
	for _, q := range []task.ListQuery{
		{Sort: task.Sort{Field: "color"}},
		{Sort: task.Sort{Field: "start_time"}},
		{Size: 2001},
		{Page: -1},
		{Name: strings.Repeat("x", 129)},
	} {
		if _, err := e.ListTasks(viewer, q); !errors.Is(err, errs.ErrInvalidArgument) {
			t.Errorf("query %+v: %v, want ErrInvalidArgument", q, err)
		}
	}
}
