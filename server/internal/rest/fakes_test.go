package rest

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"agentplane/server/internal/auth"
	"agentplane/server/internal/errs"
	"agentplane/server/internal/host"
	"agentplane/server/internal/task"
)

// Host ids the fake host service answers specially.
const (
	hostOK          = 2
	hostMissing     = 404
	hostBusy        = 409
	hostWrongState  = 412
	hostUnreachable = 503
	hostBroken      = 500
	hostPanics      = 666
	hostTimeout     = 504
	hostBare        = 3 // an agent with nothing known yet
	taskOK          = 30443
	hostsTotal      = 45

	// Task ids the fake task service answers specially.
	taskRunning    = 20003 // operations refused: the task is RUNNING
	taskProhibited = 20004 // rollback prohibited
	taskHostHeld   = 4090  // another task holds its host
	heldBy         = 777   // the task that holds it
	tasksTotal     = 41

	// Subtasks of specTask: subtaskFailed may be retried or skipped,
	// subtaskRunning canceled; each refuses the others.
	subtaskFailed  = 32074
	subtaskRunning = 32073
)

var start = time.Date(2021, 9, 3, 14, 27, 59, 687_000_000, time.FixedZone("CST", 8*3600))

// specTask is the task of the OCP API page's example.
func specTask() *task.Task {
	sub := func(id int64, name, class string, series int, status task.SubtaskStatus, timeout time.Duration, up, down []int64) task.Subtask {
		return task.Subtask{
			ID: id, TaskID: taskOK, Name: name, Description: name, ClassName: "com.alipay.ocp.service.task.business.obagent." + class,
			NodeType: task.NodeTypeJavaTask, Operation: task.OpExecute, Status: status, SeriesID: series,
			Upstreams: up, Downstreams: down, Timeout: timeout, RunTime: 1, ParallelIdx: -1, HostID: hostOK,
		}
	}
	return &task.Task{
		ID: taskOK, Name: "Stop OCP agent", Type: task.TypeManual, Operation: task.OpExecute, Status: task.StatusRunning,
		Creator: "admin", Executor: "10.0.0.1", HostID: hostOK, StartTime: start, TaskDefinitionID: -1,
		Context: task.Context{
			ListMap: map[string][]string{}, ParallelIdx: -1,
			StringMap: map[string]string{"prohibit_rollback": "false", "host_id": "2"},
		},
		Subtasks: []task.Subtask{
			sub(32074, "Prepare stop OCP agent", "PrepareStopOcpAgentTask", 2, task.SubtaskReady, 60*time.Second, nil, []int64{32073}),
			sub(32073, "Stop all OCP agent processes", "StopAllOcpAgentProcessesTask", 1, task.SubtaskPending, 600*time.Second, []int64{32074}, []int64{32072}),
			sub(32072, "Finish OCP agent operation", "FinishOcpAgentOperationTask", 0, task.SubtaskPending, 60*time.Second, []int64{32073}, nil),
		},
	}
}

type fakeHosts struct {
	mu        sync.Mutex
	lastQuery host.ListQuery
	lastOp    string  // the last task-creating call
	lastKey   string  // its Idempotency-Key
	lastIDs   []int64 // its host ids
}

func (f *fakeHosts) StopAgent(ctx context.Context, id int64) (*task.Task, error) {
	return f.hostOp(ctx, "Stop OCP agent", id)
}

func (f *fakeHosts) StartAgent(ctx context.Context, id int64) (*task.Task, error) {
	return f.hostOp(ctx, "Start OCP agent", id)
}

func (f *fakeHosts) RestartAgent(ctx context.Context, id int64) (*task.Task, error) {
	return f.hostOp(ctx, "Restart OCP agent", id)
}

// record remembers a task-creating call and the Idempotency-Key it carried.
func (f *fakeHosts) record(ctx context.Context, op string, ids ...int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lastOp, f.lastKey, f.lastIDs = op, task.IdempotencyKey(ctx), ids
}

func (f *fakeHosts) last() (op, key string, ids []int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.lastOp, f.lastKey, f.lastIDs
}

