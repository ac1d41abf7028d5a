package console

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"agentplane/server/internal/auth"
	"agentplane/server/internal/errs"
	"agentplane/server/internal/host"
	"agentplane/server/internal/task"
)

// fakeUsers checks passwords against a map; every password is "pw-<name>".
type fakeUsers map[string][]auth.Role

func (u fakeUsers) Authenticate(_ context.Context, name, pw string) (auth.Principal, error) {
	roles, ok := u[name]
	if !ok || pw != "pw-"+name {
		return auth.Principal{}, fmt.Errorf("invalid username or password: %w", errs.ErrUnauthenticated)
	}
	return auth.Principal{Username: name, Roles: roles}, nil
}

var users = fakeUsers{
	"admin":  {auth.RoleAdmin},
	"viewer": {auth.RoleHostViewer, auth.RoleTaskViewer},
}

// fakeDomain stands for agentop.Service and task.Service: it checks the
// roles as they do and records the calls that passed.
type fakeDomain struct {
	mu    sync.Mutex
	calls []string

	// versions are what WatchTask sends, in order, then it returns.
	versions []*task.Task
	// logs is the stored log; logChanged receives when it grows.
	logs []string
}

func (d *fakeDomain) called(what string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.calls = append(d.calls, what)
}

func (d *fakeDomain) Calls() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.calls...)
}

func (d *fakeDomain) hostOp(ctx context.Context, op string, id int64) (*task.Task, error) {
	if err := auth.Require(ctx, auth.RoleHostManager); err != nil {
		return nil, err
	}
	if id == 404 {
		return nil, fmt.Errorf("host 404: %w", errs.ErrNotFound)
	}
	d.called(fmt.Sprintf("%s %d", op, id))
	return &task.Task{ID: 77}, nil
}

func (d *fakeDomain) StopAgent(ctx context.Context, id int64) (*task.Task, error) {
	return d.hostOp(ctx, "stop", id)
}

func (d *fakeDomain) StartAgent(ctx context.Context, id int64) (*task.Task, error) {
	return d.hostOp(ctx, "start", id)
}

func (d *fakeDomain) RestartAgent(ctx context.Context, id int64) (*task.Task, error) {
	return d.hostOp(ctx, "restart", id)
}

func (d *fakeDomain) BatchStopAgents(ctx context.Context, ids []int64) (*task.Task, error) {
	return nil, errs.ErrInvalidArgument
}

func (d *fakeDomain) BatchStartAgents(ctx context.Context, ids []int64) (*task.Task, error) {
	return nil, errs.ErrInvalidArgument
}

func (d *fakeDomain) BatchRestartAgents(ctx context.Context, ids []int64) (*task.Task, error) {
	return nil, errs.ErrInvalidArgument
}

func (d *fakeDomain) GetHost(ctx context.Context, id int64) (*host.Host, error) {
	return nil, errs.ErrNotFound
}

func (d *fakeDomain) ListHosts(ctx context.Context, q host.ListQuery) (host.Page, error) {
	if err := auth.Require(ctx, auth.RoleHostViewer); err != nil {
		return host.Page{}, err
	}
	return host.Page{Total: 1, Hosts: []host.Host{{
		ID: 2, Name: "web-<1>", InnerIP: "10.0.0.2", Status: host.StatusOnline, AgentStatus: host.AgentStarted,
		LastSeen: time.Date(2026, 12, 3, 9, 0, 0, 0, time.UTC),
	}}}, nil
}

func (d *fakeDomain) GetHostAgent(ctx context.Context, id int64) (*host.Agent, error) {
	return nil, errs.ErrNotFound
}

func (d *fakeDomain) GetTask(ctx context.Context, id int64) (*task.Task, error) {
	if err := auth.Require(ctx, auth.RoleTaskViewer); err != nil {
		return nil, err
	}
	if id != 77 {
		return nil, fmt.Errorf("task %d: %w", id, errs.ErrNotFound)
	}
	return stopTask(task.SubtaskRunning), nil
}

