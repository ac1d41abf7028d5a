package console

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"agentplane/server/internal/audit"
	"agentplane/server/internal/auth"
	"agentplane/server/internal/task"
)

// clock is a settable clock.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// auditLog keeps the records.
type auditLog struct {
	mu     sync.Mutex
	events []audit.Event
}

func (a *auditLog) Record(_ context.Context, e audit.Event) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.events = append(a.events, e)
}

func (a *auditLog) last() audit.Event {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.events) == 0 {
		return audit.Event{}
	}
	return a.events[len(a.events)-1]
}

type fixture struct {
	t      *testing.T
	srv    *httptest.Server
	d      *fakeDomain
	clock  *clock
	audit  *auditLog
	logs   *LogNotifier
	client *http.Client
}

// nopLogStore stores nothing.
type nopLogStore struct{}

func (nopLogStore) AppendSubtaskLogs(context.Context, []task.SubtaskLogLine) error { return nil }

func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{t: t, d: &fakeDomain{}, clock: &clock{now: time.Date(2026, 12, 3, 9, 0, 0, 0, time.UTC)}, audit: &auditLog{}}
	f.logs = NewLogNotifier(nopLogStore{})
	c, err := New(Config{
		Hosts: f.d, Tasks: f.d, Users: users, Secret: []byte(strings.Repeat("k", 32)), Audit: f.audit, Logs: f.logs,
		Throttle: auth.NewThrottle(auth.ThrottleConfig{SlowAfter: 100, LockAfter: 3, Sleep: func(context.Context, time.Duration) error { return nil }}),
		Log:      zerolog.Nop(), Now: f.clock.Now,
	})
	if err != nil {
		t.Fatal(err)
	}
	api := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { http.Error(w, "api", http.StatusTeapot) })
	f.srv = httptest.NewTLSServer(c.Wrap(api))
	t.Cleanup(f.srv.Close)
	f.client = f.srv.Client()
	f.client.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	f.client.Timeout = 10 * time.Second
	return f
}