func (f *fakeHosts) hostOp(ctx context.Context, name string, id int64) (*task.Task, error) {
	if err := auth.Require(ctx, auth.RoleHostManager); err != nil {
		return nil, err
	}
	zerolog.Ctx(ctx).Info().Int64("host_id", id).Str("task", name).Msg("stopping agent")
	f.record(ctx, name, id)
	switch id {
	case hostOK:
		t := specTask()
		t.Name = name
		return t, nil
	case hostMissing:
		return nil, fmt.Errorf("host %d: %w", id, errs.ErrNotFound)
	case hostBusy:
		return nil, host.BusyError(id, heldBy)
	case hostWrongState:
		return nil, fmt.Errorf("host %d is deleting: %w", id, errs.ErrFailedPrecondition)
	case hostUnreachable:
		return nil, fmt.Errorf("host %d: agentd not connected: %w", id, errs.ErrUnavailable)
	case hostBroken:
		return nil, fmt.Errorf("insert into tasks: database at /secret/dsn is locked")
	case hostPanics:
		panic("boom: secret panic detail")
	case hostTimeout:
		return nil, fmt.Errorf("waiting for store: %w", context.DeadlineExceeded)
	}
	return nil, fmt.Errorf("host %d: %w", id, errs.ErrNotFound)
}

func (f *fakeHosts) BatchStopAgents(ctx context.Context, ids []int64) (*task.Task, error) {
	return f.batchOp(ctx, "Batch stop OCP agent", ids)
}

func (f *fakeHosts) BatchStartAgents(ctx context.Context, ids []int64) (*task.Task, error) {
	return f.batchOp(ctx, "Batch start OCP agent", ids)
}

func (f *fakeHosts) BatchRestartAgents(ctx context.Context, ids []int64) (*task.Task, error) {
	return f.batchOp(ctx, "Batch restart OCP agent", ids)
}

// batchOp validates as agentop.Service does, then answers as hostOp for the
// first host that is not hostOK.
func (f *fakeHosts) batchOp(ctx context.Context, name string, ids []int64) (*task.Task, error) {
	if err := auth.Require(ctx, auth.RoleHostManager); err != nil {
		return nil, err
	}
	f.record(ctx, name, ids...)
	if len(ids) == 0 {
		return nil, fmt.Errorf("hostIds: 0 hosts, must be 1..2000: %w", errs.ErrInvalidArgument)
	}
	seen := map[int64]bool{}
	for _, id := range ids {
		if seen[id] {
			return nil, fmt.Errorf("hostIds: host id %d is listed twice: %w", id, errs.ErrInvalidArgument)
		}
		seen[id] = true
	}
	for _, id := range ids {
		if id == hostBusy {
			return nil, host.BusyError(id, heldBy)
		}
		if id != hostOK && id != hostBare {
			return nil, fmt.Errorf("host %d: %w", id, errs.ErrNotFound)
		}
	}
	t := specTask()
	t.Name, t.HostID = name, 0
	t.Context.Parallel = true
	for _, id := range ids {
		t.Context.ListMap["host_ids"] = append(t.Context.ListMap["host_ids"], fmt.Sprint(id))
	}
	return t, nil
}

// agentStarted is when the running process of hostOK's agent started,
// relative to the call.
const agentStarted = 90 * time.Second

func (f *fakeHosts) GetHostAgent(ctx context.Context, id int64) (*host.Agent, error) {
	if err := auth.Require(ctx, auth.RoleHostViewer); err != nil {
		return nil, err
	}
	switch id {
	case hostOK:
		return &host.Agent{
			HostID: id, InnerIP: "10.0.0.2", InstallHome: "/home/admin/ocp_agent", Version: "4.2.1",
			Status: host.AgentStarted, LastSeen: start, CreateTime: start, UpdateTime: start,
			Processes: []host.Process{
				{PID: 4242, Name: "ocp_agentd", Exe: "/home/admin/ocp_agent/bin/ocp_agentd", User: "admin",
					Cmdline: "/home/admin/ocp_agent/bin/ocp_agentd -c conf/agentd.yaml", CreateTime: time.Now().Add(-agentStarted),
					Status: host.AgentStarted, LastActiveTime: start},
				{PID: 4243, Name: "ocp_mgragent", Exe: "/home/admin/ocp_agent/bin/ocp_mgragent", User: "admin",
					Cmdline: "/home/admin/ocp_agent/bin/ocp_mgragent", CreateTime: start.Add(-time.Hour),
					Status: host.AgentStopped, LastActiveTime: start},
			},
		}, nil
	case hostBare:
		return &host.Agent{HostID: id, InnerIP: "10.0.0.3", CreateTime: start, UpdateTime: start}, nil
	}
	return nil, fmt.Errorf("host %d: %w", id, errs.ErrNotFound)
}

