package store_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"agentplane/server/internal/auth"
	"agentplane/server/internal/errs"
	"agentplane/server/internal/host"
	"agentplane/server/internal/store"
	"agentplane/server/internal/task"
)

func open(t *testing.T, dir string) *store.Store {
	t.Helper()
	s, err := store.OpenTest(t, dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func plan(hostID int64) task.Plan {
	return task.Plan{
		Task: task.Task{Name: "t", Type: task.TypeManual, Operation: task.OpExecute, Status: task.StatusRunning,
			Creator: "admin", HostID: hostID, TaskDefinitionID: -1, StartTime: time.Now(),
			Context: task.Context{ListMap: map[string][]string{}, StringMap: map[string]string{"host_id": "1"}, ParallelIdx: -1}},
		Edges:     [][2]int{{0, 1}},
		Resources: []task.Resource{{Kind: host.ResourceKind, ID: hostID}},
	}
}

func withSubtasks(p task.Plan) task.Plan {
	p.Task.Subtasks = []task.Subtask{
		{Name: "first", ClassName: "a", Operation: task.OpExecute, Status: task.SubtaskReady, SeriesID: 1, Timeout: time.Minute, RunTime: 1, HostID: p.Task.HostID},
		{Name: "second", ClassName: "b", Operation: task.OpExecute, Status: task.SubtaskPending, SeriesID: 0, Timeout: 10 * time.Minute, RunTime: 1, HostID: p.Task.HostID},
	}
	return p
}

func TestTaskRoundTripAndDurability(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	s := open(t, dir)
	h, err := s.RegisterHost(ctx, host.Host{Name: "h1", InnerIP: "10.0.0.1"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	created, _, err := s.CreateTask(ctx, withSubtasks(plan(h.ID)))
	if err != nil {
		t.Fatal(err)
	}
	first, second := created.Subtasks[0], created.Subtasks[1]
	if second.ID >= first.ID {
		t.Errorf("ids follow series order: first (series 1) %d, second (series 0) %d", first.ID, second.ID)
	}
	if len(first.Downstreams) != 1 || first.Downstreams[0] != second.ID || second.Upstreams[0] != first.ID {
		t.Errorf("edges: %+v", created.Subtasks)
	}
	s.Close()

	s2 := open(t, dir)
	got, err := s2.GetTask(ctx, created.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.Name != "t" || got.Context.StringMap["host_id"] != "1" || len(got.Subtasks) != 2 ||
		got.Subtasks[0].Name != "first" || got.Subtasks[1].Timeout != 10*time.Minute {
		t.Fatalf("after reopen: %+v", got)
	}
	hh, err := s2.GetHost(ctx, h.ID)
	if err != nil || hh.OpTaskID != created.ID {
		t.Fatalf("host lock after reopen: %+v %v", hh, err)
	}
}

func TestCreateTaskLockConflictAndMissingHost(t *testing.T) {
	ctx := context.Background()
	s := open(t, t.TempDir())
	h, _ := s.RegisterHost(ctx, host.Host{Name: "h1"}, time.Now())
	first, _, err := s.CreateTask(ctx, withSubtasks(plan(h.ID)))
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = s.CreateTask(ctx, withSubtasks(plan(h.ID)))
	if !errors.Is(err, errs.ErrConflict) {
		t.Fatalf("second task on a locked host: %v, want ErrConflict", err)
	}
	if want := "task 1"; first.ID != 1 || !strings.Contains(err.Error(), want) {
		t.Fatalf("conflict %q should name %q", err, want)
	}
	page, _ := s.ListTasks(ctx, task.ListQuery{})
	if page.Total != 1 {
		t.Fatalf("a refused task was stored: %d tasks", page.Total)
	}
	if _, _, err := s.CreateTask(ctx, withSubtasks(plan(999))); !errors.Is(err, errs.ErrNotFound) {
		t.Fatalf("task on a missing host: %v, want ErrNotFound", err)
	}
}

func TestUpdateTaskIsCompareAndSwap(t *testing.T) {
	ctx := context.Background()
	s := open(t, t.TempDir())
	h, _ := s.RegisterHost(ctx, host.Host{Name: "h1"}, time.Now())
	before, _, err := s.CreateTask(ctx, withSubtasks(plan(h.ID)))
	if err != nil {
		t.Fatal(err)
	}
	after := *before
	after.Subtasks = append([]task.Subtask(nil), before.Subtasks...)
	after.Subtasks[0].Status = task.SubtaskRunning
	if err := s.UpdateTask(ctx, before, &after, nil); err != nil {
		t.Fatal(err)
	}
	// A second writer that read the old state loses.
	stale := *before
	stale.Subtasks = append([]task.Subtask(nil), before.Subtasks...)
	stale.Subtasks[0].Status = task.SubtaskFailed
	if err := s.UpdateTask(ctx, before, &stale, nil); !errors.Is(err, errs.ErrConflict) {
		t.Fatalf("stale update: %v, want ErrConflict", err)
	}
	got, _ := s.GetTask(ctx, before.ID)
	if got.Subtasks[0].Status != task.SubtaskRunning {
		t.Fatalf("stale update was written: %s", got.Subtasks[0].Status)
	}
	// Reaching a final status releases the host.
	final := *got
	final.Subtasks = append([]task.Subtask(nil), got.Subtasks...)
	final.Status, final.EndTime = task.StatusFailed, time.Now()
	if err := s.UpdateTask(ctx, got, &final, nil); err != nil {
		t.Fatal(err)
	}
	if hh, _ := s.GetHost(ctx, h.ID); hh.OpTaskID != 0 {
		t.Fatalf("host still locked by %d after the task failed", hh.OpTaskID)
	}
}

func TestRegisterHostByName(t *testing.T) {
	ctx := context.Background()
	s := open(t, t.TempDir())
	a, err := s.RegisterHost(ctx, host.Host{Name: "h1", InnerIP: "10.0.0.1"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	b, err := s.RegisterHost(ctx, host.Host{Name: "h1", InnerIP: "10.0.0.2", Processes: []host.Process{{PID: 7, Name: "ocp_agentd"}}}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if a.ID != b.ID || b.InnerIP != "10.0.0.2" || b.Status != host.StatusOnline || len(b.Processes) != 1 {
		t.Fatalf("re-registration: %+v then %+v", a, b)
	}
	c, _ := s.RegisterHost(ctx, host.Host{Name: "h2"}, time.Now())
	if c.ID == a.ID {
		t.Fatal("two names share an id")
	}
	if _, err := s.RegisterHost(ctx, host.Host{}, time.Now()); !errors.Is(err, errs.ErrInvalidArgument) {
		t.Fatalf("no name: %v", err)
	}
	page, err := s.ListHosts(ctx, host.ListQuery{Page: 2, Size: 1})
	if err != nil || page.Total != 2 || len(page.Hosts) != 1 || page.Hosts[0].ID != c.ID {
		t.Fatalf("page 2: %+v %v", page, err)
	}
	if err := s.MarkAllOffline(ctx); err != nil {
		t.Fatal(err)
	}
	if hh, _ := s.GetHost(ctx, a.ID); hh.Status != host.StatusOffline {
		t.Fatalf("status %s after MarkAllOffline", hh.Status)
	}
}

func TestUsers(t *testing.T) {
	ctx := context.Background()
	s := open(t, t.TempDir())
	u, err := s.CreateUser(ctx, auth.User{Username: "ops", PasswordHash: "$2a$hash", Roles: []auth.Role{auth.RoleHostManager}})
	if err != nil || u.ID == 0 {
		t.Fatalf("%+v %v", u, err)
	}
	if _, err := s.CreateUser(ctx, auth.User{Username: "ops", PasswordHash: "x"}); !errors.Is(err, errs.ErrConflict) {
		t.Fatalf("duplicate: %v", err)
	}
	got, err := s.UserByName(ctx, "ops")
	if err != nil || got.PasswordHash != "$2a$hash" || len(got.Roles) != 1 || got.Roles[0] != auth.RoleHostManager {
		t.Fatalf("%+v %v", got, err)
	}
	if _, err := s.UserByName(ctx, "nobody"); !errors.Is(err, errs.ErrNotFound) {
		t.Fatalf("missing: %v", err)
	}
	if n, _ := s.CountUsers(ctx); n != 1 {
		t.Fatalf("count %d", n)
	}
}

func TestSubtaskLogInOrder(t *testing.T) {
	ctx := context.Background()
	s := open(t, t.TempDir())
	tk := newTask(t, s)
	id := tk.Subtasks[0].ID
	for i, l := range []string{"header", "found ocp_agentd", "exited"} {
		if err := s.AppendSubtaskLog(ctx, id, task.LogLine{RunTime: 1, Time: time.Now(), Line: l}); err != nil {
			t.Fatal(i, err)
		}
	}
	lines, _, err := s.SubtaskLog(ctx, tk.ID, id, 0, 100, 1<<20)
	if err != nil || len(lines) != 3 || lines[0].Line != "header" || lines[2].Line != "exited" {
		t.Fatalf("%+v %v", lines, err)
	}
}

func TestOpenRefusesADataDirInUse(t *testing.T) {
	store.SkipOnMySQL(t, "the data dir's flock")
	dir := t.TempDir()
	s := open(t, dir)
	if _, err := store.Open(context.Background(), dir); !errors.Is(err, errs.ErrConflict) ||
		!strings.Contains(err.Error(), "in use by another agentplane-server") {
		t.Fatalf("second open: %v, want a conflict", err)
	}
	s.Close()
	again, err := store.Open(context.Background(), dir)
	if err != nil {
		t.Fatalf("open after close: %v", err)
	}
	again.Close()
}