// do sends a request with the cookie and headers given; origin "" sends
// the server's own.
func (f *fixture) do(method, path, cookie string, body url.Values, hdr map[string]string) (*http.Response, string) {
	f.t.Helper()
	var rd io.Reader
	if body != nil {
		rd = strings.NewReader(body.Encode())
	}
	req, err := http.NewRequest(method, f.srv.URL+path, rd)
	if err != nil {
		f.t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	if method == http.MethodPost {
		req.Header.Set("Origin", f.srv.URL)
	}
	if cookie != "" {
		req.Header.Set("Cookie", cookie)
	}
	for k, v := range hdr {
		if v == "" {
			req.Header.Del(k)
		} else {
			req.Header.Set(k, v)
		}
	}
	res, err := f.client.Do(req)
	if err != nil {
		f.t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res, string(b)
}

// signIn signs user in and returns the cookie header and the page's CSRF
// token.
func (f *fixture) signIn(user string) (cookie, csrf string) {
	f.t.Helper()
	res, body := f.do(http.MethodPost, "/ui/login", "", url.Values{"username": {user}, "password": {"pw-" + user}, "next": {"/ui/tasks"}}, nil)
	if res.StatusCode != http.StatusSeeOther || res.Header.Get("Location") != "/ui/tasks" {
		f.t.Fatalf("sign-in of %s: %d %s to %q", user, res.StatusCode, body, res.Header.Get("Location"))
	}
	cs := res.Cookies()
	if len(cs) != 1 {
		f.t.Fatalf("sign-in set %d cookies", len(cs))
	}
	cookie = cs[0].Name + "=" + cs[0].Value
	return cookie, f.csrfOf(cookie)
}

var csrfMeta = regexp.MustCompile(`<meta name="csrf-token" content="([^"]+)">`)

func (f *fixture) csrfOf(cookie string) string {
	f.t.Helper()
	res, body := f.do(http.MethodGet, "/ui/hosts", cookie, nil, nil)
	m := csrfMeta.FindStringSubmatch(body)
	if res.StatusCode != http.StatusOK || m == nil {
		f.t.Fatalf("hosts page: %d, csrf meta %v", res.StatusCode, m)
	}
	return m[1]
}

func TestSignInCookie(t *testing.T) {
	f := newFixture(t)
	res, _ := f.do(http.MethodPost, "/ui/login", "", url.Values{"username": {"admin"}, "password": {"pw-admin"}}, nil)
	if res.StatusCode != http.StatusSeeOther || res.Header.Get("Location") != "/ui/hosts" {
		t.Fatalf("sign-in: %d to %q, want 303 to /ui/hosts", res.StatusCode, res.Header.Get("Location"))
	}
	raw := res.Header.Get("Set-Cookie")
	for _, want := range []string{"__Host-agentplane-session=", "Path=/", "HttpOnly", "Secure", "SameSite=Strict"} {
		if !strings.Contains(raw, want) {
			t.Errorf("Set-Cookie %q lacks %q", raw, want)
		}
	}
	if strings.Contains(raw, "Domain=") {
		t.Errorf("Set-Cookie %q has a Domain (the __Host- prefix forbids it)", raw)
	}
	if e := f.audit.last(); e.Username != "admin" || e.Outcome != audit.OutcomeOK || e.Operation != "POST /ui/login" {
		t.Errorf("audit record %+v", e)
	}
}

func TestSignInRefused(t *testing.T) {
	f := newFixture(t)
	for i := range 3 {
		res, body := f.do(http.MethodPost, "/ui/login", "", url.Values{"username": {"admin"}, "password": {"wrong"}}, nil)
		if res.StatusCode != http.StatusUnauthorized || !has(body, "Wrong username or password.") || res.Header.Get("Set-Cookie") != "" {
			t.Fatalf("attempt %d: %d, cookie %q: %s", i, res.StatusCode, res.Header.Get("Set-Cookie"), body)
		}
	}
	// The same throttle as the APIs: locked out now, even with the right
	// password.
	res, body := f.do(http.MethodPost, "/ui/login", "", url.Values{"username": {"admin"}, "password": {"pw-admin"}}, nil)
	if res.StatusCode != http.StatusTooManyRequests || !has(body, "Too many failed sign-ins") || res.Header.Get("Retry-After") == "" {
		t.Fatalf("locked out: %d Retry-After %q: %s", res.StatusCode, res.Header.Get("Retry-After"), body)
	}
	// A form posted from another origin is refused before the password.
	res, body = f.do(http.MethodPost, "/ui/login", "", url.Values{"username": {"viewer"}, "password": {"pw-viewer"}},
		map[string]string{"Origin": "https://evil.example"})
	if res.StatusCode != http.StatusForbidden || res.Header.Get("Set-Cookie") != "" || !has(body, "did not come from this console") {
		t.Fatalf("cross-origin sign-in: %d: %s", res.StatusCode, body)
	}
}

func TestPagesNeedSession(t *testing.T) {
	f := newFixture(t)
	res, _ := f.do(http.MethodGet, "/ui/tasks/77", "", nil, nil)
	if loc := res.Header.Get("Location"); res.StatusCode != http.StatusSeeOther || loc != "/ui/login?next=%2Fui%2Ftasks%2F77" {
		t.Fatalf("no session: %d to %q", res.StatusCode, loc)
	}
	// A cookie that does not open (tampered, or sealed with another key).
	res, _ = f.do(http.MethodGet, "/ui/hosts", cookieName+"=AAAA"+strings.Repeat("x", 60), nil, nil)
	if res.StatusCode != http.StatusSeeOther || strings.Contains(res.Header.Get("Location"), "expired") {
		t.Fatalf("bad cookie: %d to %q", res.StatusCode, res.Header.Get("Location"))
	}
	res, _ = f.do(http.MethodGet, "/", "", nil, nil)
	if res.StatusCode != http.StatusSeeOther || res.Header.Get("Location") != "/ui/hosts" {
		t.Fatalf("/: %d to %q", res.StatusCode, res.Header.Get("Location"))
	}
	// Everything else is the API's.
	if res, _ = f.do(http.MethodGet, "/compute/hosts", "", nil, nil); res.StatusCode != http.StatusTeapot {
		t.Fatalf("/compute/hosts went to the console: %d", res.StatusCode)
	}
}

func TestSessionExpires(t *testing.T) {
	for _, tc := range []struct {
		name   string
		active bool // use the session every 20 minutes
		after  time.Duration
	}{
		{"idle", false, DefaultIdleTimeout},
		{"absolute", true, DefaultMaxAge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			cookie, csrf := f.signIn("admin")
			for elapsed := time.Duration(0); elapsed+20*time.Minute < tc.after && tc.active; elapsed += 20 * time.Minute {
				f.clock.add(20 * time.Minute)
				res, _ := f.do(http.MethodGet, "/ui/hosts", cookie, nil, nil)
				if res.StatusCode != http.StatusOK {
					t.Fatalf("after %s of use: %d", elapsed, res.StatusCode)
				}
				if cs := res.Cookies(); len(cs) == 1 {
					cookie = cs[0].Name + "=" + cs[0].Value // the idle bound slid
				}
			}
			f.clock.add(tc.after)
			res, _ := f.do(http.MethodGet, "/ui/hosts", cookie, nil, nil)
			if loc := res.Header.Get("Location"); res.StatusCode != http.StatusSeeOther || !strings.Contains(loc, "expired=1") {
				t.Fatalf("expired page: %d to %q", res.StatusCode, loc)
			}
			_, body := f.do(http.MethodGet, res.Header.Get("Location"), "", nil, nil)
			if !has(body, "Your session has expired. Sign in again.") {
				t.Errorf("sign-in page after expiry lacks the message: %s", body)
			}
			res, body = f.do(http.MethodPost, "/ui/api/hosts/2/agent/stop", cookie, nil, map[string]string{CSRFHeader: csrf})
			if res.StatusCode != http.StatusUnauthorized || !has(body, msgExpired) {
				t.Errorf("action on an expired session: %d %s", res.StatusCode, body)
			}
			if calls := f.d.Calls(); len(calls) != 0 {
				t.Errorf("calls made: %v", calls)
			}
		})
	}
}

func TestCSRF(t *testing.T) {
	f := newFixture(t)
	cookie, csrf := f.signIn("admin")
	_, stale := f.signIn("admin") // another sign-in: another token
	for _, tc := range []struct {
		name   string
		hdr    map[string]string
		status int
		msg    string
	}{
		{"no token", nil, http.StatusForbidden, msgCSRF},
		{"another session's token", map[string]string{CSRFHeader: stale}, http.StatusForbidden, msgCSRF},
		{"another origin", map[string]string{CSRFHeader: csrf, "Origin": "https://evil.example"}, http.StatusForbidden, msgOrigin},
		{"no origin, cross-site", map[string]string{CSRFHeader: csrf, "Origin": "", "Sec-Fetch-Site": "cross-site"}, http.StatusForbidden, msgOrigin},
	} {
		res, body := f.do(http.MethodPost, "/ui/api/hosts/2/agent/stop", cookie, nil, tc.hdr)
		if res.StatusCode != tc.status || !has(body, tc.msg) {
			t.Errorf("%s: %d %s, want %d %q", tc.name, res.StatusCode, body, tc.status, tc.msg)
		}
	}
	if calls := f.d.Calls(); len(calls) != 0 {
		t.Fatalf("refused requests made calls: %v", calls)
	}
	if e := f.audit.last(); e.Username != "admin" || e.Outcome == audit.OutcomeOK {
		t.Errorf("audit of a refused action: %+v", e)
	}
	res, body := f.do(http.MethodPost, "/ui/api/hosts/2/agent/stop", cookie, nil, map[string]string{CSRFHeader: csrf})
	if res.StatusCode != http.StatusOK || !has(body, `"taskId":77`) {
		t.Fatalf("stop: %d %s", res.StatusCode, body)
	}
	if e := f.audit.last(); e.Operation != "POST /ui/api/hosts/{hostId}/agent/stop" || e.Outcome != audit.OutcomeOK || e.Username != "admin" {
		t.Errorf("audit record %+v", e)
	}
	// The form field works as the header (sign-out's form).
	res, _ = f.do(http.MethodPost, "/ui/logout", cookie, url.Values{"csrf": {csrf}}, nil)
	if res.StatusCode != http.StatusSeeOther || !strings.Contains(res.Header.Get("Set-Cookie"), "Max-Age=0") {
		t.Fatalf("sign-out: %d, Set-Cookie %q", res.StatusCode, res.Header.Get("Set-Cookie"))
	}
	if got := f.d.Calls(); len(got) != 1 || got[0] != "stop 2" {
		t.Errorf("calls %v, want [stop 2]", got)
	}
}

func TestActions(t *testing.T) {
	f := newFixture(t)
	cookie, csrf := f.signIn("admin")
	tok := map[string]string{CSRFHeader: csrf}
	for _, p := range []string{
		"/ui/api/hosts/2/agent/start", "/ui/api/hosts/2/agent/restart", "/ui/api/tasks/77/retry", "/ui/api/tasks/77/rollback",
		"/ui/api/tasks/77/subtasks/102/retry", "/ui/api/tasks/77/subtasks/102/skip", "/ui/api/tasks/77/subtasks/102/cancel",
	} {
		if res, body := f.do(http.MethodPost, p, cookie, nil, tok); res.StatusCode != http.StatusOK {
			t.Errorf("%s: %d %s", p, res.StatusCode, body)
		}
	}
	want := "start 2,restart 2,retry 77 0,rollback 77 0,retry 77 102,skip 77 102,cancel 77 102"
	if got := strings.Join(f.d.Calls(), ","); got != want {
		t.Errorf("calls %s, want %s", got, want)
	}
	for p, want := range map[string]string{
		"/ui/api/hosts/2/agent/delete":     "Unknown host action",
		"/ui/api/hosts/x/agent/stop":       "HostId must be a positive id",
		"/ui/api/hosts/404/agent/stop":     "Host 404 does not exist.",
		"/ui/api/tasks/77/subtasks/0/skip": "SubtaskId must be a positive id",
	} {
		res, body := f.do(http.MethodPost, p, cookie, nil, tok)
		if res.StatusCode < 400 || !has(body, want) {
			t.Errorf("%s: %d %s, want an error saying %q", p, res.StatusCode, body, want)
		}
	}
}

// TestRoles: a viewer sees no action, and the server refuses them anyway.
func TestRoles(t *testing.T) {
	f := newFixture(t)
	admin, _ := f.signIn("admin")
	viewer, vcsrf := f.signIn("viewer")
	_, page := f.do(http.MethodGet, "/ui/hosts", admin, nil, nil)
	if !has(page, "/ui/api/hosts/2/agent/stop", "/ui/api/hosts/2/agent/start", "/ui/api/hosts/2/agent/restart", "web-&lt;1&gt;") {
		t.Errorf("admin's hosts page lacks the actions: %s", page)
	}
	_, page = f.do(http.MethodGet, "/ui/hosts", viewer, nil, nil)
	if strings.Contains(page, "/ui/api/") || !has(page, "web-&lt;1&gt;", "ONLINE", "STARTED", "2026-12-03") {
		t.Errorf("viewer's hosts page: %s", page)
	}
	_, page = f.do(http.MethodGet, "/ui/tasks/77", viewer, nil, nil)
	if strings.Contains(page, "task-actions") || strings.Contains(page, "subtask-actions") || !has(page, `data-task-manager="false"`) {
		t.Errorf("viewer's task page shows actions: %s", page)
	}
	_, page = f.do(http.MethodGet, "/ui/tasks/77", admin, nil, nil)
	if !has(page, "task-actions", "subtask-cancel", `data-task-manager="true"`) {
		t.Errorf("admin's task page lacks the actions: %s", page)
	}
	for _, p := range []string{"/ui/api/hosts/2/agent/stop", "/ui/api/tasks/77/subtasks/102/cancel"} {
		res, body := f.do(http.MethodPost, p, viewer, nil, map[string]string{CSRFHeader: vcsrf})
		if res.StatusCode != http.StatusForbidden || !has(body, "lacks role") {
			t.Errorf("viewer %s: %d %s, want 403", p, res.StatusCode, body)
		}
	}
	if calls := f.d.Calls(); len(calls) != 0 {
		t.Errorf("calls made for the viewer: %v", calls)
	}
}

// TestHeaders: every answer carries the CSP and the other security headers,
// and no page has an inline script, style or event handler.
func TestHeaders(t *testing.T) {
	f := newFixture(t)
	cookie, _ := f.signIn("admin")
	inline := regexp.MustCompile(`(?i)<script(\s+[^>]*)?>\s*[^<\s]|<script>|<style|\sstyle=|\son[a-z]+=|javascript:`)
	for _, p := range []string{"/ui/login", "/ui/hosts", "/ui/tasks", "/ui/tasks?status=FAILED&sort=name,desc", "/ui/tasks/77", "/ui/tasks/9", "/ui/nope", "/ui/static/console.js", "/ui/static/console.css"} {
		res, body := f.do(http.MethodGet, p, cookie, nil, nil)
		if got := res.Header.Get("Content-Security-Policy"); got != csp {
			t.Errorf("%s: CSP %q", p, got)
		}
		if !has(csp, "default-src 'self'", "frame-ancestors 'none'") || has(csp, "unsafe") {
			t.Errorf("CSP %q is not strict", csp)
		}
		for h, want := range map[string]string{"X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY", "Referrer-Policy": "same-origin"} {
			if res.Header.Get(h) != want {
				t.Errorf("%s: %s %q, want %q", p, h, res.Header.Get(h), want)
			}
		}
		if strings.HasPrefix(res.Header.Get("Content-Type"), "text/html") {
			if m := inline.FindString(body); m != "" {
				t.Errorf("%s: inline script or style %q", p, m)
			}
			if strings.Contains(body, "http://") && !strings.Contains(body, "http://www.w3.org/2000/svg") || strings.Contains(body, "https://") {
				t.Errorf("%s: refers to another origin: %s", p, body)
			}
		}
	}
	if res, body := f.do(http.MethodGet, "/ui/tasks/9", cookie, nil, nil); res.StatusCode != http.StatusNotFound || !has(body, "Task 9 does not exist.") {
		t.Errorf("missing task: %d %s", res.StatusCode, body)
	}
	if res, body := f.do(http.MethodGet, "/ui/tasks?status=BAD", cookie, nil, nil); res.StatusCode != http.StatusBadRequest || !has(body, "Status must be RUNNING") {
		t.Errorf("bad filter: %d %s", res.StatusCode, body)
	}
	f.do(http.MethodGet, "/ui/tasks?name=stop&status=FAILED&type=MANUAL&hostId=2&sort=name,desc&page=2&size=5", cookie, nil, nil)
	if got := f.d.Calls(); len(got) == 0 || got[len(got)-1] != "list name=stop status=FAILED type=MANUAL host=2 sort={name true} page=2 size=5" {
		t.Errorf("list query %v", got)
	}
}

// event is one server-sent event.
type event struct{ name, id, data string }

// readEvents reads events from r until n were read.
func readEvents(t *testing.T, r io.Reader, n int) []event {
	t.Helper()
	var out []event
	var cur event
	sc := bufio.NewScanner(r)
	for len(out) < n && sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if cur.name != "" {
				out = append(out, cur)
			}
			cur = event{}
		case strings.HasPrefix(line, "event: "):
			cur.name = line[7:]
		case strings.HasPrefix(line, "id: "):
			cur.id = line[4:]
		case strings.HasPrefix(line, "data: "):
			cur.data = line[6:]
		}
	}
	if len(out) < n {
		t.Fatalf("stream ended after %d events (%v), want %d: %v", len(out), out, n, sc.Err())
	}
	return out
}

