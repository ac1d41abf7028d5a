package rpc

import (
	"context"
	"encoding/base64"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/proto"

	hostv1 "agentplane/gen/agentplane/host/v1"
	taskv1 "agentplane/gen/agentplane/task/v1"
	"agentplane/server/internal/auth"
	"agentplane/server/internal/errs"
	"agentplane/server/internal/host"
	"agentplane/server/internal/task"
)

// The HostService and TaskService methods over a real gRPC connection
// (bufconn), against hand-written fakes of the domain that check roles as
// the domain does.

// Ids the fakes answer specially.
const (
	apiHostOK       = 2
	apiHostBare     = 3 // an agent with nothing known yet
	apiHostBusy     = 409
	apiTaskOK       = 30443
	apiTaskRunning  = 20003 // operations refused: RUNNING
	apiTaskNoUndo   = 20004 // rollback prohibited
	apiTaskHeld     = 4090  // another task holds its host
	apiHeldBy       = 777
	apiSubFailed    = 32074 // may be retried or skipped
	apiSubRunning   = 32073 // may be canceled
	apiTasksTotal   = 41
	apiSubtaskLog   = "############{EXECUTE}{2021-09-03T14:27:59.694+08:00}############\n2021-09-03T14:27:59.700+08:00 stopping ocp_agentd\n"
	apiInstallHome  = "/home/admin/ocp_agent"
	apiProcessStart = 1630650479 // Unix seconds
)

var apiStart = time.Date(2021, 9, 3, 14, 27, 59, 687_000_000, time.UTC)

func apiTask(name string) *task.Task {
	return &task.Task{
		ID: apiTaskOK, Name: name, Type: task.TypeManual, Operation: task.OpExecute, Status: task.StatusRunning,
		Creator: "admin", HostID: apiHostOK, StartTime: apiStart, TaskDefinitionID: -1,
		Context: task.Context{ListMap: map[string][]string{}, ParallelIdx: -1, StringMap: map[string]string{"host_id": "2"}},
		Subtasks: []task.Subtask{
			{ID: apiSubFailed, TaskID: apiTaskOK, Name: "Prepare stop OCP agent", Status: task.SubtaskFailed, Operation: task.OpExecute, Timeout: time.Minute, RunTime: 1},
			{ID: apiSubRunning, TaskID: apiTaskOK, Name: "Stop all OCP agent processes", Status: task.SubtaskRunning, Operation: task.OpExecute, Timeout: 10 * time.Minute, RunTime: 1},
		},
	}
}

type apiHosts struct {
	mu      sync.Mutex
	lastOp  string
	lastKey string
	lastIDs []int64
}

func (f *apiHosts) last() (op, key string, ids []int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.lastOp, f.lastKey, f.lastIDs
}

func (f *apiHosts) create(ctx context.Context, name string, ids ...int64) (*task.Task, error) {
	if err := auth.Require(ctx, auth.RoleHostManager); err != nil {
		return nil, err
	}
	f.mu.Lock()
	f.lastOp, f.lastKey, f.lastIDs = name, task.IdempotencyKey(ctx), ids
	f.mu.Unlock()
	seen := map[int64]bool{}
	for _, id := range ids {
		switch {
		case seen[id]:
			return nil, fmt.Errorf("hostIds: host id %d is listed twice: %w", id, errs.ErrInvalidArgument)
		case id == apiHostBusy:
			return nil, host.BusyError(id, apiHeldBy)
		case id != apiHostOK && id != apiHostBare:
			return nil, fmt.Errorf("host %d: %w", id, errs.ErrNotFound)
		}
		seen[id] = true
	}
	return apiTask(name), nil
}

func (f *apiHosts) StopAgent(ctx context.Context, id int64) (*task.Task, error) {
	return f.create(ctx, "Stop OCP agent", id)
}

func (f *apiHosts) StartAgent(ctx context.Context, id int64) (*task.Task, error) {
	return f.create(ctx, "Start OCP agent", id)
}

func (f *apiHosts) RestartAgent(ctx context.Context, id int64) (*task.Task, error) {
	return f.create(ctx, "Restart OCP agent", id)
}

