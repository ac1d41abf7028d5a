package agentop

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"agentplane/server/internal/auth"
	"agentplane/server/internal/errs"
	"agentplane/server/internal/fleet"
	"agentplane/server/internal/host"
	"agentplane/server/internal/task"
)

func TestStopPlanIsOCPsChain(t *testing.T) {
	p := StopPlan(7, "ops")
	if p.Task.Name != "Stop OCP agent" || p.Task.Type != task.TypeManual || p.Task.Creator != "ops" ||
		p.Task.HostID != 7 || p.Task.TaskDefinitionID != -1 || p.Task.Context.ParallelIdx != -1 {
		t.Fatalf("task %+v", p.Task)
	}
	if m := p.Task.Context.StringMap; m["host_id"] != "7" || m["prohibit_rollback"] != "false" || len(m) != 2 {
		t.Fatalf("stringMap %v", m)
	}
	want := []struct {
		name, class string
		series      int
		timeout     time.Duration
	}{
		{"Prepare stop OCP agent", "com.alipay.ocp.service.task.business.obagent.PrepareStopOcpAgentTask", 2, 60 * time.Second},
		{"Stop all OCP agent processes", "com.alipay.ocp.service.task.business.obagent.StopAllOcpAgentProcessesTask", 1, 600 * time.Second},
		{"Finish OCP agent operation", "com.alipay.ocp.service.task.business.obagent.FinishOcpAgentOperationTask", 0, 60 * time.Second},
	}
	for i, w := range want {
		st := p.Task.Subtasks[i]
		if st.Name != w.name || st.Description != w.name || st.ClassName != w.class || st.SeriesID != w.series ||
			st.Timeout != w.timeout || st.HostID != 7 || st.ParallelIdx != -1 || st.NodeType != "JAVA_TASK" {
			t.Errorf("subtask %d: %+v", i, st)
		}
	}
	if fmt.Sprint(p.Edges) != "[[0 1] [1 2]]" || fmt.Sprint(p.Resources) != "[host:7]" {
		t.Fatalf("edges %v locks %v", p.Edges, p.Resources)
	}
}

// fakes

type hosts struct {
	known    map[int64]bool
	lockErr  error
	finished map[int64]host.AgentStatus
	// finishFails is how many FinishAgentOperation calls fail as on a
	// full disk.
	finishFails int
}

func (h *hosts) GetHost(_ context.Context, id int64) (*host.Host, error) {
	if !h.known[id] {
		return nil, fmt.Errorf("host %d: %w", id, errs.ErrNotFound)
	}
	return &host.Host{ID: id}, nil
}

func (h *hosts) HostState(ctx context.Context, id int64) (*host.Host, error) {
	return h.GetHost(ctx, id)
}

func (h *hosts) ListHosts(context.Context, host.ListQuery) (host.Page, error) {
	return host.Page{}, nil
}

func (h *hosts) GetHostAgent(_ context.Context, id int64) (*host.Agent, error) {
	if !h.known[id] {
		return nil, fmt.Errorf("host %d: %w", id, errs.ErrNotFound)
	}
	return &host.Agent{HostID: id}, nil
}

func (h *hosts) LockHost(context.Context, int64, int64) error { return h.lockErr }

func (h *hosts) FinishAgentOperation(_ context.Context, hostID, _ int64, st host.AgentStatus) error {
	if h.finishFails > 0 {
		h.finishFails--
		return &errs.StoreError{Full: true, Err: errors.New("database or disk is full (13)")}
	}
	h.finished[hostID] = st
	return nil
}

type agents struct {
	connected bool
	result    fleet.Result
	err       error
	sent      fleet.Command
	acked     bool
	waited    time.Duration // the time WaitConnected was given
}

func (a *agents) WaitConnected(_ context.Context, _ int64, wait time.Duration) error {
	a.waited = wait
	if !a.connected {
		return fmt.Errorf("%w within %s", fleet.ErrNotConnected, wait)
	}
	return nil
}

