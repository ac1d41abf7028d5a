package rest

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"agentplane/server/auth"
	"agentplane/server/errs"
	"agentplane/server/host"
	"agentplane/server/task"
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
	taskOK          = 30443
	hostsTotal      = 45
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
}

func (f *fakeHosts) StopAgent(ctx context.Context, id int64) (*task.Task, error) {
	if err := auth.Require(ctx, auth.RoleHostManager); err != nil {
		return nil, err
	}
	zerolog.Ctx(ctx).Info().Int64("host_id", id).Msg("stopping agent")
	switch id {
	case hostOK:
		return specTask(), nil
	case hostMissing:
		return nil, fmt.Errorf("host %d: %w", id, errs.ErrNotFound)
	case hostBusy:
		return nil, fmt.Errorf("host %d: agent operation running: %w", id, errs.ErrConflict)
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

type fakeTasks struct{}

func (fakeTasks) GetTask(ctx context.Context, id int64) (*task.Task, error) {
	if err := auth.Require(ctx, auth.RoleTaskViewer); err != nil {
		return nil, err
	}
	if id != taskOK {
		return nil, fmt.Errorf("task %d: %w", id, errs.ErrNotFound)
	}
	return specTask(), nil
}

// fakeUsers knows a few users by plaintext password.
type fakeUsers struct{}

var testUsers = map[string]struct {
	password string
	roles    []auth.Role
}{
	"admin":   {"admin-pass", []auth.Role{auth.RoleAdmin}},
	"manager": {"manager-pass", []auth.Role{auth.RoleHostManager, auth.RoleTaskViewer}},
	"viewer":  {"viewer-pass", []auth.Role{auth.RoleHostViewer, auth.RoleTaskViewer}},
}

func (fakeUsers) Authenticate(_ context.Context, username, password string) (auth.Principal, error) {
	if username == "storefail" {
		return auth.Principal{}, fmt.Errorf("reading users: secret store error")
	}
	u, ok := testUsers[username]
	if !ok || u.password != password {
		return auth.Principal{}, fmt.Errorf("invalid username or password: %w", errs.ErrUnauthenticated)
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