func (f *apiHosts) BatchStopAgents(ctx context.Context, ids []int64) (*task.Task, error) {
	return f.create(ctx, "Batch stop OCP agent", ids...)
}

func (f *apiHosts) BatchStartAgents(ctx context.Context, ids []int64) (*task.Task, error) {
	return f.create(ctx, "Batch start OCP agent", ids...)
}

func (f *apiHosts) BatchRestartAgents(ctx context.Context, ids []int64) (*task.Task, error) {
	return f.create(ctx, "Batch restart OCP agent", ids...)
}

func (f *apiHosts) GetHost(ctx context.Context, id int64) (*host.Host, error) {
	return nil, fmt.Errorf("host %d: %w", id, errs.ErrNotFound)
}

func (f *apiHosts) ListHosts(ctx context.Context, q host.ListQuery) (host.Page, error) {
	return host.Page{}, nil
}

func (f *apiHosts) GetHostAgent(ctx context.Context, id int64) (*host.Agent, error) {
	if err := auth.Require(ctx, auth.RoleHostViewer); err != nil {
		return nil, err
	}
	switch id {
	case apiHostOK:
		return &host.Agent{
			HostID: id, InnerIP: "10.0.0.2", InstallHome: apiInstallHome, Version: "4.2.1", Status: host.AgentStarted,
			LastSeen: apiStart, CreateTime: apiStart, UpdateTime: apiStart,
			Processes: []host.Process{
				{PID: 4242, Name: "ocp_agentd", User: "admin", Cmdline: apiInstallHome + "/bin/ocp_agentd",
					CreateTime: time.Unix(apiProcessStart, 0), Status: host.AgentStarted, LastActiveTime: apiStart},
				{PID: 4243, Name: "ocp_mgragent", User: "admin", Cmdline: apiInstallHome + "/bin/ocp_mgragent",
					Status: host.AgentStopped, LastActiveTime: apiStart},
			},
		}, nil
	case apiHostBare:
		return &host.Agent{HostID: id, InnerIP: "10.0.0.3", CreateTime: apiStart, UpdateTime: apiStart}, nil
	}
	return nil, fmt.Errorf("host %d: %w", id, errs.ErrNotFound)
}

type apiTasks struct {
	mu        sync.Mutex
	lastQuery task.ListQuery
}

func (f *apiTasks) GetTask(ctx context.Context, id int64) (*task.Task, error) {
	return nil, fmt.Errorf("task %d: %w", id, errs.ErrNotFound)
}

func (f *apiTasks) WatchTask(ctx context.Context, id int64, send func(*task.Task) error) error {
	return fmt.Errorf("task %d: %w", id, errs.ErrNotFound)
}

func (f *apiTasks) ListTasks(ctx context.Context, q task.ListQuery) (task.Page, error) {
	if err := auth.Require(ctx, auth.RoleTaskViewer); err != nil {
		return task.Page{}, err
	}
	f.mu.Lock()
	f.lastQuery = q
	f.mu.Unlock()
	return task.Page{Tasks: []task.Task{*apiTask("a"), *apiTask("b")}, Total: apiTasksTotal}, nil
}

func (f *apiTasks) query() task.ListQuery {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.lastQuery
}

func (f *apiTasks) RetryTask(ctx context.Context, id int64) (*task.Task, error) {
	return f.taskOp(ctx, id, task.OpRetry)
}

func (f *apiTasks) RollbackTask(ctx context.Context, id int64) (*task.Task, error) {
	return f.taskOp(ctx, id, task.OpRollback)
}

