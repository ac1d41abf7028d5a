package rpc

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	auditv1 "agentplane/gen/agentplane/audit/v1"
	hostv1 "agentplane/gen/agentplane/host/v1"
	taskv1 "agentplane/gen/agentplane/task/v1"
	"agentplane/server/internal/agentop"
	"agentplane/server/internal/audit"
	"agentplane/server/internal/auth"
	"agentplane/server/internal/host"
	"agentplane/server/internal/store"
	"agentplane/server/internal/task"
)

// The audit record over a real gRPC connection: the real authenticator,
// host service (agentop) and audit service over a real store; tasks are
// created by a fake submitter.

// submitter creates tasks with increasing ids, without running them.
type submitter struct {
	mu   sync.Mutex
	next int64
}

func (s *submitter) Submit(_ context.Context, p task.Plan) (*task.Task, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.next++
	t := p.Task
	t.ID, t.Status, t.StartTime, t.Subtasks = 1000+s.next, task.StatusRunning, time.Now(), nil
	return &t, nil
}

// failingAuditStore refuses every write.
type failingAuditStore struct{}

func (failingAuditStore) AddAuditEvent(context.Context, audit.Event) (int64, error) {
	return 0, errors.New("database is locked")
}

func (failingAuditStore) ListAuditEvents(context.Context, audit.Query) (audit.Page, error) {
	return audit.Page{}, errors.New("database is locked")
}

// logBuffer is a log sink safe for the server's goroutines.
type logBuffer struct {
	mu sync.Mutex
	sb strings.Builder
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.sb.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.sb.String()
}

type auditEnv struct {
	store  *store.Store
	hostID int64
	logs   *logBuffer
	hc     hostv1.HostServiceClient
	tc     taskv1.TaskServiceClient
	ac     auditv1.AuditServiceClient
	health healthpb.HealthClient
	conn   *grpc.ClientConn
}