func testHost(id int64) host.Host {
	return host.Host{
		ID: id, Name: fmt.Sprintf("host-%d", id), InnerIP: "10.0.0.2", MachineID: "m-1",
		Status: host.StatusOnline, AgentdVersion: "0.1.0", CreateTime: start, UpdateTime: start,
	}
}

func (f *fakeHosts) GetHost(ctx context.Context, id int64) (*host.Host, error) {
	if err := auth.Require(ctx, auth.RoleHostViewer); err != nil {
		return nil, err
	}
	if id != hostOK {
		return nil, fmt.Errorf("host %d: %w", id, errs.ErrNotFound)
	}
	h := testHost(id)
	return &h, nil
}

func (f *fakeHosts) ListHosts(ctx context.Context, q host.ListQuery) (host.Page, error) {
	if err := auth.Require(ctx, auth.RoleHostViewer); err != nil {
		return host.Page{}, err
	}
	f.mu.Lock()
	f.lastQuery = q
	f.mu.Unlock()
	var p host.Page
	p.Total = hostsTotal
	for i := (q.Page-1)*q.Size + 1; i <= min(q.Page*q.Size, hostsTotal); i++ {
		p.Hosts = append(p.Hosts, testHost(int64(i)))
	}
	return p, nil
}

func (f *fakeHosts) query() host.ListQuery {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.lastQuery
}

type fakeTasks struct {
	mu        sync.Mutex
	lastQuery task.ListQuery
}

func (f *fakeTasks) GetTask(ctx context.Context, id int64) (*task.Task, error) {
	if err := auth.Require(ctx, auth.RoleTaskViewer); err != nil {
		return nil, err
	}
	if id != taskOK {
		return nil, fmt.Errorf("task %d: %w", id, errs.ErrNotFound)
	}
	return specTask(), nil
}

func (f *fakeTasks) ListTasks(ctx context.Context, q task.ListQuery) (task.Page, error) {
	if err := auth.Require(ctx, auth.RoleTaskViewer); err != nil {
		return task.Page{}, err
	}
	f.mu.Lock()
	f.lastQuery = q
	f.mu.Unlock()
	p := task.Page{Total: tasksTotal, Tasks: []task.Task{}}
	for i := (q.Page-1)*q.Size + 1; i <= min(q.Page*q.Size, tasksTotal); i++ {
		t := specTask()
		t.ID = int64(i)
		p.Tasks = append(p.Tasks, *t)
	}
	return p, nil
}

func (f *fakeTasks) query() task.ListQuery {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.lastQuery
}

func (f *fakeTasks) RetryTask(ctx context.Context, id int64) (*task.Task, error) {
	return f.taskOp(ctx, id, task.OpRetry)
}

func (f *fakeTasks) RollbackTask(ctx context.Context, id int64) (*task.Task, error) {
	return f.taskOp(ctx, id, task.OpRollback)
}

// taskOp answers as the engine would for the special task ids.
func (f *fakeTasks) taskOp(ctx context.Context, id int64, op task.Operation) (*task.Task, error) {
	if err := auth.Require(ctx, auth.RoleTaskManager); err != nil {
		return nil, err
	}
	switch id {
	case taskOK:
		t := specTask()
		t.Operation = op
		return t, nil
	case taskRunning:
		return nil, fmt.Errorf("task %d: cannot %s: task is RUNNING: %w", id, strings.ToLower(string(op)), errs.ErrFailedPrecondition)
	case taskProhibited:
		if op == task.OpRollback {
			return nil, fmt.Errorf("task %d: cannot roll back: the task's context prohibits rollback: %w", id, errs.ErrRollbackProhibited)
		}
		return specTask(), nil
	case taskHostHeld:
		return nil, host.BusyError(hostOK, heldBy)
	}
	return nil, fmt.Errorf("task %d: %w", id, errs.ErrNotFound)
}

func (f *fakeTasks) RetrySubtask(ctx context.Context, taskID, subtaskID int64) (*task.Task, error) {
	return f.subtaskOp(ctx, taskID, subtaskID, task.OpRetry)
}

func (f *fakeTasks) SkipSubtask(ctx context.Context, taskID, subtaskID int64) (*task.Task, error) {
	return f.subtaskOp(ctx, taskID, subtaskID, task.OpSkip)
}

