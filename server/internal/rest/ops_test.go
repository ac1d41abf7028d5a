package rest

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"

	"agentplane/server/internal/errs"
	"agentplane/server/internal/task"
)

// The task and host operations: every route under both prefixes, the
// refusals the domain answers, the query parameters, Idempotency-Key, and
// the JSON shapes of a task page, a subtask log and a HostAgent.

const (
	subtaskURL = "/tasks/instances/%d/subtasks/%d/%s"
	jsonCT     = "application/json"
)

func checkTaskOp(name string, op task.Operation) func(t *testing.T, data any) {
	return func(t *testing.T, data any) {
		t.Helper()
		d := data.(map[string]any)
		if d["name"] != name || d["operation"] != string(op) {
			t.Errorf("task name/operation = %v/%v, want %s/%s", d["name"], d["operation"], name, op)
		}
	}
}

func checkSubtaskOp(id int64, op task.Operation) func(t *testing.T, data any) {
	return func(t *testing.T, data any) {
		t.Helper()
		for _, s := range data.(map[string]any)["subtasks"].([]any) {
			s := s.(map[string]any)
			if s["id"] == float64(id) {
				if s["operation"] != string(op) {
					t.Errorf("subtask %d operation = %v, want %s", id, s["operation"], op)
				}
				return
			}
		}
		t.Errorf("subtask %d not in the task", id)
	}
}

func checkBatch(name string) func(t *testing.T, data any) {
	return func(t *testing.T, data any) {
		t.Helper()
		d := data.(map[string]any)
		ids, _ := json.Marshal(d["context"].(map[string]any)["listMap"].(map[string]any)["host_ids"])
		if d["name"] != name || string(ids) != `["2","3"]` {
			t.Errorf("task name = %v, host_ids = %s; want %s, [\"2\",\"3\"]", d["name"], ids, name)
		}
	}
}

func TestOperationsBothPrefixes(t *testing.T) {
	env := newTestEnv(t)
	batch := `{"hostIds":[2,3]}`
	tests := []struct {
		name   string
		req    req
		wantOp string // the host service call expected, if any
		data   func(t *testing.T, data any)
	}{
		{"start", req{method: "POST", path: "/compute/hosts/2/agent/start", user: "manager"}, "Start OCP agent", checkTaskOp("Start OCP agent", task.OpExecute)},
		{"restart", req{method: "POST", path: "/compute/hosts/2/agent/restart", user: "manager"}, "Restart OCP agent", checkTaskOp("Restart OCP agent", task.OpExecute)},
		{"restart json body", req{method: "POST", path: "/compute/hosts/2/agent/restart", user: "manager", contentType: jsonCT, body: "{}"}, "Restart OCP agent", checkTaskOp("Restart OCP agent", task.OpExecute)},
		{"batch stop", req{method: "POST", path: "/compute/hosts/batchStopAgents", user: "manager", contentType: jsonCT, body: batch}, "Batch stop OCP agent", checkBatch("Batch stop OCP agent")},
		{"batch start", req{method: "POST", path: "/compute/hosts/batchStartAgents", user: "manager", contentType: jsonCT, body: batch}, "Batch start OCP agent", checkBatch("Batch start OCP agent")},
		{"batch restart", req{method: "POST", path: "/compute/hosts/batchRestartAgents", user: "admin", contentType: jsonCT, body: batch}, "Batch restart OCP agent", checkBatch("Batch restart OCP agent")},
		{"host agent", req{method: "GET", path: "/compute/hosts/2/agent", user: "viewer"}, "", checkHostAgent},
		{"list tasks", req{method: "GET", path: "/tasks/instances", user: "viewer"}, "", checkTaskPage},
		{"retry task", req{method: "POST", path: "/tasks/instances/30443/retry", user: "tasker"}, "", checkTaskOp("Stop OCP agent", task.OpRetry)},
		{"rollback task", req{method: "POST", path: "/tasks/instances/30443/rollback", user: "admin"}, "", checkTaskOp("Stop OCP agent", task.OpRollback)},
		{"rollback json body", req{method: "POST", path: "/tasks/instances/30443/rollback", user: "tasker", contentType: jsonCT, body: "{}"}, "", checkTaskOp("Stop OCP agent", task.OpRollback)},
		{"retry subtask", req{method: "POST", path: fmt.Sprintf(subtaskURL, taskOK, subtaskFailed, "retry"), user: "tasker"}, "", checkSubtaskOp(subtaskFailed, task.OpRetry)},
		{"skip subtask", req{method: "POST", path: fmt.Sprintf(subtaskURL, taskOK, subtaskFailed, "skip"), user: "tasker"}, "", checkSubtaskOp(subtaskFailed, task.OpSkip)},
		{"cancel subtask", req{method: "POST", path: fmt.Sprintf(subtaskURL, taskOK, subtaskRunning, "cancel"), user: "tasker"}, "", checkSubtaskOp(subtaskRunning, task.OpCancel)},
		{"subtask log", req{method: "GET", path: fmt.Sprintf(subtaskURL, taskOK, subtaskRunning, "log"), user: "viewer"}, "", checkLog},
	}
	for _, tt := range tests {
		for _, prefix := range []string{"", "/api/v2"} {
			t.Run(tt.name+prefix, func(t *testing.T) {
				rq := tt.req
				rq.path = prefix + rq.path
				r := env.do(t, rq)
				if r.status != 200 {
					t.Fatalf("status = %d; body %s", r.status, r.raw)
				}
				if r.body["successful"] != true || r.body["status"] != float64(200) {
					t.Errorf("successful/status = %v/%v", r.body["successful"], r.body["status"])
				}
				checkCommon(t, r)
				if tt.wantOp != "" {
					if op, _, _ := env.hosts.last(); op != tt.wantOp {
						t.Errorf("host service call = %q, want %q", op, tt.wantOp)
					}
				}
				tt.data(t, r.body["data"])
			})
		}
	}
}