// newAuditEnv serves the API with auditing; with auditStore nil the record
// goes to the store, and with noAudit there is none.
func newAuditEnv(t *testing.T, auditStore audit.Store, noAudit bool) *auditEnv {
	t.Helper()
	st, err := store.Open(context.Background(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	h, err := st.RegisterHost(context.Background(), host.Host{Name: "db-1"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if auditStore == nil {
		auditStore = st
	}
	env := &auditEnv{store: st, hostID: h.ID, logs: &logBuffer{}}
	log := zerolog.New(env.logs)
	cfg := Config{Hosts: agentop.NewService(st, &submitter{}), Tasks: &apiTasks{}, Users: apiUsers{}, Log: log}
	if !noAudit {
		cfg.Audit = audit.NewService(auditStore, log, func(ctx context.Context) error { return auth.Require(ctx, auth.RoleAdmin) })
	}
	conn := serveBufconn(t, cfg)
	env.conn = conn
	env.hc, env.tc = hostv1.NewHostServiceClient(conn), taskv1.NewTaskServiceClient(conn)
	env.ac, env.health = auditv1.NewAuditServiceClient(conn), healthpb.NewHealthClient(conn)
	return env
}

// events returns the stored record, newest first.
func (e *auditEnv) events(t *testing.T) []audit.Event {
	t.Helper()
	p, err := e.store.ListAuditEvents(context.Background(), audit.Query{Page: 1, Size: 2000})
	if err != nil {
		t.Fatal(err)
	}
	return p.Events
}

// anonymous is a call context without credentials.
func anonymous(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestAuditRecordsMutatingCalls(t *testing.T) {
	env := newAuditEnv(t, nil, false)
	const (
		stopOp  = "/agentplane.host.v1.HostService/StopAgent"
		retryOp = "/agentplane.task.v1.TaskService/RetryTask"
	)
	tests := []struct {
		name    string
		call    func() error
		code    codes.Code
		want    audit.Event // ID, Time, SourceAddr and a created task's id checked apart; Message: its end
		created bool
	}{
		{"stop", func() error {
			_, err := env.hc.StopAgent(as(t, "manager"), &hostv1.StopAgentRequest{HostId: env.hostID})
			return err
		}, codes.OK, audit.Event{Username: "manager", Operation: stopOp, HostID: env.hostID, Outcome: "OK"}, true},
		{"batch", func() error {
			_, err := env.hc.BatchStopAgents(as(t, "manager"), &hostv1.BatchStopAgentsRequest{HostIds: []int64{env.hostID}})
			return err
		}, codes.OK, audit.Event{Username: "manager", Operation: "/agentplane.host.v1.HostService/BatchStopAgents", Outcome: "OK"}, true},
		{"batch start", func() error {
			_, err := env.hc.BatchStartAgents(as(t, "manager"), &hostv1.BatchStartAgentsRequest{HostIds: []int64{env.hostID}})
			return err
		}, codes.OK, audit.Event{Username: "manager", Operation: "/agentplane.host.v1.HostService/BatchStartAgents", Outcome: "OK"}, true},
		{"lacks the role", func() error {
			_, err := env.hc.StopAgent(as(t, "viewer"), &hostv1.StopAgentRequest{HostId: env.hostID})
			return err
		}, codes.PermissionDenied, audit.Event{Username: "viewer", Operation: stopOp, HostID: env.hostID,
			Outcome: "PERMISSION_DENIED", Message: `user "viewer" lacks role HOST_MANAGER: permission denied`}, false},
		{"no credentials", func() error {
			_, err := env.hc.StopAgent(anonymous(t), &hostv1.StopAgentRequest{HostId: 77})
			return err
		}, codes.Unauthenticated, audit.Event{Operation: stopOp, HostID: 77, Outcome: "UNAUTHENTICATED",
			Message: "unauthenticated"}, false},
		{"wrong password", func() error {
			_, err := env.hc.RestartAgent(as(t, "mallory"), &hostv1.RestartAgentRequest{HostId: env.hostID})
			return err
		}, codes.Unauthenticated, audit.Event{Operation: "/agentplane.host.v1.HostService/RestartAgent", HostID: env.hostID,
			Target: "user:mallory", Outcome: "UNAUTHENTICATED", Message: "Invalid username or password."}, false},
		{"unknown host", func() error {
			_, err := env.hc.StartAgent(as(t, "manager"), &hostv1.StartAgentRequest{HostId: 404})
			return err
		}, codes.NotFound, audit.Event{Username: "manager", Operation: "/agentplane.host.v1.HostService/StartAgent", HostID: 404,
			Outcome: "NOT_FOUND", Message: "host 404: not found"}, false},
		{"task operation refused", func() error {
			_, err := env.tc.RetryTask(as(t, "tasker"), &taskv1.RetryTaskRequest{Id: apiTaskRunning})
			return err
		}, codes.FailedPrecondition, audit.Event{Username: "tasker", Operation: retryOp, TaskID: apiTaskRunning,
			Outcome: "FAILED_PRECONDITION", Message: "task 20003: cannot RETRY: task is RUNNING: operation not allowed in this state"}, false},
		{"conflict", func() error {
			_, err := env.tc.RetryTask(as(t, "tasker"), &taskv1.RetryTaskRequest{Id: apiTaskHeld})
			return err
		}, codes.Aborted, audit.Event{Username: "tasker", Operation: retryOp, TaskID: apiTaskHeld, Outcome: "CONFLICT",
			Message: "(task 777); wait for it to end or cancel it."}, false},
		{"task operation unauthenticated", func() error {
			_, err := env.tc.RollbackTask(anonymous(t), &taskv1.RollbackTaskRequest{Id: 55})
			return err
		}, codes.Unauthenticated, audit.Event{Operation: "/agentplane.task.v1.TaskService/RollbackTask", TaskID: 55,
			Outcome: "UNAUTHENTICATED", Message: "unauthenticated"}, false},
		{"subtask operation", func() error {
			_, err := env.tc.SkipSubtask(as(t, "tasker"), &taskv1.SkipSubtaskRequest{TaskId: apiTaskOK, SubtaskId: apiSubFailed})
			return err
		}, codes.OK, audit.Event{Username: "tasker", Operation: "/agentplane.task.v1.TaskService/SkipSubtask", TaskID: apiTaskOK,
			Outcome: "OK"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := len(env.events(t))
			checkCode(t, tt.call(), tt.code, "")
			evs := env.events(t)
			if len(evs) != before+1 {
				t.Fatalf("%d events recorded, want 1", len(evs)-before)
			}
			got := evs[0]
			if time.Since(got.Time) > time.Minute || got.ID == 0 || got.SourceAddr == "" {
				t.Errorf("time %v id %d address %q", got.Time, got.ID, got.SourceAddr)
			}
			if tt.created {
				if got.TaskID <= 1000 {
					t.Errorf("task id %d, want the created task's", got.TaskID)
				}
				tt.want.TaskID = got.TaskID
			}
			if !strings.HasSuffix(got.Message, tt.want.Message) {
				t.Errorf("message %q, want it to end with %q", got.Message, tt.want.Message)
			}
			tt.want.ID, tt.want.Time, tt.want.SourceAddr, tt.want.Message = got.ID, got.Time, got.SourceAddr, got.Message
			if got != tt.want {
				t.Errorf("got  %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestAuditIgnoresReads(t *testing.T) {
	env := newAuditEnv(t, nil, false)
	ctx := as(t, "admin")
	if _, err := env.hc.GetHostAgent(ctx, &hostv1.GetHostAgentRequest{HostId: env.hostID}); err != nil {
		t.Fatal(err)
	}
	if _, err := env.hc.ListHosts(ctx, &hostv1.ListHostsRequest{}); err != nil {
		t.Fatal(err)
	}
	_, _ = env.hc.GetHostAgent(anonymous(t), &hostv1.GetHostAgentRequest{HostId: env.hostID}) // refused, not recorded
	if _, err := env.tc.ListTasks(ctx, &taskv1.ListTasksRequest{}); err != nil {
		t.Fatal(err)
	}
	if _, err := env.ac.ListAuditEvents(ctx, &auditv1.ListAuditEventsRequest{}); err != nil {
		t.Fatal(err)
	}
	if _, err := env.health.Check(anonymous(t), &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatal(err)
	}
	if evs := env.events(t); len(evs) != 0 {
		t.Fatalf("reads recorded: %+v", evs)
	}
}

func TestAudited(t *testing.T) {
	for method, want := range map[string]bool{
		"/agentplane.host.v1.HostService/StopAgent":          true,
		"/agentplane.host.v1.HostService/RevokeHost":         true,
		"/agentplane.host.v1.HostService/CreateJoinToken":    true,
		"/agentplane.agent.v1.AgentService/Enroll":           true,
		"/agentplane.agent.v1.AgentService/RenewCertificate": true,
		"/agentplane.iam.v1.IamService/DeleteAccessKey":      true,
		"/agentplane.host.v1.HostService/GetHostAgent":       false,
		"/agentplane.host.v1.HostService/ListHosts":          false,
		"/agentplane.task.v1.TaskService/WatchTask":          false,
		"/agentplane.audit.v1.AuditService/ListAuditEvents":  false,
		"/grpc.health.v1.Health/Check":                       false,
		"/grpc.reflection.v1.ServerReflection/Anything":      false,
	} {
		if got := audited(method); got != want {
			t.Errorf("audited(%s) = %v, want %v", method, got, want)
		}
	}
}

func TestAuditWriteFailureDoesNotFailTheCall(t *testing.T) {
	env := newAuditEnv(t, failingAuditStore{}, false)
	if _, err := env.hc.StopAgent(as(t, "manager"), &hostv1.StopAgentRequest{HostId: env.hostID}); err != nil {
		t.Fatal(err)
	}
	if logs := env.logs.String(); !strings.Contains(logs, "audit event not recorded") || !strings.Contains(logs, "database is locked") {
		t.Fatalf("no error logged: %s", logs)
	}
	_, err := env.ac.ListAuditEvents(as(t, "admin"), &auditv1.ListAuditEventsRequest{})
	checkCode(t, err, codes.Internal, "internal error")
}

func TestListAuditEvents(t *testing.T) {
	env := newAuditEnv(t, nil, false)
	ctx := context.Background()
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for i, e := range []audit.Event{
		{Username: "ops", Operation: "/agentplane.host.v1.HostService/StopAgent", HostID: 2, TaskID: 10, Outcome: "OK"},
		{Username: "viewer", Operation: "/agentplane.host.v1.HostService/StopAgent", HostID: 2, Outcome: "PERMISSION_DENIED", Message: "lacks role"},
		{Username: "ops", Operation: "POST /tasks/instances/{taskInstanceId}/retry", TaskID: 10, Outcome: "OK"},
		{Operation: "/agentplane.host.v1.HostService/StartAgent", HostID: 3, SourceAddr: "10.0.0.9:5000", Outcome: "UNAUTHENTICATED"},
	} {
		e.Time = t0.Add(time.Duration(i) * time.Minute)
		if _, err := env.store.AddAuditEvent(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	for _, user := range []string{"manager", "viewer", "tasker"} {
		_, err := env.ac.ListAuditEvents(as(t, user), &auditv1.ListAuditEventsRequest{})
		checkCode(t, err, codes.PermissionDenied, "lacks role ADMIN")
	}
	_, err := env.ac.ListAuditEvents(anonymous(t), &auditv1.ListAuditEventsRequest{})
	checkCode(t, err, codes.Unauthenticated, "")

	tests := []struct {
		name  string
		req   *auditv1.ListAuditEventsRequest
		users []string
		total int64
	}{
		{"all, newest first", &auditv1.ListAuditEventsRequest{}, []string{"", "ops", "viewer", "ops"}, 4},
		{"page 2 of size 3", &auditv1.ListAuditEventsRequest{Page: 2, Size: 3}, []string{"ops"}, 4},
		{"username", &auditv1.ListAuditEventsRequest{Username: "ops"}, []string{"ops", "ops"}, 2},
		{"operation part", &auditv1.ListAuditEventsRequest{Operation: "stopagent"}, []string{"viewer", "ops"}, 2},
		{"host", &auditv1.ListAuditEventsRequest{HostId: 2}, []string{"viewer", "ops"}, 2},
		{"task", &auditv1.ListAuditEventsRequest{TaskId: 10}, []string{"ops", "ops"}, 2},
		{"outcome", &auditv1.ListAuditEventsRequest{Outcome: "PERMISSION_DENIED"}, []string{"viewer"}, 1},
		{"time window", &auditv1.ListAuditEventsRequest{StartTime: timestamppb.New(t0.Add(time.Minute)),
			EndTime: timestamppb.New(t0.Add(3 * time.Minute))}, []string{"ops", "viewer"}, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := env.ac.ListAuditEvents(as(t, "admin"), tt.req)
			if err != nil {
				t.Fatal(err)
			}
			var users []string
			for _, e := range resp.GetEvents() {
				users = append(users, e.GetUsername())
			}
			if fmt.Sprintf("%q", users) != fmt.Sprintf("%q", tt.users) || resp.GetTotalElements() != tt.total {
				t.Errorf("users %q total %d, want %q total %d", users, resp.GetTotalElements(), tt.users, tt.total)
			}
		})
	}

	resp, err := env.ac.ListAuditEvents(as(t, "admin"), &auditv1.ListAuditEventsRequest{Outcome: "UNAUTHENTICATED"})
	if err != nil || len(resp.GetEvents()) != 1 {
		t.Fatalf("%v %v", resp, err)
	}
	e := resp.GetEvents()[0]
	if e.GetId() == 0 || !e.GetTime().AsTime().Equal(t0.Add(3*time.Minute)) || e.GetSourceAddress() != "10.0.0.9:5000" ||
		e.GetOperation() != "/agentplane.host.v1.HostService/StartAgent" || e.GetHostId() != 3 || e.GetUsername() != "" {
		t.Errorf("event %v", e)
	}

	for name, req := range map[string]*auditv1.ListAuditEventsRequest{
		"negative page":   {Page: -1},
		"size over 2000":  {Size: 2001},
		"negative host":   {HostId: -1},
		"start after end": {StartTime: timestamppb.New(t0), EndTime: timestamppb.New(t0.Add(-time.Second))},
	} {
		_, err := env.ac.ListAuditEvents(as(t, "admin"), req)
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: %v, want InvalidArgument", name, err)
		}
	}
}

func TestNoAuditWithoutAuditor(t *testing.T) {
	env := newAuditEnv(t, nil, true)
	if _, err := env.hc.StopAgent(as(t, "manager"), &hostv1.StopAgentRequest{HostId: env.hostID}); err != nil {
		t.Fatal(err)
	}
	_, err := env.ac.ListAuditEvents(as(t, "admin"), &auditv1.ListAuditEventsRequest{})
	checkCode(t, err, codes.Unimplemented, "")
	if evs := env.events(t); len(evs) != 0 {
		t.Fatalf("recorded without an auditor: %+v", evs)
	}
}

// TestUndecodableRequest: a unary request whose bytes are not its message
// is refused with INVALID_ARGUMENT (after authentication) and recorded; the
// next well-formed call is served as usual.
func TestUndecodableRequest(t *testing.T) {
	env := newAuditEnv(t, nil, false)
	stop := hostv1.HostService_StopAgent_FullMethodName
	for _, tt := range []struct {
		name string
		ctx  context.Context
		body []byte
		code codes.Code
		user string
	}{
		{"truncated varint", as(t, "manager"), []byte{0x08, 0x80}, codes.InvalidArgument, "manager"},
		{"length past the end", as(t, "manager"), []byte{0x0a, 0x05, 0x01}, codes.InvalidArgument, "manager"},
		{"field number 0", as(t, "manager"), []byte{0x00, 0x01}, codes.InvalidArgument, "manager"},
		{"no credentials", context.Background(), []byte{0x08, 0x80}, codes.Unauthenticated, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var out []byte
			err := env.conn.Invoke(tt.ctx, stop, tt.body, &out, grpc.ForceCodec(rawCodec{}))
			checkCode(t, err, tt.code, "")
			if tt.code == codes.InvalidArgument && !strings.Contains(status.Convert(err).Message(), "malformed request") {
				t.Errorf("message %q", status.Convert(err).Message())
			}
			e := env.events(t)[0]
			if e.Operation != stop || e.Outcome != outcomeOf(tt.code) || e.Username != tt.user || e.HostID != 0 {
				t.Fatalf("audit event %+v, want %s %s by %q", e, stop, outcomeOf(tt.code), tt.user)
			}
		})
	}
	if _, err := env.hc.StopAgent(as(t, "manager"), &hostv1.StopAgentRequest{HostId: env.hostID}); err != nil {
		t.Fatal(err)
	}
}