func (a *agents) Dispatch(_ context.Context, _ int64, cmd fleet.Command) (fleet.Result, error) {
	a.sent = cmd
	return a.result, a.err
}

func (a *agents) Ack(int64, int64, int) { a.acked = true }

func run(id int64) (task.Run, *[]string) {
	var lines []string
	return task.Run{
		Task:    task.Task{ID: 1, HostID: id},
		Subtask: task.Subtask{ID: 2, HostID: id, RunTime: 3},
		Log:     func(l string) { lines = append(lines, l) },
	}, &lines
}

func TestPrepare(t *testing.T) {
	tests := []struct {
		name      string
		connected bool
		lockErr   error
		hostID    int64
		wantErr   string
	}{
		{"ready", true, nil, 7, ""},
		{"agentd not connected", false, nil, 7, "host 7: agentd not connected"},
		{"unknown host", true, nil, 8, "host 8: not found"},
		{"lock held", true, fmt.Errorf("host 7: agent operation in progress (task 4): %w", errs.ErrConflict), 7, "task 4"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			x := prepare{&hosts{known: map[int64]bool{7: true}, lockErr: tt.lockErr}, &agents{connected: tt.connected}}
			r, _ := run(tt.hostID)
			res := x.Execute(context.Background(), r)
			if tt.wantErr == "" && res.Err != nil || tt.wantErr != "" && (res.Err == nil || !strings.Contains(res.Err.Error(), tt.wantErr)) {
				t.Fatalf("err %v, want %q", res.Err, tt.wantErr)
			}
		})
	}
}

// Prepare gives the fleet ConnectWait (which it extends after a restart for
// hosts expected back) and fails with its error.
func TestPrepareWaitsConnectWait(t *testing.T) {
	a := &agents{}
	x := prepare{&hosts{known: map[int64]bool{7: true}}, a}
	r, _ := run(7)
	if res := x.Execute(context.Background(), r); res.Err == nil || !errors.Is(res.Err, fleet.ErrNotConnected) ||
		res.Err.Error() != "host 7: agentd not connected within 5s" {
		t.Fatalf("err %v", res.Err)
	}
	if a.waited != ConnectWait {
		t.Fatalf("waited %s, want %s", a.waited, ConnectWait)
	}
}

func TestStopAll(t *testing.T) {
	tests := []struct {
		name    string
		result  fleet.Result
		err     error
		wantErr string
		wantAck bool
	}{
		{"succeeded", fleet.Result{Outcome: fleet.Succeeded, Message: "stopped 3"}, nil, "", true},
		{"failed", fleet.Result{Outcome: fleet.Failed, Message: "ocp_monagent (pid 812) still running after 3 rounds"}, nil,
			"host 7: stop failed: ocp_monagent (pid 812) still running after 3 rounds", true},
		{"canceled by agentd", fleet.Result{Outcome: fleet.Canceled, Message: "agentd is shutting down"}, nil, "stop canceled", true},
		{"timed out, agent confirmed", fleet.Result{Outcome: fleet.Canceled, Message: "stopped 1"}, errors.New("timed out after 600s"),
			"host 7: timed out after 600s", true},
		{"timed out, agent silent", fleet.Result{}, errors.New("timed out after 600s"), "timed out after 600s", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := &agents{result: tt.result, err: tt.err}
			r, _ := run(7)
			res := dispatch{a, actionStop}.Execute(context.Background(), r)
			if a.sent.SubtaskID != 2 || a.sent.Attempt != 3 || a.sent.StopAgent == nil {
				t.Fatalf("command %+v", a.sent)
			}
			if tt.wantErr == "" && res.Err != nil || tt.wantErr != "" && (res.Err == nil || !strings.Contains(res.Err.Error(), tt.wantErr)) {
				t.Fatalf("err %v, want %q", res.Err, tt.wantErr)
			}
			if res.AfterCommit != nil {
				res.AfterCommit()
			}
			if a.acked != tt.wantAck {
				t.Fatalf("acked %v, want %v", a.acked, tt.wantAck)
			}
		})
	}
}