func (f *apiTasks) taskOp(ctx context.Context, id int64, op task.Operation) (*task.Task, error) {
	if err := auth.Require(ctx, auth.RoleTaskManager); err != nil {
		return nil, err
	}
	switch id {
	case apiTaskOK:
		t := apiTask("Stop OCP agent")
		t.Operation = op
		return t, nil
	case apiTaskRunning:
		return nil, fmt.Errorf("task %d: cannot %s: task is RUNNING: %w", id, op, errs.ErrFailedPrecondition)
	case apiTaskNoUndo:
		return nil, fmt.Errorf("task %d: cannot roll back: the task's context prohibits rollback: %w", id, errs.ErrRollbackProhibited)
	case apiTaskHeld:
		return nil, host.BusyError(apiHostOK, apiHeldBy)
	}
	return nil, fmt.Errorf("task %d: %w", id, errs.ErrNotFound)
}

func (f *apiTasks) RetrySubtask(ctx context.Context, taskID, subtaskID int64) (*task.Task, error) {
	return f.subtaskOp(ctx, taskID, subtaskID, task.OpRetry, apiSubFailed)
}

func (f *apiTasks) SkipSubtask(ctx context.Context, taskID, subtaskID int64) (*task.Task, error) {
	return f.subtaskOp(ctx, taskID, subtaskID, task.OpSkip, apiSubFailed)
}

func (f *apiTasks) CancelSubtask(ctx context.Context, taskID, subtaskID int64) (*task.Task, error) {
	return f.subtaskOp(ctx, taskID, subtaskID, task.OpCancel, apiSubRunning)
}

func (f *apiTasks) subtaskOp(ctx context.Context, taskID, subtaskID int64, op task.Operation, allowed int64) (*task.Task, error) {
	if err := auth.Require(ctx, auth.RoleTaskManager); err != nil {
		return nil, err
	}
	t, err := apiSubtask(taskID, subtaskID)
	if err != nil {
		return nil, err
	}
	st := t.Subtask(subtaskID)
	if subtaskID != allowed {
		return nil, fmt.Errorf("task %d: cannot %s subtask %d: subtask is %s: %w", taskID, op, subtaskID, st.Status, errs.ErrFailedPrecondition)
	}
	st.Operation = op
	return t, nil
}

func apiSubtask(taskID, subtaskID int64) (*task.Task, error) {
	if taskID != apiTaskOK {
		return nil, fmt.Errorf("task %d: %w", taskID, errs.ErrNotFound)
	}
	t := apiTask("Stop OCP agent")
	if t.Subtask(subtaskID) == nil {
		return nil, fmt.Errorf("subtask %d is not in task %d: %w", subtaskID, taskID, errs.ErrNotFound)
	}
	return t, nil
}

func (f *apiTasks) SubtaskLog(ctx context.Context, taskID, subtaskID int64, q task.LogQuery) (task.LogPage, error) {
	if err := auth.Require(ctx, auth.RoleTaskViewer); err != nil {
		return task.LogPage{}, err
	}
	if _, err := apiSubtask(taskID, subtaskID); err != nil {
		return task.LogPage{}, err
	}
	return task.LogPage{Text: apiSubtaskLog, Lines: 2, Next: q.After + 2, More: q.Limit == 1}, nil
}

// apiUsers authenticates users whose password is their name plus "-pass".
type apiUsers struct{}

var apiRoles = map[string][]auth.Role{
	"admin":   {auth.RoleAdmin},
	"manager": {auth.RoleHostManager, auth.RoleTaskViewer},
	"viewer":  {auth.RoleHostViewer, auth.RoleTaskViewer},
	"tasker":  {auth.RoleTaskManager},
}

func (apiUsers) Authenticate(_ context.Context, username, password string) (auth.Principal, error) {
	roles, ok := apiRoles[username]
	if !ok || password != username+"-pass" {
		return auth.Principal{}, auth.ErrBadCredentials
	}
	return auth.Principal{Username: username, Roles: slices.Clone(roles)}, nil
}

type apiEnv struct {
	hosts *apiHosts
	tasks *apiTasks
	hc    hostv1.HostServiceClient
	tc    taskv1.TaskServiceClient
}

func newAPIEnv(t *testing.T) *apiEnv {
	t.Helper()
	env := &apiEnv{hosts: &apiHosts{}, tasks: &apiTasks{}}
	conn := serveBufconn(t, Config{Hosts: env.hosts, Tasks: env.tasks, Users: apiUsers{}, Log: zerolog.Nop()})
	env.hc, env.tc = hostv1.NewHostServiceClient(conn), taskv1.NewTaskServiceClient(conn)
	return env
}