func TestOperationsRefused(t *testing.T) {
	env := newTestEnv(t)
	sub := func(taskID, subtaskID any, op string) string {
		return fmt.Sprintf("/api/v2/tasks/instances/%v/subtasks/%v/%s", taskID, subtaskID, op)
	}
	batchStop := func(user, body string) req {
		return req{method: "POST", path: "/api/v2/compute/hosts/batchStopAgents", user: user, contentType: jsonCT, body: body}
	}
	key := func(vs ...string) map[string][]string { return map[string][]string{"Idempotency-Key": vs} }
	tests := []struct {
		name    string
		req     req
		status  int
		code    int
		target  string
		allow   string
		message string // contained in error.message
	}{
		// Roles: each domain call checks its own.
		{name: "start as viewer", req: req{method: "POST", path: "/compute/hosts/2/agent/start", user: "viewer"}, status: 403, code: CodeNotAuthorized},
		{name: "restart as tasker", req: req{method: "POST", path: "/compute/hosts/2/agent/restart", user: "tasker"}, status: 403, code: CodeNotAuthorized},
		{name: "batch stop as viewer", req: batchStop("viewer", `{"hostIds":[2]}`), status: 403, code: CodeNotAuthorized},
		{name: "batch start as viewer", req: req{method: "POST", path: "/api/v2/compute/hosts/batchStartAgents", user: "viewer", contentType: jsonCT, body: `{"hostIds":[2]}`}, status: 403, code: CodeNotAuthorized},
		{name: "batch start duplicate host ids", req: req{method: "POST", path: "/compute/hosts/batchStartAgents", user: "manager", contentType: jsonCT, body: `{"hostIds":[3,3]}`}, status: 400, code: CodeBadRequest, target: "hostIds", message: "listed twice"},
		{name: "batch start unknown field", req: req{method: "POST", path: "/compute/hosts/batchStartAgents", user: "manager", contentType: jsonCT, body: `{"hostIds":[2],"all":true}`}, status: 400, code: CodeBadRequest, target: "body"},
		{name: "batch restart as viewer", req: req{method: "POST", path: "/compute/hosts/batchRestartAgents", user: "viewer", contentType: jsonCT, body: `{"hostIds":[2]}`}, status: 403, code: CodeNotAuthorized},
		{name: "host agent as tasker", req: req{method: "GET", path: "/compute/hosts/2/agent", user: "tasker"}, status: 403, code: CodeNotAuthorized},
		{name: "retry as viewer", req: req{method: "POST", path: "/api/v2/tasks/instances/30443/retry", user: "viewer"}, status: 403, code: CodeNotAuthorized},
		{name: "rollback as host manager", req: req{method: "POST", path: "/tasks/instances/30443/rollback", user: "manager"}, status: 403, code: CodeNotAuthorized},
		{name: "skip as viewer", req: req{method: "POST", path: sub(taskOK, subtaskFailed, "skip"), user: "viewer"}, status: 403, code: CodeNotAuthorized},
		{name: "cancel as viewer", req: req{method: "POST", path: sub(taskOK, subtaskRunning, "cancel"), user: "viewer"}, status: 403, code: CodeNotAuthorized},
		{name: "list as host manager only", req: req{method: "GET", path: "/tasks/instances", user: "operator"}, status: 403, code: CodeNotAuthorized},
		{name: "log as host manager only", req: req{method: "GET", path: sub(taskOK, subtaskFailed, "log"), user: "operator"}, status: 403, code: CodeNotAuthorized},
		{name: "list unauthenticated", req: req{method: "GET", path: "/tasks/instances", user: "nobody"}, status: 401, code: CodeUnauthenticated},

		// States the domain refuses.
		{name: "retry running task", req: req{method: "POST", path: "/api/v2/tasks/instances/20003/retry", user: "tasker"}, status: 400, code: CodeOperationNotAllowed, target: "taskInstanceId", message: "task is RUNNING"},
		{name: "rollback running task", req: req{method: "POST", path: "/tasks/instances/20003/rollback", user: "tasker"}, status: 400, code: CodeOperationNotAllowed, target: "taskInstanceId"},
		{name: "rollback prohibited", req: req{method: "POST", path: "/api/v2/tasks/instances/20004/rollback", user: "tasker"}, status: 400, code: CodeRollbackProhibited, target: "taskInstanceId", message: "prohibits rollback"},
		{name: "skip running subtask", req: req{method: "POST", path: sub(taskOK, subtaskRunning, "skip"), user: "tasker"}, status: 400, code: CodeOperationNotAllowed, target: "subtaskInstanceId"},
		{name: "cancel failed subtask", req: req{method: "POST", path: sub(taskOK, subtaskFailed, "cancel"), user: "tasker"}, status: 400, code: CodeOperationNotAllowed, target: "subtaskInstanceId"},
		{name: "start on deleting host", req: req{method: "POST", path: "/compute/hosts/412/agent/start", user: "manager"}, status: 400, code: CodeOperationNotAllowed, target: "hostId"},

		// Unknown tasks, subtasks, hosts.
		{name: "retry unknown task", req: req{method: "POST", path: "/api/v2/tasks/instances/77/retry", user: "tasker"}, status: 404, code: CodeTaskNotFound, target: "taskInstanceId"},
		{name: "rollback unknown task", req: req{method: "POST", path: "/tasks/instances/77/rollback", user: "tasker"}, status: 404, code: CodeTaskNotFound, target: "taskInstanceId"},
		{name: "retry subtask of unknown task", req: req{method: "POST", path: sub(77, subtaskFailed, "retry"), user: "tasker"}, status: 404, code: CodeTaskNotFound, target: "taskInstanceId"},
		{name: "retry unknown subtask", req: req{method: "POST", path: sub(taskOK, 5, "retry"), user: "tasker"}, status: 404, code: CodeTaskNotFound, target: "subtaskInstanceId"},
		{name: "skip unknown subtask", req: req{method: "POST", path: sub(taskOK, 3207, "skip"), user: "tasker"}, status: 404, code: CodeTaskNotFound, target: "subtaskInstanceId"},
		{name: "log of unknown task", req: req{method: "GET", path: sub(77, subtaskFailed, "log"), user: "viewer"}, status: 404, code: CodeTaskNotFound, target: "taskInstanceId"},
		{name: "log of unknown subtask", req: req{method: "GET", path: sub(taskOK, 5, "log"), user: "viewer"}, status: 404, code: CodeTaskNotFound, target: "subtaskInstanceId"},
		{name: "agent of unknown host", req: req{method: "GET", path: "/compute/hosts/77/agent", user: "viewer"}, status: 404, code: CodeNotFound, target: "hostId"},
		{name: "start unknown host", req: req{method: "POST", path: "/compute/hosts/404/agent/start", user: "manager"}, status: 404, code: CodeNotFound, target: "hostId"},
		{name: "batch with unknown host", req: batchStop("manager", `{"hostIds":[2,77]}`), status: 404, code: CodeNotFound, target: "hostIds", message: "host 77"},

		// Conflicts name the task that holds the host.
		{name: "restart busy host", req: req{method: "POST", path: "/compute/hosts/409/agent/restart", user: "manager"}, status: 409, code: CodeConflict, target: "hostId", message: "(task 777)"},
		{name: "batch with busy host", req: batchStop("manager", `{"hostIds":[2,409]}`), status: 409, code: CodeConflict, target: "hostIds", message: "(task 777)"},
		{name: "retry task whose host is held", req: req{method: "POST", path: "/tasks/instances/4090/retry", user: "tasker"}, status: 409, code: CodeConflict, message: "(task 777)"},

		// Malformed ids, bodies and headers.
		{name: "task id abc", req: req{method: "POST", path: "/tasks/instances/abc/retry", user: "tasker"}, status: 400, code: CodeBadRequest, target: "taskInstanceId"},
		{name: "subtask id abc", req: req{method: "POST", path: sub(taskOK, "abc", "cancel"), user: "tasker"}, status: 400, code: CodeBadRequest, target: "subtaskInstanceId"},
		{name: "subtask id 0 log", req: req{method: "GET", path: sub(taskOK, 0, "log"), user: "viewer"}, status: 400, code: CodeBadRequest, target: "subtaskInstanceId"},
		{name: "task id 0 of subtask", req: req{method: "POST", path: sub(0, subtaskFailed, "retry"), user: "tasker"}, status: 400, code: CodeBadRequest, target: "taskInstanceId"},
		{name: "host id abc agent", req: req{method: "GET", path: "/compute/hosts/abc/agent", user: "viewer"}, status: 400, code: CodeBadRequest, target: "hostId"},
		{name: "host id 0 start", req: req{method: "POST", path: "/compute/hosts/0/agent/start", user: "manager"}, status: 400, code: CodeBadRequest, target: "hostId"},
		{name: "batch duplicate host ids", req: batchStop("manager", `{"hostIds":[2,3,2]}`), status: 400, code: CodeBadRequest, target: "hostIds", message: "listed twice"},
		{name: "batch no host ids", req: batchStop("manager", `{"hostIds":[]}`), status: 400, code: CodeBadRequest, target: "hostIds"},
		{name: "batch null", req: batchStop("manager", `null`), status: 400, code: CodeBadRequest, target: "hostIds"},
		{name: "batch unknown field", req: batchStop("manager", `{"hostIds":[2],"force":true}`), status: 400, code: CodeBadRequest, target: "body"},
		{name: "batch host ids as strings", req: batchStop("manager", `{"hostIds":["2"]}`), status: 400, code: CodeBadRequest, target: "body"},
		{name: "batch malformed JSON", req: batchStop("manager", `{"hostIds":[2`), status: 400, code: CodeBadRequest, target: "body"},
		{name: "batch empty body", req: batchStop("manager", ""), status: 400, code: CodeBadRequest, target: "body"},
		{name: "batch no content type", req: req{method: "POST", path: "/compute/hosts/batchRestartAgents", user: "manager", body: `{"hostIds":[2]}`}, status: 415, code: CodeUnsupportedMedia},
		{name: "start with form body", req: req{method: "POST", path: "/compute/hosts/2/agent/start", user: "manager", contentType: "application/x-www-form-urlencoded", body: "a=b"}, status: 415, code: CodeUnsupportedMedia},
		{name: "retry with text body", req: req{method: "POST", path: "/tasks/instances/30443/retry", user: "tasker", contentType: "text/plain", body: "please"}, status: 415, code: CodeUnsupportedMedia},
		{name: "cancel with text body", req: req{method: "POST", path: sub(taskOK, subtaskRunning, "cancel"), user: "tasker", contentType: "text/plain", body: "please"}, status: 415, code: CodeUnsupportedMedia},
		{name: "idempotency key empty", req: req{method: "POST", path: "/compute/hosts/2/agent/start", user: "manager", header: key("")}, status: 400, code: CodeBadRequest, target: "Idempotency-Key"},
		{name: "idempotency key too long", req: req{method: "POST", path: "/compute/hosts/2/agent/stop", user: "manager", header: key(strings.Repeat("k", 256))}, status: 400, code: CodeBadRequest, target: "Idempotency-Key"},
		{name: "idempotency key with a tab", req: req{method: "POST", path: "/compute/hosts/2/agent/restart", user: "manager", header: key("a\tb")}, status: 400, code: CodeBadRequest, target: "Idempotency-Key"},
		{name: "idempotency key twice", req: req{method: "POST", path: "/compute/hosts/batchStopAgents", user: "manager", contentType: jsonCT, body: `{"hostIds":[2]}`, header: key("a", "b")}, status: 400, code: CodeBadRequest, target: "Idempotency-Key"},

		// Query parameters of the task list.
		{name: "list status bogus", req: req{method: "GET", path: "/tasks/instances?status=DONE", user: "viewer"}, status: 400, code: CodeBadRequest, target: "status", message: "RUNNING, FAILED, SUCCESSFUL"},
		{name: "list status lowercase", req: req{method: "GET", path: "/tasks/instances?status=running", user: "viewer"}, status: 400, code: CodeBadRequest, target: "status"},
		{name: "list type bogus", req: req{method: "GET", path: "/api/v2/tasks/instances?type=CRON", user: "viewer"}, status: 400, code: CodeBadRequest, target: "type"},
		{name: "list hostId abc", req: req{method: "GET", path: "/tasks/instances?hostId=abc", user: "viewer"}, status: 400, code: CodeBadRequest, target: "hostId"},
		{name: "list hostId 0", req: req{method: "GET", path: "/tasks/instances?hostId=0", user: "viewer"}, status: 400, code: CodeBadRequest, target: "hostId"},
		{name: "list page 0", req: req{method: "GET", path: "/tasks/instances?page=0", user: "viewer"}, status: 400, code: CodeBadRequest, target: "page"},
		{name: "list size 2001", req: req{method: "GET", path: "/tasks/instances?size=2001", user: "viewer"}, status: 400, code: CodeBadRequest, target: "size"},
		{name: "list size 0", req: req{method: "GET", path: "/tasks/instances?size=0", user: "viewer"}, status: 400, code: CodeBadRequest, target: "size"},
		{name: "list sort field", req: req{method: "GET", path: "/tasks/instances?sort=creator", user: "viewer"}, status: 400, code: CodeBadRequest, target: "sort"},
		{name: "list sort direction", req: req{method: "GET", path: "/tasks/instances?sort=id,up", user: "viewer"}, status: 400, code: CodeBadRequest, target: "sort"},
		{name: "list sort empty direction", req: req{method: "GET", path: "/tasks/instances?sort=id,", user: "viewer"}, status: 400, code: CodeBadRequest, target: "sort"},
		{name: "list sort two directions", req: req{method: "GET", path: "/tasks/instances?sort=id,asc,desc", user: "viewer"}, status: 400, code: CodeBadRequest, target: "sort"},
		{name: "list as task manager", req: req{method: "GET", path: "/tasks/instances", user: "tasker"}, status: 200},

		// Methods and paths: batch paths are not host ids.
		{name: "GET batchStopAgents", req: req{method: "GET", path: "/compute/hosts/batchStopAgents", user: "viewer"}, status: 405, code: CodeMethodNotAllowed, allow: "POST"},
		{name: "GET batchStartAgents", req: req{method: "GET", path: "/compute/hosts/batchStartAgents", user: "viewer"}, status: 405, code: CodeMethodNotAllowed, allow: "POST"},
		{name: "GET batchRestartAgents", req: req{method: "GET", path: "/api/v2/compute/hosts/batchRestartAgents", user: "viewer"}, status: 405, code: CodeMethodNotAllowed, allow: "POST"},
		{name: "HEAD batchStopAgents", req: req{method: "HEAD", path: "/compute/hosts/batchStopAgents", user: "viewer"}, status: 405, allow: "POST"},
		{name: "DELETE batchStopAgents", req: req{method: "DELETE", path: "/compute/hosts/batchStopAgents", user: "manager"}, status: 405, code: CodeMethodNotAllowed, allow: "POST"},
		{name: "POST on host", req: req{method: "POST", path: "/compute/hosts/2", user: "manager"}, status: 405, code: CodeMethodNotAllowed, allow: "GET, HEAD"},
		{name: "POST on host agent", req: req{method: "POST", path: "/compute/hosts/2/agent", user: "manager"}, status: 405, code: CodeMethodNotAllowed, allow: "GET, HEAD"},
		{name: "GET on start", req: req{method: "GET", path: "/compute/hosts/2/agent/start", user: "manager"}, status: 405, code: CodeMethodNotAllowed, allow: "POST"},
		{name: "GET on restart", req: req{method: "GET", path: "/api/v2/compute/hosts/2/agent/restart", user: "manager"}, status: 405, code: CodeMethodNotAllowed, allow: "POST"},
		{name: "POST on task list", req: req{method: "POST", path: "/tasks/instances", user: "tasker"}, status: 405, code: CodeMethodNotAllowed, allow: "GET, HEAD"},
		{name: "GET on retry", req: req{method: "GET", path: "/tasks/instances/30443/retry", user: "tasker"}, status: 405, code: CodeMethodNotAllowed, allow: "POST"},
		{name: "GET on rollback", req: req{method: "GET", path: "/api/v2/tasks/instances/30443/rollback", user: "tasker"}, status: 405, code: CodeMethodNotAllowed, allow: "POST"},
		{name: "GET on skip", req: req{method: "GET", path: sub(taskOK, subtaskFailed, "skip"), user: "tasker"}, status: 405, code: CodeMethodNotAllowed, allow: "POST"},
		{name: "DELETE on cancel", req: req{method: "DELETE", path: sub(taskOK, subtaskRunning, "cancel"), user: "tasker"}, status: 405, code: CodeMethodNotAllowed, allow: "POST"},
		{name: "PUT on subtask retry", req: req{method: "PUT", path: sub(taskOK, subtaskFailed, "retry"), user: "tasker"}, status: 405, code: CodeMethodNotAllowed, allow: "POST"},
		{name: "POST on log", req: req{method: "POST", path: sub(taskOK, subtaskFailed, "log"), user: "tasker"}, status: 405, code: CodeMethodNotAllowed, allow: "GET, HEAD"},
		{name: "unknown agent action", req: req{method: "POST", path: "/compute/hosts/2/agent/kill", user: "manager"}, status: 404, code: CodeNotFound},
		{name: "unknown subtask action", req: req{method: "POST", path: sub(taskOK, subtaskFailed, "pause"), user: "tasker"}, status: 404, code: CodeNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := env.do(t, tt.req)
			if r.status != tt.status {
				t.Fatalf("status = %d, want %d; body %s", r.status, tt.status, r.raw)
			}
			if tt.allow != "" && r.header.Get("Allow") != tt.allow {
				t.Errorf("Allow = %q, want %q", r.header.Get("Allow"), tt.allow)
			}
			if tt.status == 200 || tt.req.method == http.MethodHead {
				return
			}
			checkErrorEnvelope(t, r, tt.status)
			e := r.body["error"].(map[string]any)
			if got := int(e["code"].(float64)); got != tt.code {
				t.Errorf("error.code = %d, want %d", got, tt.code)
			}
			if tt.target != "" && e["target"] != tt.target {
				t.Errorf("error.target = %v, want %q", e["target"], tt.target)
			}
			if msg, _ := e["message"].(string); !strings.Contains(msg, tt.message) {
				t.Errorf("error.message = %q, want it to contain %q", msg, tt.message)
			}
		})
	}
}

