package rest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"agentplane/server/internal/agentop"
	"agentplane/server/internal/audit"
	"agentplane/server/internal/auth"
	"agentplane/server/internal/host"
	"agentplane/server/internal/store"
	"agentplane/server/internal/task"
)

// The audit record end to end: the real middleware, host service (agentop)
// and audit service over a real store; tasks are created by a fake
// submitter.

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

type auditEnv struct {
	*testEnv
	store  *store.Store
	hostID int64
}

func adminOnly(ctx context.Context) error { return auth.Require(ctx, auth.RoleAdmin) }

// newAuditEnv serves the REST API with auditing; with auditStore nil the
// record goes to the store.
func newAuditEnv(t *testing.T, auditStore audit.Store) *auditEnv {
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
	env := &auditEnv{testEnv: &testEnv{tasks: &fakeTasks{}, logs: &syncBuffer{}}, store: st, hostID: h.ID}
	log := zerolog.New(env.logs)
	handler := NewHandler(Config{
		Hosts: agentop.NewService(st, &submitter{}),
		Tasks: env.tasks,
		Users: fakeUsers{}, // the middleware gives the Note the principal
		Log:   log,
		Audit: audit.NewService(auditStore, log, adminOnly),
	})
	env.srv = httptest.NewServer(handler)
	t.Cleanup(env.srv.Close)
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

func TestAuditRecordsMutatingCalls(t *testing.T) {
	env := newAuditEnv(t, nil)
	stop := fmt.Sprintf("/compute/hosts/%d/agent/stop", env.hostID)
	const stopOp = "POST /compute/hosts/{hostId}/agent/stop"
	tests := []struct {
		name    string
		rq      req
		status  int
		want    audit.Event // ID, Time, SourceAddr, TaskID of a created task checked apart; Message: its end
		hasTask bool
	}{
		{"stop", req{method: "POST", path: stop, user: "manager"}, 200,
			audit.Event{Username: "manager", Operation: stopOp, HostID: env.hostID, Outcome: "OK"}, true},
		{"stop under /api/v2", req{method: "POST", path: "/api/v2" + stop, user: "operator"}, 200,
			audit.Event{Username: "operator", Operation: stopOp, HostID: env.hostID, Outcome: "OK"}, true},
		{"batch", req{method: "POST", path: "/compute/hosts/batchRestartAgents", user: "manager",
			body: fmt.Sprintf(`{"hostIds":[%d]}`, env.hostID), contentType: "application/json"}, 200,
			audit.Event{Username: "manager", Operation: "POST /compute/hosts/batchRestartAgents", Outcome: "OK"}, true},
		{"batch start", req{method: "POST", path: "/api/v2/compute/hosts/batchStartAgents", user: "manager",
			body: fmt.Sprintf(`{"hostIds":[%d]}`, env.hostID), contentType: "application/json"}, 200,
			audit.Event{Username: "manager", Operation: "POST /compute/hosts/batchStartAgents", Outcome: "OK"}, true},
		{"lacks the role", req{method: "POST", path: stop, user: "viewer"}, 403,
			audit.Event{Username: "viewer", Operation: stopOp, HostID: env.hostID, Outcome: "PERMISSION_DENIED",
				Message: `user "viewer" lacks role HOST_MANAGER: permission denied`}, false},
		{"no credentials", req{method: "POST", path: stop}, 401,
			audit.Event{Operation: stopOp, HostID: env.hostID, Outcome: "UNAUTHENTICATED",
				Message: "unauthenticated"}, false},
		{"wrong password", req{method: "POST", path: "/compute/hosts/77/agent/start", user: "mallory"}, 401,
			audit.Event{Operation: "POST /compute/hosts/{hostId}/agent/start", HostID: 77, Target: "user:mallory",
				Outcome: "UNAUTHENTICATED", Message: "Invalid username or password."}, false},
		{"unknown host", req{method: "POST", path: "/compute/hosts/404/agent/restart", user: "manager"}, 404,
			audit.Event{Username: "manager", Operation: "POST /compute/hosts/{hostId}/agent/restart", HostID: 404,
				Outcome: "NOT_FOUND", Message: "host 404: not found"}, false},
		{"bad id", req{method: "POST", path: "/compute/hosts/abc/agent/stop", user: "manager"}, 400,
			audit.Event{Username: "manager", Operation: stopOp, Outcome: "INVALID_ARGUMENT",
				Message: `hostId must be a positive 64-bit integer in plain decimal digits (no sign, no leading zero), got "abc": invalid argument`}, false},
		{"task operation refused", req{method: "POST", path: "/tasks/instances/20003/retry", user: "tasker"}, 400,
			audit.Event{Username: "tasker", Operation: "POST /tasks/instances/{taskInstanceId}/retry", TaskID: 20003,
				Outcome: "FAILED_PRECONDITION", Message: "task 20003: cannot retry: task is RUNNING: operation not allowed in this state"}, false},
		{"wrong method", req{method: "DELETE", path: stop, user: "manager"}, 405,
			audit.Event{Username: "manager", Operation: "DELETE /compute/hosts/{hostId}/agent/stop", HostID: env.hostID,
				Outcome: "METHOD_NOT_ALLOWED", Message: "method not allowed; allowed: POST"}, false},
		{"no route", req{method: "PUT", path: "/nowhere/secret-looking-path", user: "manager"}, 404,
			audit.Event{Username: "manager", Operation: "PUT /", Outcome: "NOT_FOUND",
				Message: "PUT /nowhere/secret-looking-path: no such API path"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := len(env.events(t))
			r := env.do(t, tt.rq)
			if r.status != tt.status {
				t.Fatalf("status %d, want %d: %s", r.status, tt.status, r.raw)
			}
			// The response is complete only once the record is stored.
			evs := env.events(t)
			if len(evs) != before+1 {
				t.Fatalf("%d events recorded, want 1", len(evs)-before)
			}
			got := evs[0]
			if time.Since(got.Time) > time.Minute || got.ID == 0 {
				t.Errorf("time %v id %d", got.Time, got.ID)
			}
			if h, _, err := net.SplitHostPort(got.SourceAddr); err != nil || h != "127.0.0.1" {
				t.Errorf("source address %q", got.SourceAddr)
			}
			if tt.hasTask {
				data, _ := r.body["data"].(map[string]any)
				if id, _ := data["id"].(float64); int64(id) != got.TaskID {
					t.Errorf("task id %d, the response's %v", got.TaskID, data["id"])
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
	env := newAuditEnv(t, nil)
	for _, path := range []string{
		fmt.Sprintf("/compute/hosts/%d", env.hostID), fmt.Sprintf("/compute/hosts/%d/agent", env.hostID),
		"/compute/hosts", "/tasks/instances", "/audit/events", "/api/v2/audit/events",
	} {
		if r := env.do(t, req{method: "GET", path: path, user: "admin"}); r.status != 200 {
			t.Fatalf("GET %s: %d %s", path, r.status, r.raw)
		}
		env.do(t, req{method: "GET", path: path}) // 401, not recorded either
	}
	env.do(t, req{method: "HEAD", path: "/compute/hosts", user: "admin"})
	if evs := env.events(t); len(evs) != 0 {
		t.Fatalf("reads recorded: %+v", evs)
	}
}

func TestAuditWriteFailureDoesNotFailTheCall(t *testing.T) {
	env := newAuditEnv(t, failingAuditStore{})
	r := env.do(t, req{method: "POST", path: fmt.Sprintf("/compute/hosts/%d/agent/stop", env.hostID), user: "manager"})
	if r.status != 200 {
		t.Fatalf("status %d: %s", r.status, r.raw)
	}
	if logs := env.logs.String(); !strings.Contains(logs, "audit event not recorded") || !strings.Contains(logs, "database is locked") {
		t.Fatalf("no error logged: %s", logs)
	}
	// Reading the record fails as an internal error, without details.
	r = env.do(t, req{method: "GET", path: "/audit/events", user: "admin"})
	checkErrorEnvelope(t, r, 500)
	if strings.Contains(r.raw, "locked") {
		t.Errorf("store error leaked: %s", r.raw)
	}
}

func TestListAuditEvents(t *testing.T) {
	env := newAuditEnv(t, nil)
	stop := fmt.Sprintf("/compute/hosts/%d/agent/stop", env.hostID)
	env.do(t, req{method: "POST", path: stop, user: "viewer"})                                     // PERMISSION_DENIED
	env.do(t, req{method: "POST", path: stop, user: "manager"})                                    // OK
	env.do(t, req{method: "POST", path: stop, user: "manager"})                                    // OK, another task
	env.do(t, req{method: "POST", path: "/tasks/instances/20003/rollback", user: "tasker"})        // FAILED_PRECONDITION
	env.do(t, req{method: "POST", path: "/compute/hosts/77/agent/start"})                          // UNAUTHENTICATED
	env.do(t, req{method: "POST", path: fmt.Sprintf("/compute/hosts/%d/agent/start", env.hostID)}) // UNAUTHENTICATED
	all := env.events(t)
	if len(all) != 6 {
		t.Fatalf("%d events", len(all))
	}

	for _, user := range []string{"manager", "viewer", "tasker"} {
		checkErrorEnvelope(t, env.do(t, req{method: "GET", path: "/audit/events", user: user}), 403)
	}
	checkErrorEnvelope(t, env.do(t, req{method: "GET", path: "/audit/events"}), 401)

	iso := func(t time.Time) string { return formatTime(t) }
	// The window starts at event 4's millisecond: events in that same
	// millisecond (event 5, on a fast machine) are in it too.
	var window []int64
	for _, e := range all {
		if !e.Time.Before(all[4].Time.Truncate(time.Millisecond)) {
			window = append(window, e.ID)
		}
	}
	tests := []struct {
		name   string
		query  string
		ids    []int64 // expected, in order
		total  int64
		number int
		size   int
	}{
		{"all, newest first", "", []int64{all[0].ID, all[1].ID, all[2].ID, all[3].ID, all[4].ID, all[5].ID}, 6, 1, 20},
		{"page 2 of size 4", "?page=2&size=4", []int64{all[4].ID, all[5].ID}, 6, 2, 4},
		{"username", "?username=manager", []int64{all[3].ID, all[4].ID}, 2, 1, 20},
		{"operation part", "?operation=agent/START", []int64{all[0].ID, all[1].ID}, 2, 1, 20},
		{"host", fmt.Sprintf("?hostId=%d", env.hostID), []int64{all[0].ID, all[3].ID, all[4].ID, all[5].ID}, 4, 1, 20},
		{"task", fmt.Sprintf("?taskId=%d", all[4].TaskID), []int64{all[4].ID}, 1, 1, 20},
		{"outcome", "?outcome=UNAUTHENTICATED", []int64{all[0].ID, all[1].ID}, 2, 1, 20},
		{"outcome and host", fmt.Sprintf("?outcome=UNAUTHENTICATED&hostId=%d", env.hostID), []int64{all[0].ID}, 1, 1, 20},
		{"time window", "?startTime=" + urlQuery(iso(all[4].Time)) + "&endTime=" + urlQuery(iso(all[0].Time.Add(time.Millisecond))),
			window, int64(len(window)), 1, 20},
		{"unencoded plus", "?startTime=" + strings.ReplaceAll(all[0].Time.Add(time.Hour).In(time.FixedZone("", 8*3600)).Format(TimeLayout), "+", "%20"),
			[]int64{}, 0, 1, 20},
		{"nothing before", "?endTime=2001-01-01T00:00:00Z", []int64{}, 0, 1, 20},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := env.do(t, req{method: "GET", path: "/api/v2/audit/events" + tt.query, user: "admin"})
			if r.status != 200 {
				t.Fatalf("status %d: %s", r.status, r.raw)
			}
			checkCommon(t, r)
			data := r.body["data"].(map[string]any)
			page := data["page"].(map[string]any)
			if page["totalElements"] != float64(tt.total) || page["number"] != float64(tt.number) || page["size"] != float64(tt.size) {
				t.Errorf("page %v", page)
			}
			var ids []int64
			for _, c := range data["contents"].([]any) {
				ids = append(ids, int64(c.(map[string]any)["id"].(float64)))
			}
			if fmt.Sprint(ids) != fmt.Sprint(tt.ids) {
				t.Errorf("ids %v, want %v", ids, tt.ids)
			}
		})
	}

	// One event's shape.
	r := env.do(t, req{method: "GET", path: "/audit/events?outcome=OK", user: "admin"})
	ev := r.body["data"].(map[string]any)["contents"].([]any)[0].(map[string]any)
	want := map[string]any{
		"id": float64(all[3].ID), "username": "manager", "accessKeyId": "", "operation": "POST /compute/hosts/{hostId}/agent/stop",
		"hostId": float64(env.hostID), "taskId": float64(all[3].TaskID), "target": "", "outcome": "OK", "message": "",
	}
	for k, v := range ev {
		switch k {
		case "time":
			if s, _ := v.(string); !timeRE.MatchString(s) {
				t.Errorf("time %v", v)
			}
		case "sourceAddress":
			if s, _ := v.(string); !strings.HasPrefix(s, "127.0.0.1:") {
				t.Errorf("sourceAddress %v", v)
			}
		default:
			if want[k] != v {
				t.Errorf("%s = %v, want %v", k, v, want[k])
			}
			delete(want, k)
		}
	}
	if len(want) != 0 {
		t.Errorf("missing fields %v", want)
	}

	for _, bad := range []struct{ query, target string }{
		{"?page=0", "page"}, {"?size=2001", "size"}, {"?hostId=abc", "hostId"}, {"?taskId=-1", "taskId"},
		{"?startTime=yesterday", "startTime"}, {"?endTime=2026-01-01", "endTime"},
	} {
		r := env.do(t, req{method: "GET", path: "/audit/events" + bad.query, user: "admin"})
		checkErrorEnvelope(t, r, 400)
		if got := r.body["error"].(map[string]any)["target"]; got != bad.target {
			t.Errorf("%s: target %v, want %s", bad.query, got, bad.target)
		}
	}
	r = env.do(t, req{method: "GET", path: "/audit/events?startTime=2026-01-02T00:00:00Z&endTime=2026-01-01T00:00:00Z", user: "admin"})
	checkErrorEnvelope(t, r, 400)
}

// urlQuery escapes a query value.
func urlQuery(s string) string { return strings.NewReplacer("+", "%2B", ":", "%3A").Replace(s) }

func TestPatternID(t *testing.T) {
	tests := []struct {
		pattern, path, name string
		want                int64
	}{
		{"/compute/hosts/{hostId}/agent/stop", "/compute/hosts/12/agent/stop", "hostId", 12},
		{"/compute/hosts/{hostId}/agent/stop", "/compute/hosts/12/agent/stop", "taskInstanceId", 0},
		{"/compute/hosts/{hostId}/agent/stop", "/compute/hosts/-3/agent/stop", "hostId", 0},
		{"/compute/hosts/{hostId}/agent/stop", "/compute/hosts/x/agent/stop", "hostId", 0},
		{"/compute/hosts/{hostId}", "/compute/hosts/12/agent", "hostId", 0},
		{"/tasks/instances/{taskInstanceId}/subtasks/{subtaskInstanceId}/skip", "/tasks/instances/5/subtasks/6/skip", "taskInstanceId", 5},
		{"/", "/compute/hosts/12", "hostId", 0},
	}
	for _, tt := range tests {
		if got := patternID(tt.pattern, tt.path, tt.name); got != tt.want {
			t.Errorf("patternID(%q, %q, %q) = %d, want %d", tt.pattern, tt.path, tt.name, got, tt.want)
		}
	}
}

func TestNoAuditWithoutAuditor(t *testing.T) {
	env := newTestEnv(t) // no Config.Audit
	checkErrorEnvelope(t, env.do(t, req{method: "GET", path: "/audit/events", user: "admin"}), 404)
	if r := env.do(t, req{method: "POST", path: "/compute/hosts/2/agent/stop", user: "manager"}); r.status != http.StatusOK {
		t.Fatalf("stop: %d", r.status)
	}
}