func TestFinishRecordsStopped(t *testing.T) {
	h := &hosts{finished: map[int64]host.AgentStatus{}}
	r, lines := run(7)
	if res := (finishOp{h}).Execute(context.Background(), r); res.Err != nil {
		t.Fatal(res.Err)
	}
	if h.finished[7] != host.AgentStopped || len(*lines) != 1 {
		t.Fatalf("finished %v, log %v", h.finished, *lines)
	}
}

// TestFinishWaitsOutAFullDisk: Finish's write failing because the store
// cannot be written is tried again (within the subtask's timeout), not a
// failed operation; past the timeout it fails with the store's error.
func TestFinishWaitsOutAFullDisk(t *testing.T) {
	h := &hosts{finished: map[int64]host.AgentStatus{}, finishFails: 3}
	r, _ := run(7)
	if res := (finishOp{h}).Execute(context.Background(), r); res.Err != nil || h.finished[7] != host.AgentStopped {
		t.Fatalf("Finish after 3 store failures: %v, finished %v", res.Err, h.finished)
	}
	h = &hosts{finished: map[int64]host.AgentStatus{}, finishFails: 1 << 30}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if res := (finishOp{h}).Execute(ctx, r); !errors.Is(res.Err, errs.ErrStoreUnavailable) {
		t.Fatalf("Finish with the store down past its timeout: %v, want the store's error", res.Err)
	}
}

func TestFinishRecordsStartedAfterAStart(t *testing.T) {
	h := &hosts{finished: map[int64]host.AgentStatus{}}
	r, _ := run(7)
	r.Task.Subtasks = HostPlan(OpRestart, 7, "ops").Task.Subtasks
	if res := (finishOp{h}).Execute(context.Background(), r); res.Err != nil {
		t.Fatal(res.Err)
	}
	if h.finished[7] != host.AgentStarted {
		t.Fatalf("finished %v", h.finished)
	}
}

// Finish knows each of our operations by its task's name, whatever the
// size of the plan; it agrees with the plan.
func TestFinishByTaskName(t *testing.T) {
	for op, name := range map[Op]string{OpStop: TaskBatchStopAgents, OpStart: TaskBatchStartAgent, OpRestart: TaskBatchRestartAgent} {
		h := &hosts{finished: map[int64]host.AgentStatus{}}
		r, _ := run(7)
		r.Task.Name = name
		if res := (finishOp{h}).Execute(context.Background(), r); res.Err != nil {
			t.Fatal(res.Err)
		}
		h2 := &hosts{finished: map[int64]host.AgentStatus{}}
		r.Task.Name, r.Task.Subtasks = "", BatchPlan(op, []int64{5, 7}, "ops").Task.Subtasks
		if res := (finishOp{h2}).Execute(context.Background(), r); res.Err != nil {
			t.Fatal(res.Err)
		}
		if h.finished[7] != h2.finished[7] {
			t.Fatalf("%s: by name %v, by plan %v", name, h.finished[7], h2.finished[7])
		}
	}
}

func TestDispatchRollbackSendsTheReverseAction(t *testing.T) {
	for _, tt := range []struct {
		a         action
		wantStart bool
	}{{actionStop, true}, {actionStart, false}} {
		a := &agents{result: fleet.Result{Outcome: fleet.Succeeded, Message: "ok"}}
		r, _ := run(7)
		if res := (dispatch{a, tt.a}).Rollback(context.Background(), r); res.Err != nil {
			t.Fatal(res.Err)
		}
		if (a.sent.StartAgent != nil) != tt.wantStart || (a.sent.StopAgent != nil) == tt.wantStart {
			t.Fatalf("rollback of %s sent %+v", tt.a, a.sent)
		}
	}
}

