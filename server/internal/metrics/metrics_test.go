package metrics

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"agentplane/internal/metrics"
	"agentplane/server/internal/agentop"
	"agentplane/server/internal/errs"
	"agentplane/server/internal/fleet"
	"agentplane/server/internal/task"
)

func newTest(t *testing.T) (*Server, *prometheus.Registry) {
	t.Helper()
	reg := metrics.NewRegistry()
	return New(reg), reg
}

// histCount is the number of observations of one histogram series.
func histCount(t *testing.T, o prometheus.Observer) uint64 {
	t.Helper()
	var m dto.Metric
	if err := o.(prometheus.Metric).Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetHistogram().GetSampleCount()
}

// fakeTaskStore answers CreateTask and UpdateTask; the rest panics (nil
// embedded interface): the decorator must not call it.
type fakeTaskStore struct {
	task.Store
	created *task.Task
	existed bool
	err     error
}

func (f *fakeTaskStore) CreateTask(context.Context, task.Plan) (*task.Task, bool, error) {
	return f.created, f.existed, f.err
}

func (f *fakeTaskStore) UpdateTask(context.Context, *task.Task, *task.Task, []task.Resource, ...task.SubtaskLogLine) error {
	return f.err
}

func TestTaskStore(t *testing.T) {
	m, reg := newTest(t)
	fake := &fakeTaskStore{created: &task.Task{ID: 7, Name: agentop.TaskStopAgent, Type: task.TypeManual}}
	s := m.TaskStore(fake)
	ctx := context.Background()
	created := m.tasks.created.WithLabelValues(agentop.TaskStopAgent, "MANUAL")

	if _, _, err := s.CreateTask(ctx, task.Plan{}); err != nil {
		t.Fatal(err)
	}
	fake.existed = true // an idempotent repeat
	_, _, _ = s.CreateTask(ctx, task.Plan{})
	fake.existed, fake.err = false, errors.New("disk full")
	_, _, _ = s.CreateTask(ctx, task.Plan{})
	if got := testutil.ToFloat64(created); got != 1 {
		t.Errorf("tasks_created_total = %v, want 1 (repeats and failures not counted)", got)
	}

	start := time.Unix(1000, 0)
	sub := func(id int64, name string, st task.SubtaskStatus, run int, took time.Duration) task.Subtask {
		s := task.Subtask{ID: id, Name: name, Status: st, RunTime: run}
		if st != task.SubtaskPending {
			s.StartTime = start
		}
		if st == task.SubtaskSuccessful || st == task.SubtaskFailed {
			s.EndTime = start.Add(took)
		}
		return s
	}
	before := &task.Task{ID: 7, Name: agentop.TaskStopAgent, Type: task.TypeManual, Status: task.StatusRunning, Subtasks: []task.Subtask{
		sub(1, agentop.NamePrepareStop, task.SubtaskSuccessful, 1, time.Second),
		sub(2, agentop.NameStopAll, task.SubtaskRunning, 1, 0),
		sub(3, agentop.NameFinish, task.SubtaskPending, 1, 0),
	}}
	after := &task.Task{ID: 7, Name: agentop.TaskStopAgent, Type: task.TypeManual, Status: task.StatusSuccessful, Subtasks: []task.Subtask{
		sub(1, agentop.NamePrepareStop, task.SubtaskSuccessful, 1, time.Second), // ended before: not again
		sub(2, agentop.NameStopAll, task.SubtaskSuccessful, 1, 3*time.Second),
		sub(3, agentop.NameFinish, task.SubtaskFailed, 1, 2*time.Second),
	}}
	fake.err = errors.New("changed")
	_ = s.UpdateTask(ctx, before, after, nil) // not stored: nothing counted
	fake.err = nil
	if err := s.UpdateTask(ctx, before, after, nil); err != nil {
		t.Fatal(err)
	}
	_ = s.UpdateTask(ctx, after, after, nil) // a later step: nothing new ended

	if got := testutil.ToFloat64(m.tasks.ended.WithLabelValues(agentop.TaskStopAgent, "MANUAL", "SUCCESSFUL")); got != 1 {
		t.Errorf("tasks_ended_total{SUCCESSFUL} = %v, want 1", got)
	}
	for _, c := range []struct {
		name, status string
		want         uint64
	}{
		{agentop.NamePrepareStop, "SUCCESSFUL", 0},
		{agentop.NameStopAll, "SUCCESSFUL", 1},
		{agentop.NameFinish, "FAILED", 1},
	} {
		if got := histCount(t, m.tasks.subtask.WithLabelValues(c.name, c.status)); got != c.want {
			t.Errorf("subtask_duration_seconds_count{%s,%s} = %d, want %d", c.name, c.status, got, c.want)
		}
	}
	var sum dto.Metric
	_ = m.tasks.subtask.WithLabelValues(agentop.NameStopAll, "SUCCESSFUL").(prometheus.Metric).Write(&sum)
	if got := sum.GetHistogram().GetSampleSum(); got != 3 {
		t.Errorf("subtask duration sum = %v s, want 3", got)
	}
	lint(t, reg)
}