// serveBufconn serves NewServer(cfg) over an in-memory connection until
// the test ends, and returns a client connection to it.
func serveBufconn(t *testing.T, cfg Config) *grpc.ClientConn {
	t.Helper()
	lis := bufconn.Listen(1 << 20)
	srv := NewServer(cfg)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(lis)
	}()
	conn, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = conn.Close()
		srv.Stop()
		<-done
	})
	return conn
}

// as returns a call context with user's credentials and the extra metadata
// pairs kv.
func as(t *testing.T, user string, kv ...string) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	cred := base64.StdEncoding.EncodeToString([]byte(user + ":" + user + "-pass"))
	return metadata.AppendToOutgoingContext(ctx, append([]string{"authorization", "Basic " + cred}, kv...)...)
}

// checkCode fails unless err has code want and, when want is not OK, a
// message containing msg.
func checkCode(t *testing.T, err error, want codes.Code, msg string) {
	t.Helper()
	st := status.Convert(err)
	if st.Code() != want {
		t.Fatalf("code = %s (%q), want %s", st.Code(), st.Message(), want)
	}
	if want != codes.OK && !strings.Contains(st.Message(), msg) {
		t.Errorf("message = %q, want it to contain %q", st.Message(), msg)
	}
}

func TestHostTaskCreation(t *testing.T) {
	env := newAPIEnv(t)
	type call func(ctx context.Context, ids ...int64) (*taskv1.Task, error)
	single := func(f func(context.Context, int64) (*taskv1.Task, error)) call {
		return func(ctx context.Context, ids ...int64) (*taskv1.Task, error) { return f(ctx, ids[0]) }
	}
	calls := map[string]call{
		"Stop OCP agent": single(func(ctx context.Context, id int64) (*taskv1.Task, error) {
			r, err := env.hc.StopAgent(ctx, &hostv1.StopAgentRequest{HostId: id})
			return r.GetTask(), err
		}),
		"Start OCP agent": single(func(ctx context.Context, id int64) (*taskv1.Task, error) {
			r, err := env.hc.StartAgent(ctx, &hostv1.StartAgentRequest{HostId: id})
			return r.GetTask(), err
		}),
		"Restart OCP agent": single(func(ctx context.Context, id int64) (*taskv1.Task, error) {
			r, err := env.hc.RestartAgent(ctx, &hostv1.RestartAgentRequest{HostId: id})
			return r.GetTask(), err
		}),
		"Batch stop OCP agent": func(ctx context.Context, ids ...int64) (*taskv1.Task, error) {
			r, err := env.hc.BatchStopAgents(ctx, &hostv1.BatchStopAgentsRequest{HostIds: ids})
			return r.GetTask(), err
		},
		"Batch start OCP agent": func(ctx context.Context, ids ...int64) (*taskv1.Task, error) {
			r, err := env.hc.BatchStartAgents(ctx, &hostv1.BatchStartAgentsRequest{HostIds: ids})
			return r.GetTask(), err
		},
		"Batch restart OCP agent": func(ctx context.Context, ids ...int64) (*taskv1.Task, error) {
			r, err := env.hc.BatchRestartAgents(ctx, &hostv1.BatchRestartAgentsRequest{HostIds: ids})
			return r.GetTask(), err
		},
	}
	batch := func(name string) bool { return strings.HasPrefix(name, "Batch") }
	for name, do := range calls {
		ids := []int64{apiHostOK}
		if batch(name) {
			ids = []int64{apiHostBare, apiHostOK}
		}
		t.Run(name, func(t *testing.T) {
			for _, key := range []string{"", "req-1 #a"} {
				var kv []string
				if key != "" {
					kv = []string{"idempotency-key", key}
				}
				tk, err := do(as(t, "manager", kv...), ids...)
				checkCode(t, err, codes.OK, "")
				if tk.GetName() != name || tk.GetId() != apiTaskOK || tk.GetStatus() != taskv1.TaskStatus_TASK_STATUS_RUNNING {
					t.Errorf("task = %v", tk)
				}
				op, gotKey, gotIDs := env.hosts.last()
				if op != name || gotKey != key || !slices.Equal(gotIDs, ids) {
					t.Errorf("host service got %q key %q ids %v, want %q key %q ids %v", op, gotKey, gotIDs, name, key, ids)
				}
			}
			_, err := do(as(t, "viewer"), ids...)
			checkCode(t, err, codes.PermissionDenied, "HOST_MANAGER")
			_, err = do(as(t, "manager"), apiHostBusy)
			checkCode(t, err, codes.Aborted, "(task 777)")
			_, err = do(as(t, "manager"), 77)
			checkCode(t, err, codes.NotFound, "host 77")
			_, err = do(as(t, "manager", "idempotency-key", strings.Repeat("k", 256)), ids...)
			checkCode(t, err, codes.InvalidArgument, "Idempotency-Key")
			_, err = do(as(t, "manager", "idempotency-key", "a", "idempotency-key", "b"), ids...)
			checkCode(t, err, codes.InvalidArgument, "idempotency-key")
			_, err = do(as(t, "manager", "idempotency-key", ""), ids...)
			checkCode(t, err, codes.InvalidArgument, "Idempotency-Key")
			if batch(name) {
				_, err = do(as(t, "manager"), apiHostOK, apiHostBare, apiHostOK)
				checkCode(t, err, codes.InvalidArgument, "listed twice")
			}
		})
	}
}