func (f *fixture) stream(path, cookie string) *http.Response {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	f.t.Cleanup(cancel)
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, f.srv.URL+path, nil)
	req.Header.Set("Cookie", cookie)
	res, err := f.client.Do(req)
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() { res.Body.Close() })
	return res
}

func TestTaskEvents(t *testing.T) {
	f := newFixture(t)
	f.d.versions = []*task.Task{stopTask(task.SubtaskRunning), stopTask(task.SubtaskSuccessful)}
	cookie, _ := f.signIn("viewer")
	res := f.stream("/ui/tasks/77/events", cookie)
	if res.StatusCode != http.StatusOK || res.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("stream: %d %q", res.StatusCode, res.Header.Get("Content-Type"))
	}
	evs := readEvents(t, res.Body, 3)
	if evs[0].name != "task" || !has(evs[0].data, `"status":"RUNNING"`, `"name":"Stop all OCP agent processes"`, `"upstreams":[103]`, `"parallelIdx":-1`) {
		t.Errorf("first event %+v", evs[0])
	}
	if evs[1].name != "task" || !has(evs[1].data, `"status":"SUCCESSFUL"`) || evs[2].name != "final" {
		t.Errorf("events %+v", evs[1:])
	}

	// No session: a 401 with the reason, and no stream.
	res = f.stream("/ui/tasks/77/events", "")
	if b, _ := io.ReadAll(res.Body); res.StatusCode != http.StatusUnauthorized || !has(string(b), msgSignIn) {
		t.Errorf("stream without a session: %d %s", res.StatusCode, b)
	}
	// A task that does not exist: its error before any event.
	res = f.stream("/ui/tasks/9/events", cookie)
	if b, _ := io.ReadAll(res.Body); res.StatusCode != http.StatusNotFound || !has(string(b), "Task 9 does not exist.") {
		t.Errorf("stream of a missing task: %d %s", res.StatusCode, b)
	}
}