func TestIdempotencyKeyReachesHostService(t *testing.T) {
	env := newTestEnv(t)
	batch := `{"hostIds":[3,2]}`
	calls := []struct {
		op  string
		req req
		ids []int64
	}{
		{"Stop OCP agent", req{method: "POST", path: "/compute/hosts/2/agent/stop", user: "manager"}, []int64{2}},
		{"Start OCP agent", req{method: "POST", path: "/api/v2/compute/hosts/2/agent/start", user: "manager"}, []int64{2}},
		{"Restart OCP agent", req{method: "POST", path: "/compute/hosts/2/agent/restart", user: "manager"}, []int64{2}},
		{"Batch stop OCP agent", req{method: "POST", path: "/compute/hosts/batchStopAgents", user: "manager", contentType: jsonCT, body: batch}, []int64{3, 2}},
		{"Batch start OCP agent", req{method: "POST", path: "/compute/hosts/batchStartAgents", user: "manager", contentType: jsonCT, body: batch}, []int64{3, 2}},
		{"Batch restart OCP agent", req{method: "POST", path: "/api/v2/compute/hosts/batchRestartAgents", user: "manager", contentType: jsonCT, body: batch}, []int64{3, 2}},
	}
	for _, c := range calls {
		for _, k := range []string{"", "req-2021-09-03 #1"} {
			t.Run(c.op+"/"+k, func(t *testing.T) {
				rq := c.req
				if k != "" {
					rq.header = map[string][]string{"Idempotency-Key": {k}}
				}
				if r := env.do(t, rq); r.status != 200 {
					t.Fatalf("status = %d: %s", r.status, r.raw)
				}
				op, key, ids := env.hosts.last()
				if op != c.op || key != k || !slices.Equal(ids, c.ids) {
					t.Errorf("host service got %q key %q ids %v, want %q key %q ids %v", op, key, ids, c.op, k, c.ids)
				}
			})
		}
	}
}