func TestTaskOperations(t *testing.T) {
	env := newAPIEnv(t)
	type op func(ctx context.Context, taskID, subtaskID int64) (*taskv1.Task, error)
	ops := map[string]op{
		"RetryTask": func(ctx context.Context, id, _ int64) (*taskv1.Task, error) {
			r, err := env.tc.RetryTask(ctx, &taskv1.RetryTaskRequest{Id: id})
			return r.GetTask(), err
		},
		"RollbackTask": func(ctx context.Context, id, _ int64) (*taskv1.Task, error) {
			r, err := env.tc.RollbackTask(ctx, &taskv1.RollbackTaskRequest{Id: id})
			return r.GetTask(), err
		},
		"RetrySubtask": func(ctx context.Context, id, sub int64) (*taskv1.Task, error) {
			r, err := env.tc.RetrySubtask(ctx, &taskv1.RetrySubtaskRequest{TaskId: id, SubtaskId: sub})
			return r.GetTask(), err
		},
		"SkipSubtask": func(ctx context.Context, id, sub int64) (*taskv1.Task, error) {
			r, err := env.tc.SkipSubtask(ctx, &taskv1.SkipSubtaskRequest{TaskId: id, SubtaskId: sub})
			return r.GetTask(), err
		},
		"CancelSubtask": func(ctx context.Context, id, sub int64) (*taskv1.Task, error) {
			r, err := env.tc.CancelSubtask(ctx, &taskv1.CancelSubtaskRequest{TaskId: id, SubtaskId: sub})
			return r.GetTask(), err
		},
	}
	tests := []struct {
		op            string
		user          string
		taskID, subID int64
		code          codes.Code
		msg           string
		wantOp        taskv1.Operation
		wantSubtaskOp bool // wantOp is the subtask's, not the task's
	}{
		{op: "RetryTask", user: "tasker", taskID: apiTaskOK, wantOp: taskv1.Operation_OPERATION_RETRY},
		{op: "RetryTask", user: "viewer", taskID: apiTaskOK, code: codes.PermissionDenied, msg: "TASK_MANAGER"},
		{op: "RetryTask", user: "tasker", taskID: apiTaskRunning, code: codes.FailedPrecondition, msg: "task is RUNNING"},
		{op: "RetryTask", user: "tasker", taskID: 77, code: codes.NotFound, msg: "task 77"},
		{op: "RetryTask", user: "tasker", taskID: apiTaskHeld, code: codes.Aborted, msg: "(task 777)"},
		{op: "RollbackTask", user: "admin", taskID: apiTaskOK, wantOp: taskv1.Operation_OPERATION_ROLLBACK},
		{op: "RollbackTask", user: "manager", taskID: apiTaskOK, code: codes.PermissionDenied},
		{op: "RollbackTask", user: "tasker", taskID: apiTaskNoUndo, code: codes.FailedPrecondition, msg: "prohibits rollback"},
		{op: "RollbackTask", user: "tasker", taskID: apiTaskRunning, code: codes.FailedPrecondition, msg: "task is RUNNING"},
		{op: "RollbackTask", user: "tasker", taskID: 77, code: codes.NotFound},
		{op: "RetrySubtask", user: "tasker", taskID: apiTaskOK, subID: apiSubFailed, wantOp: taskv1.Operation_OPERATION_RETRY, wantSubtaskOp: true},
		{op: "RetrySubtask", user: "tasker", taskID: apiTaskOK, subID: apiSubRunning, code: codes.FailedPrecondition, msg: "subtask 32073"},
		{op: "RetrySubtask", user: "viewer", taskID: apiTaskOK, subID: apiSubFailed, code: codes.PermissionDenied},
		{op: "RetrySubtask", user: "tasker", taskID: apiTaskOK, subID: 5, code: codes.NotFound, msg: "subtask 5"},
		{op: "RetrySubtask", user: "tasker", taskID: 77, subID: apiSubFailed, code: codes.NotFound, msg: "task 77"},
		{op: "SkipSubtask", user: "tasker", taskID: apiTaskOK, subID: apiSubFailed, wantOp: taskv1.Operation_OPERATION_SKIP, wantSubtaskOp: true},
		{op: "SkipSubtask", user: "tasker", taskID: apiTaskOK, subID: apiSubRunning, code: codes.FailedPrecondition},
		{op: "SkipSubtask", user: "viewer", taskID: apiTaskOK, subID: apiSubFailed, code: codes.PermissionDenied},
		{op: "CancelSubtask", user: "tasker", taskID: apiTaskOK, subID: apiSubRunning, wantOp: taskv1.Operation_OPERATION_CANCEL, wantSubtaskOp: true},
		{op: "CancelSubtask", user: "tasker", taskID: apiTaskOK, subID: apiSubFailed, code: codes.FailedPrecondition, msg: "subtask is FAILED"},
		{op: "CancelSubtask", user: "viewer", taskID: apiTaskOK, subID: apiSubRunning, code: codes.PermissionDenied},
		{op: "CancelSubtask", user: "tasker", taskID: apiTaskOK, subID: 5, code: codes.NotFound},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s/%s/%d/%d", tt.op, tt.user, tt.taskID, tt.subID), func(t *testing.T) {
			tk, err := ops[tt.op](as(t, tt.user), tt.taskID, tt.subID)
			checkCode(t, err, tt.code, tt.msg)
			if tt.code != codes.OK {
				return
			}
			got := tk.GetOperation()
			if tt.wantSubtaskOp {
				got = taskv1.Operation_OPERATION_UNSPECIFIED
				for _, st := range tk.GetSubtasks() {
					if st.GetId() == tt.subID {
						got = st.GetOperation()
					}
				}
			}
			if got != tt.wantOp || tk.GetId() != apiTaskOK {
				t.Errorf("operation = %s, want %s; task %v", got, tt.wantOp, tk)
			}
		})
	}
}

