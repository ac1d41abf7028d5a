package rest

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

type testEnv struct {
	srv   *httptest.Server
	hosts *fakeHosts
	tasks *fakeTasks
	logs  *syncBuffer
}

func newTestEnv(t *testing.T) *testEnv {
	t.Helper()
	env := &testEnv{hosts: &fakeHosts{}, tasks: &fakeTasks{}, logs: &syncBuffer{}}
	h := NewHandler(Config{
		Hosts:        env.hosts,
		Tasks:        env.tasks,
		Users:        fakeUsers{},
		Log:          zerolog.New(env.logs),
		MaxBodyBytes: 1024,
	})
	env.srv = httptest.NewServer(h)
	t.Cleanup(env.srv.Close)
	return env
}

// req describes one call; user "" sends no credentials.
type req struct {
	method, path string
	user         string
	body         string
	contentType  string
	header       map[string][]string // extra request headers
}

type resp struct {
	status int
	header http.Header
	raw    string
	body   map[string]any
}

func (e *testEnv) do(t *testing.T, rq req) resp {
	t.Helper()
	var body io.Reader
	if rq.body != "" {
		body = strings.NewReader(rq.body)
	}
	r, err := http.NewRequest(rq.method, e.srv.URL+rq.path, body)
	if err != nil {
		t.Fatal(err)
	}
	if rq.user != "" {
		pw := "wrong-pass"
		if u, ok := testUsers[rq.user]; ok {
			pw = u.password
		}
		r.SetBasicAuth(rq.user, pw)
	}
	if rq.contentType != "" {
		r.Header.Set("Content-Type", rq.contentType)
	}
	for k, vs := range rq.header {
		for _, v := range vs {
			r.Header.Add(k, v)
		}
	}
	res, err := e.srv.Client().Do(r)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	raw, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	out := resp{status: res.StatusCode, header: res.Header, raw: string(raw)}
	if rq.method != http.MethodHead {
		if err := json.Unmarshal(raw, &out.body); err != nil {
			t.Fatalf("%s %s: body is not JSON: %v: %s", rq.method, rq.path, err, raw)
		}
	}
	return out
}