// fakeFleet admits every hello but "refused"; Receive fails a result.
type fakeFleet struct{}

func (fakeFleet) Connect(_ context.Context, h fleet.Hello) (*fleet.Session, fleet.Welcome, error) {
	if h.HostName == "refused" {
		return nil, fleet.Welcome{}, fmt.Errorf("revoked: %w", errs.ErrPermissionDenied)
	}
	return &fleet.Session{}, fleet.Welcome{}, nil
}

func (fakeFleet) Receive(_ context.Context, _ *fleet.Session, m fleet.Inbound) error {
	if m.Result != nil {
		return fmt.Errorf("bad result: %w", errs.ErrInvalidArgument)
	}
	return nil
}

func (fakeFleet) Disconnect(*fleet.Session) {}

func TestFleet(t *testing.T) {
	m, reg := newTest(t)
	f := m.Fleet(fakeFleet{})
	ctx := context.Background()
	s1, _, err := f.Connect(ctx, fleet.Hello{HostName: "a"})
	if err != nil {
		t.Fatal(err)
	}
	s2, _, _ := f.Connect(ctx, fleet.Hello{HostName: "b"})
	if _, _, err := f.Connect(ctx, fleet.Hello{HostName: "refused"}); err == nil {
		t.Fatal("refused hello admitted")
	}
	if got := testutil.ToFloat64(m.agents.connected); got != 2 {
		t.Errorf("agents_connected = %v, want 2", got)
	}
	f.Disconnect(s1)
	f.Disconnect(s1) // the stream adapter may disconnect twice
	if got := testutil.ToFloat64(m.agents.connected); got != 1 {
		t.Errorf("agents_connected after a disconnect = %v, want 1", got)
	}
	_ = f.Receive(ctx, s2, fleet.Inbound{Heartbeat: &fleet.Heartbeat{}})
	_ = f.Receive(ctx, s2, fleet.Inbound{Heartbeat: &fleet.Heartbeat{}})
	_ = f.Receive(ctx, s2, fleet.Inbound{Result: &fleet.Result{}})
	for kind, want := range map[string]float64{"hello": 3, "heartbeat": 2, "result": 1, "progress": 0} {
		if got := testutil.ToFloat64(m.agents.messages.WithLabelValues(kind)); got != want {
			t.Errorf("agent_stream_messages_total{kind=%q} = %v, want %v", kind, got, want)
		}
	}
	for kind, want := range map[string]float64{"permission_denied": 1, "invalid_argument": 1, "internal": 0} {
		if got := testutil.ToFloat64(m.agents.errors.WithLabelValues(kind)); got != want {
			t.Errorf("agent_stream_errors_total{kind=%q} = %v, want %v", kind, got, want)
		}
	}
	lint(t, reg)
}

// fakeAgents answers every dispatch with outcome, or err.
type fakeAgents struct {
	agentop.Agents
	outcome fleet.Outcome
	err     error
}

func (f fakeAgents) Dispatch(context.Context, int64, fleet.Command) (fleet.Result, error) {
	return fleet.Result{Outcome: f.outcome}, f.err
}

func TestAgentsDispatch(t *testing.T) {
	m, reg := newTest(t)
	stop := fleet.Command{StopAgent: &fleet.StopAgent{}}
	_, _ = m.Agents(fakeAgents{outcome: fleet.Succeeded}).Dispatch(context.Background(), 1, stop)
	_, _ = m.Agents(fakeAgents{outcome: fleet.Failed}).Dispatch(context.Background(), 1, fleet.Command{StartAgent: &fleet.StartAgent{}})
	_, _ = m.Agents(fakeAgents{err: errors.New("agentd lost")}).Dispatch(context.Background(), 1, stop)
	for _, c := range [][2]string{{"stop_agent", "succeeded"}, {"start_agent", "failed"}, {"stop_agent", "error"}} {
		if got := histCount(t, m.agents.dispatch.WithLabelValues(c[0], c[1])); got != 1 {
			t.Errorf("dispatch_duration_seconds_count{%s,%s} = %d, want 1", c[0], c[1], got)
		}
	}
	lint(t, reg)
}