func TestGetSubtaskLog(t *testing.T) {
	env := newAPIEnv(t)
	r, err := env.tc.GetSubtaskLog(as(t, "viewer"), &taskv1.GetSubtaskLogRequest{TaskId: apiTaskOK, SubtaskId: apiSubRunning})
	checkCode(t, err, codes.OK, "")
	if r.GetLog() != apiSubtaskLog || r.GetLines() != 2 || r.GetNextOffset() != 2 || r.GetMore() {
		t.Errorf("log = %q (%d lines, next %d, more %v), want %q", r.GetLog(), r.GetLines(), r.GetNextOffset(), r.GetMore(), apiSubtaskLog)
	}
	// The paging fields reach the service.
	r, err = env.tc.GetSubtaskLog(as(t, "viewer"), &taskv1.GetSubtaskLogRequest{TaskId: apiTaskOK, SubtaskId: apiSubRunning, Offset: 40, Limit: 1})
	checkCode(t, err, codes.OK, "")
	if r.GetNextOffset() != 42 || !r.GetMore() {
		t.Errorf("page after 40, limit 1: next %d, more %v; want 42, true", r.GetNextOffset(), r.GetMore())
	}
	_, err = env.tc.GetSubtaskLog(as(t, "viewer"), &taskv1.GetSubtaskLogRequest{TaskId: apiTaskOK, SubtaskId: 5})
	checkCode(t, err, codes.NotFound, "subtask 5")
	_, err = env.tc.GetSubtaskLog(as(t, "viewer"), &taskv1.GetSubtaskLogRequest{TaskId: 77, SubtaskId: apiSubRunning})
	checkCode(t, err, codes.NotFound, "task 77")
	_, err = env.tc.GetSubtaskLog(as(t, "nobody"), &taskv1.GetSubtaskLogRequest{TaskId: apiTaskOK, SubtaskId: apiSubRunning})
	checkCode(t, err, codes.Unauthenticated, "")
}