func (d *fakeDomain) ListTasks(ctx context.Context, q task.ListQuery) (task.Page, error) {
	if err := auth.Require(ctx, auth.RoleTaskViewer); err != nil {
		return task.Page{}, err
	}
	d.called(fmt.Sprintf("list name=%s status=%s type=%s host=%d sort=%v page=%d size=%d",
		q.Name, q.Status, q.Type, q.HostID, q.Sort, q.Page, q.Size))
	return task.Page{Total: 1, Tasks: []task.Task{*stopTask(task.SubtaskSuccessful)}}, nil
}

func (d *fakeDomain) SubtaskLog(ctx context.Context, id, sid int64, q task.LogQuery) (task.LogPage, error) {
	if err := auth.Require(ctx, auth.RoleTaskViewer); err != nil {
		return task.LogPage{}, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	p := task.LogPage{Next: q.After}
	for i := q.After; i < int64(len(d.logs)); i++ {
		p.Text += d.logs[i] + "\n"
		p.Lines++
		p.Next = i + 1
	}
	return p, nil
}

func (d *fakeDomain) taskOp(ctx context.Context, op string, id, sid int64) (*task.Task, error) {
	if err := auth.Require(ctx, auth.RoleTaskManager); err != nil {
		return nil, err
	}
	d.called(fmt.Sprintf("%s %d %d", op, id, sid))
	return &task.Task{ID: id}, nil
}

func (d *fakeDomain) RetryTask(ctx context.Context, id int64) (*task.Task, error) {
	return d.taskOp(ctx, "retry", id, 0)
}

func (d *fakeDomain) RollbackTask(ctx context.Context, id int64) (*task.Task, error) {
	return d.taskOp(ctx, "rollback", id, 0)
}

func (d *fakeDomain) RetrySubtask(ctx context.Context, id, sid int64) (*task.Task, error) {
	return d.taskOp(ctx, "retry", id, sid)
}

func (d *fakeDomain) SkipSubtask(ctx context.Context, id, sid int64) (*task.Task, error) {
	return d.taskOp(ctx, "skip", id, sid)
}

func (d *fakeDomain) CancelSubtask(ctx context.Context, id, sid int64) (*task.Task, error) {
	return d.taskOp(ctx, "cancel", id, sid)
}

func (d *fakeDomain) WatchTask(ctx context.Context, id int64, send func(*task.Task) error) error {
	if err := auth.Require(ctx, auth.RoleTaskViewer); err != nil {
		return err
	}
	if id != 77 {
		return fmt.Errorf("task %d: %w", id, errs.ErrNotFound)
	}
	for _, t := range d.versions {
		if err := send(t); err != nil {
			return err
		}
	}
	if len(d.versions) == 0 {
		<-ctx.Done()
		return ctx.Err()
	}
	return nil
}

// stopTask is a stop task whose Stop subtask is in status st.
func stopTask(st task.SubtaskStatus) *task.Task {
	t := &task.Task{ID: 77, Name: "Stop OCP agent", Status: task.StatusRunning, Creator: "admin", HostID: 2}
	for i, name := range []string{"Prepare stop OCP agent", "Stop all OCP agent processes", "Finish OCP agent operation"} {
		s := task.Subtask{ID: int64(103 - i), TaskID: 77, Name: name, Status: task.SubtaskPending, ParallelIdx: -1, HostID: 2, RunTime: 1}
		if i > 0 {
			s.Upstreams = []int64{int64(104 - i)}
		}
		t.Subtasks = append(t.Subtasks, s)
	}
	t.Subtasks[0].Status, t.Subtasks[1].Status = task.SubtaskSuccessful, st
	if st == task.SubtaskSuccessful {
		t.Subtasks[2].Status, t.Status = task.SubtaskSuccessful, task.StatusSuccessful
	}
	return t
}

// has reports whether s contains every part.
func has(s string, parts ...string) bool {
	for _, p := range parts {
		if !strings.Contains(s, p) {
			return false
		}
	}
	return true
}