func TestListTasksQuery(t *testing.T) {
	env := newTestEnv(t)
	tests := []struct {
		query      string
		want       task.ListQuery
		count      int
		totalPages int
	}{
		{"", task.ListQuery{Page: 1, Size: 20}, 20, 3},
		{"?page=3", task.ListQuery{Page: 3, Size: 20}, 1, 3},
		{"?name=Stop%20OCP&status=FAILED&type=MANUAL&hostId=2&page=2&size=10&sort=startTime,desc",
			task.ListQuery{Name: "Stop OCP", Status: task.StatusFailed, Type: task.TypeManual, HostID: 2, Page: 2, Size: 10,
				Sort: task.Sort{Field: task.SortStartTime, Desc: true}}, 10, 5},
		{"?sort=id", task.ListQuery{Page: 1, Size: 20, Sort: task.Sort{Field: task.SortID}}, 20, 3},
		{"?sort=id,asc&status=RUNNING", task.ListQuery{Status: task.StatusRunning, Page: 1, Size: 20, Sort: task.Sort{Field: task.SortID}}, 20, 3},
		{"?sort=endTime,DESC&type=SYS_SCHEDULED&status=SUCCESSFUL", task.ListQuery{Status: task.StatusSuccessful, Type: task.TypeSysScheduled, Page: 1, Size: 20, Sort: task.Sort{Field: task.SortEndTime, Desc: true}}, 20, 3},
		{"?sort=name,desc&type=SCHEDULED&size=2000", task.ListQuery{Type: task.TypeScheduled, Page: 1, Size: 2000, Sort: task.Sort{Field: task.SortName, Desc: true}}, 41, 1},
		{"?sort=status&page=9", task.ListQuery{Page: 9, Size: 20, Sort: task.Sort{Field: task.SortStatus}}, 0, 3},
	}
	for _, tt := range tests {
		t.Run(tt.query, func(t *testing.T) {
			r := env.do(t, req{method: "GET", path: "/api/v2/tasks/instances" + tt.query, user: "viewer"})
			if r.status != 200 {
				t.Fatalf("status = %d; %s", r.status, r.raw)
			}
			if q := env.tasks.query(); q != tt.want {
				t.Errorf("query = %+v, want %+v", q, tt.want)
			}
			d := r.body["data"].(map[string]any)
			if contents, ok := d["contents"].([]any); !ok || len(contents) != tt.count {
				t.Errorf("contents = %s of %d, want %d", jsonType(d["contents"]), len(contents), tt.count)
			}
			pg := d["page"].(map[string]any)
			want := map[string]float64{"totalElements": tasksTotal, "totalPages": float64(tt.totalPages), "number": float64(tt.want.Page), "size": float64(tt.want.Size)}
			for k, v := range want {
				if pg[k] != v {
					t.Errorf("page.%s = %v, want %v", k, pg[k], v)
				}
			}
		})
	}
}