func TestListTasksRequest(t *testing.T) {
	env := newAPIEnv(t)
	tests := []struct {
		name string
		req  *taskv1.ListTasksRequest
		want task.ListQuery
		code codes.Code
		msg  string
	}{
		{"defaults", &taskv1.ListTasksRequest{}, task.ListQuery{}, codes.OK, ""},
		{"all filters", &taskv1.ListTasksRequest{
			HostId: 2, Status: taskv1.TaskStatus_TASK_STATUS_FAILED, Page: 3, Size: 50, Name: "stop",
			Type: taskv1.TaskType_TASK_TYPE_SYS_SCHEDULED, Sort: "startTime,desc",
		}, task.ListQuery{
			HostID: 2, Status: task.StatusFailed, Page: 3, Size: 50, Name: "stop", Type: task.TypeSysScheduled,
			Sort: task.Sort{Field: task.SortStartTime, Desc: true},
		}, codes.OK, ""},
		{"bare sort field is ascending", &taskv1.ListTasksRequest{Sort: "name"}, task.ListQuery{Sort: task.Sort{Field: task.SortName}}, codes.OK, ""},
		{"sort asc", &taskv1.ListTasksRequest{Sort: "id,asc", Type: taskv1.TaskType_TASK_TYPE_MANUAL}, task.ListQuery{Type: task.TypeManual, Sort: task.Sort{Field: task.SortID}}, codes.OK, ""},
		{"sort DESC", &taskv1.ListTasksRequest{Sort: "endTime,DESC", Status: taskv1.TaskStatus_TASK_STATUS_SUCCESSFUL}, task.ListQuery{Status: task.StatusSuccessful, Sort: task.Sort{Field: task.SortEndTime, Desc: true}}, codes.OK, ""},
		{"sort field unknown", &taskv1.ListTasksRequest{Sort: "creator,asc"}, task.ListQuery{}, codes.InvalidArgument, "sort field"},
		{"sort direction unknown", &taskv1.ListTasksRequest{Sort: "id,up"}, task.ListQuery{}, codes.InvalidArgument, "sort direction"},
		{"sort direction empty", &taskv1.ListTasksRequest{Sort: "id,"}, task.ListQuery{}, codes.InvalidArgument, "sort direction"},
		{"status unknown", &taskv1.ListTasksRequest{Status: 42}, task.ListQuery{}, codes.InvalidArgument, "status 42"},
		{"type unknown", &taskv1.ListTasksRequest{Type: 42}, task.ListQuery{}, codes.InvalidArgument, "type 42"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env.tasks.mu.Lock()
			env.tasks.lastQuery = task.ListQuery{Page: -1} // marks "not called"
			env.tasks.mu.Unlock()
			r, err := env.tc.ListTasks(as(t, "viewer"), tt.req)
			checkCode(t, err, tt.code, tt.msg)
			q := env.tasks.query()
			if tt.code != codes.OK {
				if q.Page != -1 {
					t.Errorf("refused request reached the domain: %+v", q)
				}
				return
			}
			if q != tt.want {
				t.Errorf("query = %+v, want %+v", q, tt.want)
			}
			if r.GetTotalElements() != apiTasksTotal || len(r.GetTasks()) != 2 {
				t.Errorf("response = %d tasks of %d", len(r.GetTasks()), r.GetTotalElements())
			}
		})
	}
	_, err := env.tc.ListTasks(as(t, "manager"), &taskv1.ListTasksRequest{})
	checkCode(t, err, codes.OK, "")
}