func TestCommitAuthHTTP(t *testing.T) {
	m, reg := newTest(t)
	m.ObserveCommit(5, 2, 3*time.Millisecond)
	m.ObserveCommit(1, 0, time.Millisecond)
	if got := testutil.ToFloat64(m.store.writes.WithLabelValues("committed")); got != 4 {
		t.Errorf("store_writes_total{committed} = %v, want 4", got)
	}
	if got := testutil.ToFloat64(m.store.writes.WithLabelValues("failed")); got != 2 {
		t.Errorf("store_writes_total{failed} = %v, want 2", got)
	}
	if got := histCount(t, m.store.group); got != 2 {
		t.Errorf("store_commit_writes_count = %d, want 2", got)
	}

	m.AuthFailed("password")
	m.AuthFailed("password")
	m.AuthThrottled("access_key", true)
	m.AuthThrottled("password", false)
	m.AuthFailed("made-up")
	for labels, want := range map[[2]string]float64{
		{"password", ""}: 2, {"access_key", ""}: 0, {metrics.Other, ""}: 1,
		{"access_key", "refused"}: 1, {"password", "delayed"}: 1, {"password", "refused"}: 0,
	} {
		var got float64
		if labels[1] == "" {
			got = testutil.ToFloat64(m.auth.failures.WithLabelValues(labels[0]))
		} else {
			got = testutil.ToFloat64(m.auth.throttled.WithLabelValues(labels[0], labels[1]))
		}
		if got != want {
			t.Errorf("auth %v = %v, want %v", labels, got, want)
		}
	}

	const route = "/api/v2/compute/hosts/{hostId}/agent/stop"
	m.ObserveRequest("POST", route, 200, 10*time.Millisecond)
	m.ObserveRequest("BREW", "", 401, time.Millisecond)
	if got := testutil.ToFloat64(m.http.requests.WithLabelValues("POST", route, "200")); got != 1 {
		t.Errorf("http_requests_total{POST,stop,200} = %v, want 1", got)
	}
	if got := testutil.ToFloat64(m.http.requests.WithLabelValues("OTHER", "none", "401")); got != 1 {
		t.Errorf("http_requests_total{OTHER,none,401} = %v, want 1 (a made-up method is OTHER, no route is none)", got)
	}
	// Routes past the bound collapse into one series.
	for i := range 500 {
		m.ObserveRequest("GET", fmt.Sprintf("/raw/%d", i), 404, time.Millisecond)
	}
	if n := testutil.CollectAndCount(m.http.requests); n > 2*maxLabelValues+3 {
		t.Errorf("%d series of http_requests_total after 500 distinct routes: the route label is not bounded", n)
	}
	lint(t, reg)
}

func TestTasksRunning(t *testing.T) {
	n := 3
	g := TasksRunning(func() int { return n })
	if got := testutil.ToFloat64(g); got != 3 {
		t.Errorf("tasks_running = %v, want 3", got)
	}
	n = 0
	if got := testutil.ToFloat64(g); got != 0 {
		t.Errorf("tasks_running = %v, want 0", got)
	}
}

func TestLogLinesDropped(t *testing.T) {
	var n int64 = 2
	reg := metrics.NewRegistry()
	c := LogLinesDropped(func() int64 { return n })
	reg.MustRegister(c)
	if got := testutil.ToFloat64(c); got != 2 {
		t.Errorf("subtask_log_lines_dropped_total = %v, want 2", got)
	}
	n = 5
	if got := testutil.ToFloat64(c); got != 5 {
		t.Errorf("subtask_log_lines_dropped_total = %v, want 5", got)
	}
	lint(t, reg)
}

// lint fails on anything promlint finds in what reg gathers.
func lint(t *testing.T, reg prometheus.Gatherer) {
	t.Helper()
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		if strings.HasPrefix(p.Metric, "go_") || strings.HasPrefix(p.Metric, "process_") {
			continue // client_golang's own
		}
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
}