func TestRestartAndBatchPlans(t *testing.T) {
	p := HostPlan(OpRestart, 7, "ops")
	var names []string
	for _, st := range p.Task.Subtasks {
		names = append(names, fmt.Sprintf("%s/%d", st.Name, st.SeriesID))
	}
	if p.Task.Name != "Restart OCP agent" || strings.Join(names, ",") !=
		"Prepare restart OCP agent/3,Stop all OCP agent processes/2,Start all OCP agent processes/1,Finish OCP agent operation/0" {
		t.Fatalf("restart plan %q: %v", p.Task.Name, names)
	}
	b := BatchPlan(OpStop, []int64{4, 9, 2}, "ops")
	if b.Task.Name != "Batch stop OCP agent" || !b.Task.Context.Parallel || b.Task.HostID != 0 ||
		fmt.Sprint(b.Task.Context.ListMap["host_ids"]) != "[4 9 2]" || fmt.Sprint(b.Resources) != "[host:4 host:9 host:2]" {
		t.Fatalf("batch task %+v locks %v", b.Task, b.Resources)
	}
	if len(b.Task.Subtasks) != 9 || fmt.Sprint(b.Edges) != "[[0 1] [1 2] [3 4] [4 5] [6 7] [7 8]]" {
		t.Fatalf("batch subtasks %d edges %v", len(b.Task.Subtasks), b.Edges)
	}
	for i, st := range b.Task.Subtasks {
		if st.ParallelIdx != i/3 || st.HostID != []int64{4, 9, 2}[i/3] {
			t.Fatalf("subtask %d: parallelIdx %d host %d", i, st.ParallelIdx, st.HostID)
		}
	}
	if BatchPlan(OpRestart, []int64{1}, "ops").Task.Name != "Batch restart OCP agent" {
		t.Fatal("batch restart name")
	}
}

// A batch start is the batch form of "Start OCP agent": a branch per host,
// each the single-host chain, and Finish records the agent STARTED.
func TestBatchStartPlan(t *testing.T) {
	b := BatchPlan(OpStart, []int64{4, 9}, "ops")
	if b.Task.Name != "Batch start OCP agent" || !b.Task.Context.Parallel || b.Task.HostID != 0 ||
		fmt.Sprint(b.Task.Context.ListMap["host_ids"]) != "[4 9]" || fmt.Sprint(b.Resources) != "[host:4 host:9]" {
		t.Fatalf("batch task %+v locks %v", b.Task, b.Resources)
	}
	if fmt.Sprint(b.Edges) != "[[0 1] [1 2] [3 4] [4 5]]" {
		t.Fatalf("batch edges %v", b.Edges)
	}
	single := HostPlan(OpStart, 9, "ops").Task.Subtasks
	var names []string
	for i, st := range b.Task.Subtasks {
		one := single[i%len(single)]
		if st.ParallelIdx != i/3 || st.HostID != []int64{4, 9}[i/3] || st.ClassName != one.ClassName || st.SeriesID != one.SeriesID || st.Timeout != one.Timeout {
			t.Fatalf("subtask %d: %+v, want as %+v", i, st, one)
		}
		names = append(names, st.Name)
	}
	if strings.Join(names[:3], ",") != "Prepare start OCP agent,Start all OCP agent processes,Finish OCP agent operation" {
		t.Fatalf("branch %v", names)
	}
	if !endsStarted[b.Task.Name] {
		t.Fatal("Finish of a batch start must record STARTED")
	}
}

func TestRevokedHostRefused(t *testing.T) {
	ctx := auth.WithPrincipal(context.Background(), auth.Principal{Username: "u", Roles: []auth.Role{auth.RoleHostManager}})
	h := &revokedHosts{hosts: hosts{known: map[int64]bool{1: true, 2: true}}, revoked: 2}
	s := NewService(h, &submitter{})
	if _, err := s.StopAgent(ctx, 2); !errors.Is(err, errs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "revoked") {
		t.Fatalf("stop of a revoked host: %v", err)
	}
	if _, err := s.BatchStopAgents(ctx, []int64{1, 2}); !errors.Is(err, errs.ErrFailedPrecondition) {
		t.Fatalf("batch with a revoked host: %v", err)
	}
	if _, err := s.StopAgent(ctx, 1); err != nil {
		t.Fatalf("stop of a host that is not revoked: %v", err)
	}
}