func TestGetHostAgent(t *testing.T) {
	env := newAPIEnv(t)
	r, err := env.hc.GetHostAgent(as(t, "viewer"), &hostv1.GetHostAgentRequest{HostId: apiHostOK})
	checkCode(t, err, codes.OK, "")
	start := ts(apiStart)
	want := &hostv1.HostAgent{
		Id: apiHostOK, Version: "4.2.1", InstallHome: apiInstallHome, LogHome: apiInstallHome + "/log",
		LastAvailableTime: start, HostId: apiHostOK, HostInnerIpAddress: "10.0.0.2",
		Status: hostv1.AgentStatus_AGENT_STATUS_STARTED, CreateTime: start, UpdateTime: start,
		Processes: []*hostv1.AgentProcess{
			{HostId: apiHostOK, Alias: "ocp_agentd", Pid: 4242, User: "admin", StartCommand: apiInstallHome + "/bin/ocp_agentd",
				StartTime: ts(time.Unix(apiProcessStart, 0)), LastActiveTime: start, Status: hostv1.AgentStatus_AGENT_STATUS_STARTED},
			{HostId: apiHostOK, Alias: "ocp_mgragent", Pid: 4243, User: "admin", StartCommand: apiInstallHome + "/bin/ocp_mgragent",
				LastActiveTime: start, Status: hostv1.AgentStatus_AGENT_STATUS_STOPPED},
		},
	}
	if !proto.Equal(r.GetAgent(), want) {
		t.Errorf("agent = %v\nwant    %v", r.GetAgent(), want)
	}

	r, err = env.hc.GetHostAgent(as(t, "viewer"), &hostv1.GetHostAgentRequest{HostId: apiHostBare})
	checkCode(t, err, codes.OK, "")
	bare := &hostv1.HostAgent{
		Id: apiHostBare, HostId: apiHostBare, HostInnerIpAddress: "10.0.0.3", Status: hostv1.AgentStatus_AGENT_STATUS_STOPPED,
		CreateTime: start, UpdateTime: start,
	}
	if !proto.Equal(r.GetAgent(), bare) {
		t.Errorf("agent = %v\nwant    %v", r.GetAgent(), bare)
	}

	_, err = env.hc.GetHostAgent(as(t, "viewer"), &hostv1.GetHostAgentRequest{HostId: 77})
	checkCode(t, err, codes.NotFound, "host 77")
	_, err = env.hc.GetHostAgent(as(t, "tasker"), &hostv1.GetHostAgentRequest{HostId: apiHostOK})
	checkCode(t, err, codes.PermissionDenied, "HOST_VIEWER")
}

func TestToHostAgentUnknownStatus(t *testing.T) {
	a := &host.Agent{HostID: 5, Processes: []host.Process{{Name: "ocp_agentd", Status: host.AgentStarted}}}
	if got := toHostAgent(a).GetStatus(); got != hostv1.AgentStatus_AGENT_STATUS_STARTED {
		t.Errorf("status with a running process = %s, want STARTED", got)
	}
	a.Processes[0].Status = host.AgentStopped
	if got := toHostAgent(a).GetStatus(); got != hostv1.AgentStatus_AGENT_STATUS_STOPPED {
		t.Errorf("status with no running process = %s, want STOPPED", got)
	}
}