// checkTaskPage checks the list body: data{contents[], page{...}}, each
// content a task in the stop example's shape.
func checkTaskPage(t *testing.T, data any) {
	t.Helper()
	d := data.(map[string]any)
	if len(d) != 2 {
		t.Errorf("page keys = %v, want contents, page", keys(d))
	}
	pg, _ := d["page"].(map[string]any)
	if len(pg) != 4 {
		t.Errorf("page.page keys = %v", keys(pg))
	}
	for _, k := range []string{"totalElements", "totalPages", "number", "size"} {
		if jsonType(pg[k]) != "number" {
			t.Errorf("page.%s is %s, want number", k, jsonType(pg[k]))
		}
	}
	contents, _ := d["contents"].([]any)
	if len(contents) == 0 {
		t.Fatalf("no contents: %v", d)
	}
	example := loadExample(t)["data"]
	for i, c := range contents {
		for _, diff := range sameShape("$.data", example, c) {
			t.Errorf("contents[%d]: %s", i, diff)
		}
	}
}

func checkLog(t *testing.T, data any) {
	t.Helper()
	d := data.(map[string]any)
	if len(d) != 4 || d["log"] != subtaskLogText || d["lines"] != float64(2) || d["nextOffset"] != float64(2) || d["more"] != false {
		t.Errorf("log data = %v, want {log: %q, lines: 2, nextOffset: 2, more: false}", d, subtaskLogText)
	}
}