func (f *fakeTasks) CancelSubtask(ctx context.Context, taskID, subtaskID int64) (*task.Task, error) {
	return f.subtaskOp(ctx, taskID, subtaskID, task.OpCancel)
}

// subtaskOp answers as the engine would: subtaskFailed may be retried or
// skipped, subtaskRunning canceled.
func (f *fakeTasks) subtaskOp(ctx context.Context, taskID, subtaskID int64, op task.Operation) (*task.Task, error) {
	if err := auth.Require(ctx, auth.RoleTaskManager); err != nil {
		return nil, err
	}
	t, err := f.subtask(ctx, taskID, subtaskID)
	if err != nil {
		return nil, err
	}
	st := t.Subtask(subtaskID)
	want := map[task.Operation]int64{task.OpRetry: subtaskFailed, task.OpSkip: subtaskFailed, task.OpCancel: subtaskRunning}[op]
	if subtaskID != want {
		return nil, &task.SubtaskError{SubtaskID: subtaskID, Err: fmt.Errorf("task %d: cannot %s subtask %d: subtask is %s: %w",
			taskID, strings.ToLower(string(op)), subtaskID, st.Status, errs.ErrFailedPrecondition)}
	}
	st.Operation = op
	return t, nil
}

func (f *fakeTasks) subtask(_ context.Context, taskID, subtaskID int64) (*task.Task, error) {
	if taskID != taskOK {
		return nil, fmt.Errorf("task %d: %w", taskID, errs.ErrNotFound)
	}
	t := specTask()
	if t.Subtask(subtaskID) == nil {
		return nil, &task.SubtaskError{SubtaskID: subtaskID, Err: fmt.Errorf("subtask %d is not in task %d: %w", subtaskID, taskID, errs.ErrNotFound)}
	}
	return t, nil
}

// subtaskLogText is every subtask's log.
const subtaskLogText = "############{EXECUTE}{2021-09-03T14:27:59.694+08:00}############\n2021-09-03T14:27:59.700+08:00 stopping ocp_agentd \"quoted\"\n"

func (f *fakeTasks) SubtaskLog(ctx context.Context, taskID, subtaskID int64, q task.LogQuery) (task.LogPage, error) {
	if err := auth.Require(ctx, auth.RoleTaskViewer); err != nil {
		return task.LogPage{}, err
	}
	if _, err := f.subtask(ctx, taskID, subtaskID); err != nil {
		return task.LogPage{}, err
	}
	if q.After >= 2 {
		return task.LogPage{Next: q.After}, nil
	}
	return task.LogPage{Text: subtaskLogText, Lines: 2, Next: 2}, nil
}

// fakeUsers knows a few users by plaintext password.
type fakeUsers struct{}

var testUsers = map[string]struct {
	password string
	roles    []auth.Role
}{
	"admin":    {"admin-pass", []auth.Role{auth.RoleAdmin}},
	"manager":  {"manager-pass", []auth.Role{auth.RoleHostManager, auth.RoleTaskViewer}},
	"viewer":   {"viewer-pass", []auth.Role{auth.RoleHostViewer, auth.RoleTaskViewer}},
	"tasker":   {"tasker-pass", []auth.Role{auth.RoleTaskManager}},
	"operator": {"operator-pass", []auth.Role{auth.RoleHostManager}},
}

func (fakeUsers) Authenticate(_ context.Context, username, password string) (auth.Principal, error) {
	if username == "storefail" {
		return auth.Principal{}, fmt.Errorf("reading users: secret store error")
	}
	u, ok := testUsers[username]
	if !ok || u.password != password {
		return auth.Principal{}, auth.ErrBadCredentials
	}
	return auth.Principal{Username: username, Roles: slices.Clone(u.roles)}, nil
}

func (fakeUsers) CreateUser(ctx context.Context, username, password string, roles []auth.Role) (auth.User, error) {
	if err := auth.Require(ctx, auth.RoleAdmin); err != nil {
		return auth.User{}, err
	}
	if username == "" {
		return auth.User{}, fmt.Errorf("username must be 1..64 characters long: %w", errs.ErrInvalidArgument)
	}
	if _, ok := testUsers[username]; ok {
		return auth.User{}, fmt.Errorf("user %q: %w", username, errs.ErrConflict)
	}
	return auth.User{ID: 7, Username: username, PasswordHash: "$2a$10$secrethash", Roles: roles, CreateTime: start}, nil
}

// syncBuffer is a log sink safe for the server's goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