func TestLogEvents(t *testing.T) {
	f := newFixture(t)
	f.d.logs = []string{"line 1", "line 2"}
	cookie, _ := f.signIn("viewer")
	res := f.stream("/ui/tasks/77/subtasks/102/log", cookie)
	r := bufio.NewReader(res.Body)
	first := readEvents(t, r, 1)[0]
	if first.name != "log" || first.id != "2" || first.data != `{"text":"line 1\nline 2\n"}` {
		t.Fatalf("first log event %+v", first)
	}
	// A line stored through the notifier reaches the stream at once (no
	// task change, no timer).
	f.d.mu.Lock()
	f.d.logs = append(f.d.logs, "line 3")
	f.d.mu.Unlock()
	if err := f.logs.AppendSubtaskLogs(context.Background(), []task.SubtaskLogLine{{SubtaskID: 102}}); err != nil {
		t.Fatal(err)
	}
	next := readEvents(t, r, 1)[0]
	if next.id != "3" || next.data != `{"text":"line 3\n"}` {
		t.Fatalf("next log event %+v", next)
	}
	// Resuming after an id sends only what follows it.
	req, _ := http.NewRequest(http.MethodGet, f.srv.URL+"/ui/tasks/77/subtasks/102/log", nil)
	req.Header.Set("Cookie", cookie)
	req.Header.Set("Last-Event-ID", "2")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	res2, err := f.client.Do(req.WithContext(ctx))
	if err != nil {
		t.Fatal(err)
	}
	defer res2.Body.Close()
	if ev := readEvents(t, res2.Body, 1)[0]; ev.data != `{"text":"line 3\n"}` {
		t.Errorf("resumed stream %+v", ev)
	}
}