// hostAgentKeys and processKeys are OCP's HostAgent fields with their JSON
// types, exactly.
var (
	hostAgentKeys = map[string]string{
		"id": "number", "version": "string", "installHome": "string", "logHome": "string",
		"lastAvailableTime": "string", "hostId": "number", "hostInnerIpAddress": "string", "status": "string",
		"processes": "array", "createTime": "string", "updateTime": "string",
	}
	processKeys = map[string]string{
		"hostId": "number", "alias": "string", "pid": "number", "user": "string", "startCommand": "string",
		"ports": "array", "elapsedTime": "number", "lastActiveTime": "string", "status": "string",
	}
)

func checkKeys(t *testing.T, what string, d map[string]any, want map[string]string) {
	t.Helper()
	for k, typ := range want {
		if got := jsonType(d[k]); got != typ {
			t.Errorf("%s.%s is %s, want %s", what, k, got, typ)
		}
	}
	for k := range d {
		if _, ok := want[k]; !ok {
			t.Errorf("%s.%s: not an OCP field", what, k)
		}
	}
}

func checkHostAgent(t *testing.T, data any) {
	t.Helper()
	d := data.(map[string]any)
	checkKeys(t, "agent", d, hostAgentKeys)
	for k, v := range map[string]any{
		"id": float64(hostOK), "hostId": float64(hostOK), "version": "4.2.1", "installHome": "/home/admin/ocp_agent",
		"logHome": "/home/admin/ocp_agent/log", "hostInnerIpAddress": "10.0.0.2", "status": "STARTED",
	} {
		if d[k] != v {
			t.Errorf("agent.%s = %v, want %v", k, d[k], v)
		}
	}
	for _, k := range []string{"lastAvailableTime", "createTime", "updateTime"} {
		if s, _ := d[k].(string); !timeRE.MatchString(s) {
			t.Errorf("agent.%s = %v", k, d[k])
		}
	}
	procs := d["processes"].([]any)
	if len(procs) != 2 {
		t.Fatalf("processes = %v", procs)
	}
	for i, p := range procs {
		checkKeys(t, fmt.Sprintf("processes[%d]", i), p.(map[string]any), processKeys)
	}
	running, stopped := procs[0].(map[string]any), procs[1].(map[string]any)
	for k, v := range map[string]any{
		"hostId": float64(hostOK), "alias": "ocp_agentd", "pid": float64(4242), "user": "admin",
		"startCommand": "/home/admin/ocp_agent/bin/ocp_agentd -c conf/agentd.yaml", "status": "STARTED",
	} {
		if running[k] != v {
			t.Errorf("processes[0].%s = %v, want %v", k, running[k], v)
		}
	}
	if e, _ := running["elapsedTime"].(float64); e < agentStarted.Seconds() || e > agentStarted.Seconds()+60 {
		t.Errorf("running elapsedTime = %v, want about %v", running["elapsedTime"], agentStarted.Seconds())
	}
	if stopped["status"] != "STOPPED" || stopped["elapsedTime"] != float64(0) || stopped["alias"] != "ocp_mgragent" {
		t.Errorf("stopped process = %v", stopped)
	}
	if ports, _ := json.Marshal(running["ports"]); string(ports) != "[]" {
		t.Errorf("ports = %s, want []", ports)
	}
}