var (
	timeRE  = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d$`)
	traceRE = regexp.MustCompile(`^[0-9a-f]{16}$`)
)

func TestStatuses(t *testing.T) {
	env := newTestEnv(t)
	const stop = "/api/v2/compute/hosts/%s/agent/stop"
	p := func(format, arg string) string { return strings.Replace(format, "%s", arg, 1) }
	tests := []struct {
		name       string
		req        req
		status     int
		code       int
		target     string
		allow      string
		notInBody  string
		wantHeader string
	}{
		{name: "no credentials", req: req{method: "POST", path: p(stop, "2")}, status: 401, code: CodeUnauthenticated, wantHeader: `Basic realm="agentplane"`},
		{name: "wrong password", req: req{method: "POST", path: p(stop, "2"), user: "nobody"}, status: 401, code: CodeUnauthenticated, wantHeader: `Basic realm="agentplane"`},
		{name: "auth store failure", req: req{method: "GET", path: "/compute/hosts", user: "storefail"}, status: 500, code: CodeInternal, notInBody: "secret"},
		{name: "stop as viewer", req: req{method: "POST", path: p(stop, "2"), user: "viewer"}, status: 403, code: CodeNotAuthorized},
		{name: "create user as manager", req: req{method: "POST", path: "/api/v2/iam/users", user: "manager", contentType: "application/json", body: `{"username":"x","password":"password1","roles":["ADMIN"]}`}, status: 403, code: CodeNotAuthorized},
		{name: "host id abc", req: req{method: "POST", path: p(stop, "abc"), user: "manager"}, status: 400, code: CodeBadRequest, target: "hostId"},
		{name: "host id 0", req: req{method: "POST", path: p(stop, "0"), user: "manager"}, status: 400, code: CodeBadRequest, target: "hostId"},
		{name: "host id -1", req: req{method: "POST", path: p(stop, "-1"), user: "manager"}, status: 400, code: CodeBadRequest, target: "hostId"},
		{name: "host id overflow", req: req{method: "POST", path: p(stop, "99999999999999999999"), user: "manager"}, status: 400, code: CodeBadRequest, target: "hostId"},
		{name: "host id +1", req: req{method: "POST", path: p(stop, "+1"), user: "manager"}, status: 400, code: CodeBadRequest, target: "hostId"},
		{name: "host id 01", req: req{method: "POST", path: p(stop, "01"), user: "manager"}, status: 400, code: CodeBadRequest, target: "hostId"},
		{name: "host id 02 get", req: req{method: "GET", path: "/compute/hosts/02", user: "viewer"}, status: 400, code: CodeBadRequest, target: "hostId"},
		{name: "list hostId +2", req: req{method: "GET", path: "/api/v2/tasks/instances?hostId=%2B2", user: "viewer"}, status: 400, code: CodeBadRequest, target: "hostId"},
		{name: "duplicate hostIds", req: req{method: "POST", path: "/api/v2/compute/hosts/batchStopAgents", user: "manager", contentType: "application/json", body: `{"hostIds":[2],"hostIds":[3]}`}, status: 400, code: CodeBadRequest, target: "body"},
		{name: "duplicate hostIds other case", req: req{method: "POST", path: "/api/v2/compute/hosts/batchStopAgents", user: "manager", contentType: "application/json", body: `{"hostIds":[2],"HOSTIDS":[3]}`}, status: 400, code: CodeBadRequest, target: "body"},
		{name: "duplicate username", req: req{method: "POST", path: "/api/v2/iam/users", user: "admin", contentType: "application/json", body: `{"username":"bob","password":"password1","roles":["ADMIN"],"username":"root"}`}, status: 400, code: CodeBadRequest, target: "body"},
		{name: "log offset -1", req: req{method: "GET", path: "/api/v2/tasks/instances/1/subtasks/2/log?offset=-1", user: "viewer"}, status: 400, code: CodeBadRequest, target: "offset"},
		{name: "log limit 0", req: req{method: "GET", path: "/api/v2/tasks/instances/1/subtasks/2/log?limit=0", user: "viewer"}, status: 400, code: CodeBadRequest, target: "limit"},
		{name: "log limit 10001", req: req{method: "GET", path: "/api/v2/tasks/instances/1/subtasks/2/log?limit=10001", user: "viewer"}, status: 400, code: CodeBadRequest, target: "limit"},
		{name: "host id 1.5", req: req{method: "GET", path: "/compute/hosts/1.5", user: "viewer"}, status: 400, code: CodeBadRequest, target: "hostId"},
		{name: "task id abc", req: req{method: "GET", path: "/api/v2/tasks/instances/abc", user: "viewer"}, status: 400, code: CodeBadRequest, target: "taskInstanceId"},
		{name: "page 0", req: req{method: "GET", path: "/api/v2/compute/hosts?page=0", user: "viewer"}, status: 400, code: CodeBadRequest, target: "page"},
		{name: "size 2001", req: req{method: "GET", path: "/api/v2/compute/hosts?size=2001", user: "viewer"}, status: 400, code: CodeBadRequest, target: "size"},
		{name: "size abc", req: req{method: "GET", path: "/api/v2/compute/hosts?size=abc", user: "viewer"}, status: 400, code: CodeBadRequest, target: "size"},
		{name: "stop unknown host", req: req{method: "POST", path: p(stop, "404"), user: "manager"}, status: 404, code: CodeNotFound, target: "hostId"},
		{name: "get unknown host", req: req{method: "GET", path: "/api/v2/compute/hosts/77", user: "viewer"}, status: 404, code: CodeNotFound, target: "hostId"},
		{name: "get unknown task", req: req{method: "GET", path: "/api/v2/tasks/instances/77", user: "viewer"}, status: 404, code: CodeTaskNotFound, target: "taskInstanceId"},
		{name: "unknown path", req: req{method: "GET", path: "/api/v2/nope", user: "viewer"}, status: 404, code: CodeNotFound},
		{name: "unknown path bare", req: req{method: "POST", path: "/compute/hosts/2/agent/kill", user: "viewer"}, status: 404, code: CodeNotFound},
		{name: "GET on stop", req: req{method: "GET", path: p(stop, "2"), user: "manager"}, status: 405, code: CodeMethodNotAllowed, allow: "POST"},
		{name: "DELETE on host", req: req{method: "DELETE", path: "/compute/hosts/2", user: "manager"}, status: 405, code: CodeMethodNotAllowed, allow: "GET, HEAD"},
		{name: "PUT on users", req: req{method: "PUT", path: "/api/v2/iam/users", user: "admin"}, status: 405, code: CodeMethodNotAllowed, allow: "POST"},
		{name: "host busy", req: req{method: "POST", path: p(stop, "409"), user: "manager"}, status: 409, code: CodeConflict},
		{name: "user exists", req: req{method: "POST", path: "/api/v2/iam/users", user: "admin", contentType: "application/json", body: `{"username":"viewer","password":"password1","roles":["ADMIN"]}`}, status: 409, code: CodeConflict},
		{name: "wrong state", req: req{method: "POST", path: p(stop, "412"), user: "manager"}, status: 400, code: CodeOperationNotAllowed},
		{name: "agentd offline", req: req{method: "POST", path: p(stop, "503"), user: "manager"}, status: 503, code: CodeUnavailable},
		{name: "timeout", req: req{method: "POST", path: p(stop, "504"), user: "manager"}, status: 503, code: CodeUnavailable},
		{name: "internal error hidden", req: req{method: "POST", path: p(stop, "500"), user: "manager"}, status: 500, code: CodeInternal, notInBody: "secret"},
		{name: "panic recovered", req: req{method: "POST", path: p(stop, "666"), user: "manager"}, status: 500, code: CodeInternal, notInBody: "secret"},
		{name: "body too large", req: req{method: "POST", path: "/api/v2/iam/users", user: "admin", contentType: "application/json", body: `{"username":"` + strings.Repeat("a", 2000) + `"}`}, status: 413, code: CodePayloadTooLarge},
		{name: "users text/plain", req: req{method: "POST", path: "/api/v2/iam/users", user: "admin", contentType: "text/plain", body: `{}`}, status: 415, code: CodeUnsupportedMedia},
		{name: "users no content type", req: req{method: "POST", path: "/api/v2/iam/users", user: "admin", body: `{}`}, status: 415, code: CodeUnsupportedMedia},
		{name: "stop with form body", req: req{method: "POST", path: p(stop, "2"), user: "manager", contentType: "application/x-www-form-urlencoded", body: "a=b"}, status: 415, code: CodeUnsupportedMedia},
		{name: "malformed JSON", req: req{method: "POST", path: "/api/v2/iam/users", user: "admin", contentType: "application/json", body: `{"username":`}, status: 400, code: CodeBadRequest, target: "body"},
		{name: "unknown field", req: req{method: "POST", path: "/api/v2/iam/users", user: "admin", contentType: "application/json", body: `{"username":"bob","password":"password1","roles":["ADMIN"],"isRoot":true}`}, status: 400, code: CodeBadRequest, target: "body"},
		{name: "two JSON values", req: req{method: "POST", path: "/api/v2/iam/users", user: "admin", contentType: "application/json", body: `{} {}`}, status: 400, code: CodeBadRequest, target: "body"},
		{name: "empty body", req: req{method: "POST", path: "/api/v2/iam/users", user: "admin", contentType: "application/json"}, status: 400, code: CodeBadRequest, target: "body"},
		{name: "invalid user", req: req{method: "POST", path: "/api/v2/iam/users", user: "admin", contentType: "application/json", body: `{"username":"","password":"password1","roles":["ADMIN"]}`}, status: 400, code: CodeBadRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := env.do(t, tt.req)
			if r.status != tt.status {
				t.Fatalf("status = %d, want %d; body %s", r.status, tt.status, r.raw)
			}
			checkErrorEnvelope(t, r, tt.status)
			e := r.body["error"].(map[string]any)
			if got := int(e["code"].(float64)); got != tt.code {
				t.Errorf("error.code = %d, want %d", got, tt.code)
			}
			if tt.target != "" && e["target"] != tt.target {
				t.Errorf("error.target = %v, want %q", e["target"], tt.target)
			}
			if tt.allow != "" && r.header.Get("Allow") != tt.allow {
				t.Errorf("Allow = %q, want %q", r.header.Get("Allow"), tt.allow)
			}
			if tt.wantHeader != "" && r.header.Get("WWW-Authenticate") != tt.wantHeader {
				t.Errorf("WWW-Authenticate = %q, want %q", r.header.Get("WWW-Authenticate"), tt.wantHeader)
			}
			if tt.notInBody != "" && strings.Contains(r.raw, tt.notInBody) {
				t.Errorf("body leaks %q: %s", tt.notInBody, r.raw)
			}
			if tt.status == 500 && e["message"] != "internal server error" {
				t.Errorf("500 message = %q", e["message"])
			}
		})
	}
}

// checkErrorEnvelope checks the OCP error envelope's shape and values.
func checkErrorEnvelope(t *testing.T, r resp, status int) {
	t.Helper()
	want := []string{"successful", "status", "timestamp", "duration", "traceId", "server", "error"}
	if len(r.body) != len(want) {
		t.Errorf("error envelope keys = %v, want %v", keys(r.body), want)
	}
	if r.body["successful"] != false || r.body["status"] != float64(status) {
		t.Errorf("successful/status = %v/%v", r.body["successful"], r.body["status"])
	}
	checkCommon(t, r)
	e, ok := r.body["error"].(map[string]any)
	if !ok {
		t.Fatalf("error is %T", r.body["error"])
	}
	for k, typ := range map[string]string{"code": "number", "message": "string", "debugMessage": "string", "target": "string", "subErrors": "array"} {
		if got := jsonType(e[k]); got != typ {
			t.Errorf("error.%s is %s, want %s", k, got, typ)
		}
	}
	if msg, _ := e["message"].(string); msg == "" {
		t.Errorf("error.message is empty")
	}
}

// checkCommon checks the fields every envelope has.
func checkCommon(t *testing.T, r resp) {
	t.Helper()
	if ts, _ := r.body["timestamp"].(string); !timeRE.MatchString(ts) {
		t.Errorf("timestamp = %q", ts)
	}
	if _, ok := r.body["duration"].(float64); !ok {
		t.Errorf("duration = %v", r.body["duration"])
	}
	if r.body["server"] != "127.0.0.1" {
		t.Errorf("server = %v, want 127.0.0.1", r.body["server"])
	}
	id, _ := r.body["traceId"].(string)
	if !traceRE.MatchString(id) {
		t.Errorf("traceId = %q", id)
	}
	if h := r.header.Get(TraceHeader); h != id {
		t.Errorf("%s header = %q, body traceId = %q", TraceHeader, h, id)
	}
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type = %q", ct)
	}
}

func TestSuccessBothPrefixes(t *testing.T) {
	env := newTestEnv(t)
	tests := []struct {
		name string
		req  req
		data func(t *testing.T, data any)
	}{
		{"stop", req{method: "POST", path: "/compute/hosts/2/agent/stop", user: "manager"}, checkSpecTask},
		{"stop json body", req{method: "POST", path: "/compute/hosts/2/agent/stop", user: "admin", contentType: "application/json; charset=utf-8", body: "{}"}, checkSpecTask},
		{"get task", req{method: "GET", path: "/tasks/instances/30443", user: "viewer"}, checkSpecTask},
		{"get host", req{method: "GET", path: "/compute/hosts/2", user: "viewer"}, checkHost},
		{"create user", req{method: "POST", path: "/iam/users", user: "admin", contentType: "application/json", body: `{"username":"bob","password":"password1","roles":["HOST_MANAGER"]}`}, checkUser},
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
				want := []string{"data", "successful", "timestamp", "duration", "status", "traceId", "server"}
				if len(r.body) != len(want) {
					t.Errorf("envelope keys = %v, want %v", keys(r.body), want)
				}
				if r.body["successful"] != true || r.body["status"] != float64(200) {
					t.Errorf("successful/status = %v/%v", r.body["successful"], r.body["status"])
				}
				checkCommon(t, r)
				tt.data(t, r.body["data"])
			})
		}
	}
}

func checkSpecTask(t *testing.T, data any) {
	t.Helper()
	d := data.(map[string]any)
	if d["name"] != "Stop OCP agent" || d["id"] != float64(taskOK) || d["hostId"] != float64(hostOK) {
		t.Errorf("task = %v", d)
	}
	if st, _ := d["startTime"].(string); !timeRE.MatchString(st) {
		t.Errorf("startTime = %q", st)
	}
	subs := d["subtasks"].([]any)
	timeouts := []float64{60, 600, 60}
	for i, s := range subs {
		if got := s.(map[string]any)["timeout"]; got != timeouts[i] {
			t.Errorf("subtask %d timeout = %v, want %v", i, got, timeouts[i])
		}
	}
}

func checkHost(t *testing.T, data any) {
	t.Helper()
	d := data.(map[string]any)
	want := map[string]string{
		"id": "number", "name": "string", "innerIpAddress": "string", "machineId": "string", "status": "string",
		"agentStatus": "string", "agentdVersion": "string", "lastAvailableTime": "null", "operationTaskId": "number",
		"createTime": "string", "updateTime": "string", "revokeTime": "null",
	}
	for k, typ := range want {
		if got := jsonType(d[k]); got != typ {
			t.Errorf("host.%s is %s, want %s", k, got, typ)
		}
	}
	if len(d) != len(want) {
		t.Errorf("host keys = %v", keys(d))
	}
	if d["agentStatus"] != "UNKNOWN" {
		t.Errorf("agentStatus = %v, want UNKNOWN", d["agentStatus"])
	}
}

func checkUser(t *testing.T, data any) {
	t.Helper()
	d := data.(map[string]any)
	if d["username"] != "bob" || d["id"] != float64(7) || jsonType(d["roles"]) != "array" || jsonType(d["createTime"]) != "string" {
		t.Errorf("user = %v", d)
	}
	if len(d) != 4 {
		t.Errorf("user keys = %v, want id, username, roles, createTime", keys(d))
	}
	b, _ := json.Marshal(d)
	if strings.Contains(strings.ToLower(string(b)), "password") || strings.Contains(string(b), "secrethash") {
		t.Errorf("user JSON leaks the password or hash: %s", b)
	}
}

func TestListHosts(t *testing.T) {
	env := newTestEnv(t)
	tests := []struct {
		query             string
		page, size, count int
		totalPages        int
	}{
		{"", 1, 20, 20, 3},
		{"?page=3", 3, 20, 5, 3},
		{"?page=2&size=40&sort=id,asc", 2, 40, 5, 2},
		{"?size=2000", 1, 2000, 45, 1},
		{"?page=9", 9, 20, 0, 3},
	}
	for _, tt := range tests {
		t.Run(tt.query, func(t *testing.T) {
			r := env.do(t, req{method: "GET", path: "/api/v2/compute/hosts" + tt.query, user: "viewer"})
			if r.status != 200 {
				t.Fatalf("status = %d; %s", r.status, r.raw)
			}
			if q := env.hosts.query(); q.Page != tt.page || q.Size != tt.size {
				t.Errorf("query = %+v, want page %d size %d", q, tt.page, tt.size)
			}
			d := r.body["data"].(map[string]any)
			contents, ok := d["contents"].([]any)
			if !ok || len(contents) != tt.count {
				t.Errorf("contents = %v (%d), want %d", jsonType(d["contents"]), len(contents), tt.count)
			}
			pg := d["page"].(map[string]any)
			want := map[string]float64{"totalElements": hostsTotal, "totalPages": float64(tt.totalPages), "number": float64(tt.page), "size": float64(tt.size)}
			for k, v := range want {
				if pg[k] != v {
					t.Errorf("page.%s = %v, want %v", k, pg[k], v)
				}
			}
		})
	}
}

func TestTraceAndLogs(t *testing.T) {
	env := newTestEnv(t)
	r1 := env.do(t, req{method: "POST", path: "/compute/hosts/2/agent/stop", user: "manager"})
	r2 := env.do(t, req{method: "POST", path: "/compute/hosts/2/agent/stop", user: "manager"})
	id1, id2 := r1.header.Get(TraceHeader), r2.header.Get(TraceHeader)
	if !traceRE.MatchString(id1) || id1 == id2 {
		t.Fatalf("trace ids %q, %q: want distinct 16-hex ids", id1, id2)
	}

	// The domain's log line carries the request's trace id (via zerolog.Ctx).
	var domain, access map[string]any
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) && access == nil {
		for line := range strings.SplitSeq(env.logs.String(), "\n") {
			var m map[string]any
			if json.Unmarshal([]byte(line), &m) != nil || m["trace_id"] != id1 {
				continue
			}
			switch m["message"] {
			case "stopping agent":
				domain = m
			case "http request":
				access = m
			}
		}
		if access == nil {
			time.Sleep(10 * time.Millisecond) // the access line is written just after the response
		}
	}
	if domain == nil {
		t.Errorf("no domain log line with trace_id %s:\n%s", id1, env.logs.String())
	}
	if access == nil {
		t.Fatalf("no access log line with trace_id %s:\n%s", id1, env.logs.String())
	}
	for k, v := range map[string]any{"method": "POST", "path": "/compute/hosts/2/agent/stop", "status": float64(200), "user": "manager"} {
		if access[k] != v {
			t.Errorf("access log %s = %v, want %v", k, access[k], v)
		}
	}
	if _, ok := access["duration_ms"].(float64); !ok {
		t.Errorf("access log lacks duration_ms: %v", access)
	}
	if logs := env.logs.String(); strings.Contains(logs, "manager-pass") || strings.Contains(logs, "Basic ") {
		t.Errorf("credentials in logs:\n%s", logs)
	}
}

func TestHead(t *testing.T) {
	env := newTestEnv(t)
	r := env.do(t, req{method: "HEAD", path: "/api/v2/compute/hosts/2", user: "viewer"})
	if r.status != 200 || r.raw != "" {
		t.Errorf("HEAD = %d, body %q", r.status, r.raw)
	}
}

func keys(m map[string]any) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	return ks
}