// TestInsecureCookie: on a plaintext listener the cookie cannot be Secure,
// nor carry the __Host- prefix; the rest holds.
func TestInsecureCookie(t *testing.T) {
	c, err := New(Config{
		Hosts: &fakeDomain{}, Tasks: &fakeDomain{}, Users: users, Secret: []byte(strings.Repeat("k", 32)), Insecure: true,
		Throttle: auth.NewThrottle(auth.ThrottleConfig{}), Log: zerolog.Nop(),
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(c)
	defer srv.Close()
	form := url.Values{"username": {"admin"}, "password": {"pw-admin"}}
	req, _ := http.NewRequest(http.MethodPost, srv.URL+"/ui/login", strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", srv.URL)
	res, err := (&http.Transport{}).RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	raw := res.Header.Get("Set-Cookie")
	if res.StatusCode != http.StatusSeeOther || !strings.HasPrefix(raw, insecureCookieName+"=") || strings.Contains(raw, "Secure") ||
		!has(raw, "HttpOnly", "SameSite=Strict") || res.Header.Get("Strict-Transport-Security") != "" {
		t.Errorf("plaintext sign-in: %d, Set-Cookie %q, HSTS %q", res.StatusCode, raw, res.Header.Get("Strict-Transport-Security"))
	}
}

// TestStaleSignOutForm: a form posted with a stale token gets the error
// page, and the session stays.
func TestStaleSignOutForm(t *testing.T) {
	f := newFixture(t)
	cookie, _ := f.signIn("admin")
	res, body := f.do(http.MethodPost, "/ui/logout", cookie, url.Values{"csrf": {"stale"}}, map[string]string{"Accept": "text/html"})
	if res.StatusCode != http.StatusForbidden || res.Header.Get("Set-Cookie") != "" || !has(body, "<html", "This page is out of date") {
		t.Errorf("stale sign-out: %d, Set-Cookie %q: %s", res.StatusCode, res.Header.Get("Set-Cookie"), body)
	}
}

// TestSessionAcrossReplicas: a cookie one console sealed opens on another
// with the same secret (replicas share the access-key sealing key), and on
// none with another secret.
func TestSessionAcrossReplicas(t *testing.T) {
	one, other := newFixture(t), newFixture(t)
	cookie, csrf := one.signIn("admin")
	if got := other.csrfOf(cookie); got != csrf {
		t.Errorf("the other replica's page has CSRF token %q, want the session's %q", got, csrf)
	}
	c, err := New(Config{
		Hosts: &fakeDomain{}, Tasks: &fakeDomain{}, Users: users, Secret: []byte(strings.Repeat("x", 32)),
		Throttle: auth.NewThrottle(auth.ThrottleConfig{}), Log: zerolog.Nop(),
	})
	if err != nil {
		t.Fatal(err)
	}
	req := httptest.NewRequest(http.MethodGet, "https://example/ui/hosts", nil)
	req.Header.Set("Cookie", cookie)
	rec := httptest.NewRecorder()
	c.ServeHTTP(rec, req)
	if rec.Code != http.StatusSeeOther || !strings.HasPrefix(rec.Header().Get("Location"), "/ui/login") {
		t.Errorf("another secret: %d to %q, want the sign-in page", rec.Code, rec.Header().Get("Location"))
	}
}

func TestLogNotifierUnsubscribes(t *testing.T) {
	n := NewLogNotifier(nopLogStore{})
	ch, stop := n.subscribe(5)
	if err := n.AppendSubtaskLogs(context.Background(), []task.SubtaskLogLine{{SubtaskID: 5}, {SubtaskID: 5}, {SubtaskID: 6}}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ch:
	default:
		t.Fatal("no wake-up for subtask 5's lines")
	}
	select {
	case <-ch:
		t.Fatal("a second wake-up for one append")
	default:
	}
	stop()
	if len(n.subs) != 0 {
		t.Errorf("%d subscriptions left", len(n.subs))
	}
}