func TestHostAgentNothingKnown(t *testing.T) {
	env := newTestEnv(t)
	r := env.do(t, req{method: "GET", path: "/api/v2/compute/hosts/3/agent", user: "viewer"})
	if r.status != 200 {
		t.Fatalf("status = %d: %s", r.status, r.raw)
	}
	d := r.body["data"].(map[string]any)
	want := map[string]any{
		"id": float64(hostBare), "version": "", "installHome": "", "logHome": "", "lastAvailableTime": nil,
		"hostId": float64(hostBare), "hostInnerIpAddress": "10.0.0.3", "status": "STOPPED", "processes": []any{},
	}
	for k, v := range want {
		if g, w := fmt.Sprint(d[k]), fmt.Sprint(v); g != w || jsonType(d[k]) != jsonType(v) {
			t.Errorf("agent.%s = %#v, want %#v", k, d[k], v)
		}
	}
	if len(d) != len(hostAgentKeys) {
		t.Errorf("agent keys = %v", keys(d))
	}
}

func TestSubtaskTarget(t *testing.T) {
	sub := &task.SubtaskError{SubtaskID: 32, Err: fmt.Errorf("subtask 32 is not in task 5: %w", errs.ErrNotFound)}
	tests := []struct {
		err  error
		want string
	}{
		{sub, targetSubtaskID},
		{fmt.Errorf("retrying: %w", sub), targetSubtaskID},
		{fmt.Errorf("task 5: %w", errs.ErrNotFound), targetTaskID},
		{fmt.Errorf("task 5: cannot retry: task is RUNNING: %w", errs.ErrFailedPrecondition), targetTaskID},
	}
	for _, tt := range tests {
		if got := subtaskTarget(tt.err); got != tt.want {
			t.Errorf("subtaskTarget(%v) = %q, want %q", tt.err, got, tt.want)
		}
	}
}