// revokedHosts is hosts with one revoked.
type revokedHosts struct {
	hosts
	revoked int64
}

func (h *revokedHosts) HostState(ctx context.Context, id int64) (*host.Host, error) {
	return h.GetHost(ctx, id)
}

func (h *revokedHosts) GetHost(ctx context.Context, id int64) (*host.Host, error) {
	got, err := h.hosts.GetHost(ctx, id)
	if err == nil && id == h.revoked {
		got.RevokeTime = time.Unix(1, 0)
	}
	return got, err
}

func TestBatchValidation(t *testing.T) {
	ctx := auth.WithPrincipal(context.Background(), auth.Principal{Username: "u", Roles: []auth.Role{auth.RoleHostManager}})
	s := NewService(&hosts{known: map[int64]bool{1: true, 2: true}}, &submitter{})
	for _, tt := range []struct {
		ids  []int64
		want error
	}{
		{nil, errs.ErrInvalidArgument},
		{[]int64{1, 1}, errs.ErrInvalidArgument},
		{[]int64{1, -2}, errs.ErrInvalidArgument},
		{[]int64{1, 3}, errs.ErrNotFound},
		{make([]int64, MaxBatch+1), errs.ErrInvalidArgument},
		{[]int64{1, 2}, nil},
	} {
		for name, batch := range map[string]func(context.Context, []int64) (*task.Task, error){
			"stop": s.BatchStopAgents, "start": s.BatchStartAgents, "restart": s.BatchRestartAgents,
		} {
			_, err := batch(ctx, tt.ids)
			if !errors.Is(err, tt.want) || tt.want == nil && err != nil {
				t.Errorf("batch %s %v: err %v, want %v", name, tt.ids, err, tt.want)
			}
		}
	}
}

type submitter struct{ plan task.Plan }

func (s *submitter) Submit(_ context.Context, p task.Plan) (*task.Task, error) {
	s.plan = p
	return &p.Task, nil
}

func TestServicePermissions(t *testing.T) {
	as := func(roles ...auth.Role) context.Context {
		return auth.WithPrincipal(context.Background(), auth.Principal{Username: "u", Roles: roles})
	}
	h := &hosts{known: map[int64]bool{7: true}}
	sub := &submitter{}
	s := NewService(h, sub)
	tests := []struct {
		name string
		ctx  context.Context
		id   int64
		want error
	}{
		{"manager", as(auth.RoleHostManager), 7, nil},
		{"admin", as(auth.RoleAdmin), 7, nil},
		{"viewer", as(auth.RoleHostViewer), 7, errs.ErrPermissionDenied},
		{"task manager", as(auth.RoleTaskManager), 7, errs.ErrPermissionDenied},
		{"anonymous", context.Background(), 7, errs.ErrUnauthenticated},
		{"bad id", as(auth.RoleHostManager), 0, errs.ErrInvalidArgument},
		{"unknown host", as(auth.RoleHostManager), 9, errs.ErrNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := s.StopAgent(tt.ctx, tt.id)
			if !errors.Is(err, tt.want) || (tt.want == nil && err != nil) {
				t.Fatalf("err %v, want %v", err, tt.want)
			}
		})
	}
	if sub.plan.Task.Creator != "u" {
		t.Fatalf("creator %q", sub.plan.Task.Creator)
	}
	if _, err := s.BatchStartAgents(as(auth.RoleHostViewer), []int64{7}); !errors.Is(err, errs.ErrPermissionDenied) {
		t.Fatalf("viewer's batch start: %v", err)
	}
	if _, err := s.GetHost(as(auth.RoleHostViewer), 7); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ListHosts(as(auth.RoleTaskViewer), host.ListQuery{}); !errors.Is(err, errs.ErrPermissionDenied) {
		t.Fatalf("task viewer listing hosts: %v", err)
	}
}
