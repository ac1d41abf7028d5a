package rest

import (
	"context"
	"crypto/hmac"
	"crypto/md5"
	"crypto/sha1"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"agentplane/server/internal/auth"
	"agentplane/server/internal/errs"
	"agentplane/server/internal/store"
)

// The access-key signature and the /iam/accessKeys API over real HTTP,
// with access keys in a real store and the fake users of fakes_test.go.

// testUserLookup finds the fake users for the access key service.
type testUserLookup struct{}

func (testUserLookup) UserByName(_ context.Context, name string) (auth.User, error) {
	u, ok := testUsers[name]
	if !ok {
		return auth.User{}, fmt.Errorf("user %q: %w", name, errs.ErrNotFound)
	}
	return auth.User{Username: name, Roles: u.roles}, nil
}

// testClock is the throttle's clock; its sleeps are recorded and advance
// it.
type testClock struct {
	mu     sync.Mutex
	now    time.Time
	sleeps int
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *testClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func (c *testClock) Sleep(_ context.Context, d time.Duration) error {
	c.mu.Lock()
	c.sleeps++
	c.mu.Unlock()
	c.Advance(d)
	return nil
}

type iamEnv struct {
	srv     *httptest.Server
	hosts   *fakeHosts
	logs    *syncBuffer
	clock   *testClock
	mu      sync.Mutex
	secrets []string // every secret and signature seen, to look for in the logs
}

// peerHeader lets a test choose the caller's address.
const peerHeader = "X-Test-Peer"

// newIAMEnv starts the REST handler on a test server, each of opts applied
// to the server before it starts.
func newIAMEnv(t *testing.T, opts ...func(*httptest.Server)) *iamEnv {
	t.Helper()
	dir := t.TempDir()
	st, err := store.Open(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	env := &iamEnv{hosts: &fakeHosts{}, logs: &syncBuffer{}, clock: &testClock{now: time.Now()}}
	log := zerolog.New(env.logs).Level(zerolog.DebugLevel)
	sealKey, err := auth.LoadOrCreateAccessKeySealKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := auth.NewAccessKeyService(st, testUserLookup{}, sealKey, log)
	if err != nil {
		t.Fatal(err)
	}
	h := NewHandler(Config{
		Hosts:        env.hosts,
		Tasks:        &fakeTasks{},
		Users:        fakeUsers{},
		AccessKeys:   keys,
		Throttle:     auth.NewThrottle(auth.ThrottleConfig{Now: env.clock.Now, Sleep: env.clock.Sleep}),
		Log:          log,
		MaxBodyBytes: 1024,
	})
	env.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if p := r.Header.Get(peerHeader); p != "" {
			r.RemoteAddr = p
		}
		h.ServeHTTP(w, r)
	}))
	for _, o := range opts {
		o(env.srv)
	}
	env.srv.Start()
	t.Cleanup(env.srv.Close)
	t.Cleanup(func() {
		// No secret, password, signature or Authorization value in any log line.
		logs := env.logs.String()
		env.mu.Lock()
		defer env.mu.Unlock()
		words := append([]string{}, env.secrets...)
		for _, u := range testUsers {
			words = append(words, u.password)
		}
		for _, w := range words {
			if strings.Contains(logs, w) {
				t.Errorf("the logs contain %q:\n%s", w, logs)
			}
		}
		if strings.Contains(logs, "Basic ") || strings.Contains(logs, auth.SignatureScheme+" ") {
			t.Errorf("the logs contain an Authorization value:\n%s", logs)
		}
	})
	return env
}

func (e *iamEnv) remember(s string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.secrets = append(e.secrets, s)
}

// ocpSign signs r as an OCP client would, from the spec's text, with none
// of the server's code: Authorization = OCP-ACCESS-KEY-HMACSHA1 AK:Base64(
// HMAC-SHA1(SK, METHOD\nMD5\nContent-Type\nDate\nHost\nOCP-headers\nPathAndQuery)),
// MD5 the uppercase hex MD5 of the body, OCP-headers the x-ocp-* headers
// as lowercase name:value lines sorted by name, PathAndQuery the path and
// the parameters sorted by raw name, names and values RFC 3986 encoded.
func ocpSign(r *http.Request, body []byte, ak, sk string) string {
	return ocpSignNames(r, body, ak, sk, strings.ToLower)
}

// ocpSignNames is ocpSign with each x-ocp-* header name signed as
// spell(it) gives it: lowercased (the spec's form), or as written, as
// OCP's Python OCPClient signs them.
func ocpSignNames(r *http.Request, body []byte, ak, sk string, spell func(string) string) string {
	if r.Header.Get("Date") == "" {
		r.Header.Set("Date", time.Now().UTC().Format(http.TimeFormat))
	}
	sum := ""
	if len(body) > 0 {
		sum = fmt.Sprintf("%X", md5.Sum(body))
	}
	var headers []string
	for name, vs := range r.Header {
		if strings.HasPrefix(strings.ToLower(name), "x-ocp-") {
			headers = append(headers, spell(name)+":"+strings.Join(vs, ","))
		}
	}
	sort.Strings(headers)
	enc := func(s string) string {
		var b strings.Builder
		for _, c := range []byte(s) {
			if 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("-._~", c) >= 0 {
				b.WriteByte(c)
			} else {
				fmt.Fprintf(&b, "%%%02X", c)
			}
		}
		return b.String()
	}
	var params [][2]string
	for _, kv := range strings.Split(r.URL.RawQuery, "&") {
		if kv == "" {
			continue
		}
		k, v, _ := strings.Cut(kv, "=")
		k, _ = url.QueryUnescape(k)
		v, _ = url.QueryUnescape(v)
		params = append(params, [2]string{k, v})
	}
	// By raw name, before encoding, as OCP's clients sort them.
	sort.SliceStable(params, func(i, j int) bool { return params[i][0] < params[j][0] })
	pq := r.URL.EscapedPath()
	for i, p := range params {
		sep := "&"
		if i == 0 {
			sep = "?"
		}
		pq += sep + enc(p[0]) + "=" + enc(p[1])
	}
	sts := strings.Join([]string{r.Method, sum, r.Header.Get("Content-Type"), r.Header.Get("Date"), r.Host, strings.Join(headers, "\n"), pq}, "\n")
	m := hmac.New(sha1.New, []byte(sk))
	m.Write([]byte(sts))
	sig := base64.StdEncoding.EncodeToString(m.Sum(nil))
	r.Header.Set("Authorization", "OCP-ACCESS-KEY-HMACSHA1 "+ak+":"+sig)
	return sig
}

// call describes one request. Either user (HTTP Basic, with its password
// from testUsers or pass) or key signs it.
type call struct {
	method, path string
	body         string
	contentType  string
	header       http.Header
	user, pass   string
	key          *testKey
	peer         string
	// tamper changes the request after it was signed.
	tamper func(r *http.Request) *http.Request
}

type testKey struct{ id, secret string }

func (e *iamEnv) do(t *testing.T, c call) resp {
	t.Helper()
	r, err := http.NewRequest(c.method, e.srv.URL+c.path, strings.NewReader(c.body))
	if err != nil {
		t.Fatal(err)
	}
	if c.body == "" {
		r.Body, r.ContentLength = http.NoBody, 0
	}
	for k, vs := range c.header {
		r.Header[k] = vs
	}
	if c.contentType != "" {
		r.Header.Set("Content-Type", c.contentType)
	}
	if c.peer != "" {
		r.Header.Set(peerHeader, c.peer)
	}
	switch {
	case c.key != nil:
		e.remember(ocpSign(r, []byte(c.body), c.key.id, c.key.secret))
	case c.user != "":
		pw := c.pass
		if pw == "" {
			pw = testUsers[c.user].password
		}
		r.SetBasicAuth(c.user, pw)
	}
	if c.tamper != nil {
		r = c.tamper(r)
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
	if err := json.Unmarshal(raw, &out.body); err != nil {
		t.Fatalf("%s %s: body is not JSON: %v: %s", c.method, c.path, err, raw)
	}
	return out
}

func errorCode(r resp) int {
	e, _ := r.body["error"].(map[string]any)
	n, _ := e["code"].(float64)
	return int(n)
}

func errorMessage(r resp) string {
	e, _ := r.body["error"].(map[string]any)
	m, _ := e["message"].(string)
	return m
}

// createKey creates an access key through the API and returns it.
func (e *iamEnv) createKey(t *testing.T, c call) *testKey {
	t.Helper()
	c.method, c.path = http.MethodPost, "/api/v2/iam/accessKeys"
	r := e.do(t, c)
	if r.status != http.StatusOK {
		t.Fatalf("creating a key: %d %s", r.status, r.raw)
	}
	d := r.body["data"].(map[string]any)
	k := &testKey{id: d["accessKeyId"].(string), secret: d["secret"].(string)}
	e.remember(k.secret)
	if len(k.secret) < 43 || d["createTime"] == nil {
		t.Errorf("created key %s", r.raw)
	}
	if r.header.Get("Cache-Control") != "no-store" {
		t.Errorf("the answer with the secret may be cached: Cache-Control %q", r.header.Get("Cache-Control"))
	}
	return k
}

func TestSignedRequests(t *testing.T) {
	env := newIAMEnv(t)
	mk := env.createKey(t, call{user: "manager"})
	vk := env.createKey(t, call{user: "viewer"})

	const batch = "/api/v2/compute/hosts/batchStopAgents?note=stop%20it%2Fnow&dryRun=false&tag=b&tag=a+c&%E4%BD%A0=%E5%A5%BD"
	body := `{"hostIds":[2,3]}`
	ocp := http.Header{"X-Ocp-Request-Id": {"req-42"}, "X-Ocp-Zone": {"hz 1"}}
	signedBatch := call{method: "POST", path: batch, body: body, contentType: "application/json", header: ocp, key: mk}

	r := env.do(t, signedBatch)
	if r.status != http.StatusOK {
		t.Fatalf("signed batch stop: %d %s", r.status, r.raw)
	}
	if op, _, ids := env.hosts.last(); op != "Batch stop OCP agent" || fmt.Sprint(ids) != "[2 3]" {
		t.Errorf("the handler saw %q %v, want the signed body", op, ids)
	}
	r = env.do(t, call{method: "GET", path: "/compute/hosts?size=5&page=2&q=a%20b%2Bc&q=%7E", header: ocp, key: mk})
	if r.status != http.StatusOK {
		t.Fatalf("signed list: %d %s", r.status, r.raw)
	}
	if q := env.hosts.query(); q.Page != 2 || q.Size != 5 {
		t.Errorf("list query %+v", q)
	}
	// Any x-ocp header is covered; an unrelated header is not.
	r = env.do(t, call{method: "GET", path: "/compute/hosts", key: mk, tamper: func(r *http.Request) *http.Request {
		r.Header.Set("User-Agent", "changed")
		return r
	}})
	if r.status != http.StatusOK {
		t.Errorf("unsigned header changed: %d %s", r.status, r.raw)
	}
	// A GMT date, as http.TimeFormat writes, and a numeric zone.
	r = env.do(t, call{method: "GET", path: "/compute/hosts", key: mk,
		header: http.Header{"Date": {time.Now().In(time.FixedZone("", -7*3600)).Format(time.RFC1123Z)}}})
	if r.status != http.StatusOK {
		t.Errorf("numeric zone date: %d %s", r.status, r.raw)
	}

	// The key's user's roles apply.
	r = env.do(t, call{method: "POST", path: "/compute/hosts/2/agent/stop", key: vk})
	if r.status != http.StatusForbidden {
		t.Errorf("viewer's key stopping: %d %s", r.status, r.raw)
	}

	refused := []struct {
		name   string
		c      call
		status int
		msg    string
	}{
		{"tampered body", with(signedBatch, func(r *http.Request) *http.Request {
			b := `{"hostIds":[2,9]}`
			r.Body, r.ContentLength = io.NopCloser(strings.NewReader(b)), int64(len(b))
			return r
		}), 401, "invalid access key or signature"},
		{"tampered path", with(signedBatch, func(r *http.Request) *http.Request {
			r.URL.Path = "/api/v2/compute/hosts/batchRestartAgents"
			return r
		}), 401, "invalid access key or signature"},
		{"tampered query", with(signedBatch, func(r *http.Request) *http.Request {
			r.URL.RawQuery = strings.Replace(r.URL.RawQuery, "dryRun=false", "dryRun=true", 1)
			return r
		}), 401, "invalid access key or signature"},
		{"reordered repeated parameter", with(signedBatch, func(r *http.Request) *http.Request {
			r.URL.RawQuery = strings.Replace(r.URL.RawQuery, "tag=b&tag=a+c", "tag=a+c&tag=b", 1)
			return r
		}), 401, "invalid access key or signature"},
		{"tampered x-ocp header", with(signedBatch, func(r *http.Request) *http.Request {
			r.Header.Set("X-Ocp-Zone", "hz 2")
			return r
		}), 401, "invalid access key or signature"},
		{"added x-ocp header", with(signedBatch, func(r *http.Request) *http.Request {
			r.Header.Set("X-OCP-Extra", "1")
			return r
		}), 401, "invalid access key or signature"},
		{"tampered content type", with(signedBatch, func(r *http.Request) *http.Request {
			r.Header.Set("Content-Type", "application/json; charset=utf-8")
			return r
		}), 401, "invalid access key or signature"},
		{"expired date", func() call {
			c := signedBatch
			c.header = http.Header{"Date": {time.Now().Add(-16 * time.Minute).UTC().Format(http.TimeFormat)}}
			return c
		}(), 401, "not within 15m0s"},
		{"future date", func() call {
			c := signedBatch
			c.header = http.Header{"Date": {time.Now().Add(16 * time.Minute).UTC().Format(http.TimeFormat)}}
			return c
		}(), 401, "not within 15m0s"},
		{"no date", with(signedBatch, func(r *http.Request) *http.Request { r.Header.Del("Date"); return r }), 401, "needs a Date header"},
		{"unknown key", func() call { c := signedBatch; c.key = &testKey{"AP00000000000000000000", mk.secret}; return c }(), 401, "invalid access key or signature"},
		{"wrong secret", func() call { c := signedBatch; c.key = &testKey{mk.id, vk.secret}; return c }(), 401, "invalid access key or signature"},
		{"malformed credentials", with(signedBatch, func(r *http.Request) *http.Request {
			r.Header.Set("Authorization", auth.SignatureScheme+" "+mk.id)
			return r
		}), 401, "malformed"},
		{"unknown scheme", with(signedBatch, func(r *http.Request) *http.Request {
			r.Header.Set("Authorization", "Bearer xyz")
			return r
		}), 401, "unsupported authorization scheme"},
		{"two Authorization headers", with(signedBatch, func(r *http.Request) *http.Request {
			r.Header.Add("Authorization", "Basic eDp5")
			return r
		}), 401, "sent 2 times"},
		{"body too large", func() call {
			c := signedBatch
			c.body = `{"hostIds":[` + strings.Repeat("2,", 600) + `2]}`
			return c
		}(), 413, "exceeds 1024 bytes"},
	}
	for i, tt := range refused {
		t.Run(tt.name, func(t *testing.T) {
			// One address each, and past the throttle's window: no
			// throttling here.
			tt.c.peer = fmt.Sprintf("10.7.%d.1:999", i)
			env.clock.Advance(6 * time.Minute)
			r := env.do(t, tt.c)
			if r.status != tt.status || !strings.Contains(errorMessage(r), tt.msg) {
				t.Fatalf("%d %s, want %d with %q", r.status, r.raw, tt.status, tt.msg)
			}
			for _, s := range []string{mk.secret, vk.secret} {
				if strings.Contains(r.raw, s) {
					t.Errorf("the answer carries a secret: %s", r.raw)
				}
			}
		})
	}
}

// with returns c tampered by f after signing.
func with(c call, f func(*http.Request) *http.Request) call {
	c.tamper = f
	return c
}

func TestAccessKeyAPI(t *testing.T) {
	env := newIAMEnv(t)
	own := env.createKey(t, call{user: "viewer"})
	// Creating for oneself by name, with a body, or with a key.
	env.createKey(t, call{user: "viewer", body: `{"username":"viewer"}`, contentType: "application/json"})
	env.createKey(t, call{key: own})
	// ADMIN creates for another user; others may not.
	mk := env.createKey(t, call{user: "admin", body: `{"username":"manager"}`, contentType: "application/json"})
	r := env.do(t, call{method: "POST", path: "/iam/accessKeys", user: "viewer", body: `{"username":"manager"}`, contentType: "application/json"})
	if r.status != http.StatusForbidden || errorCode(r) != CodeNotAuthorized {
		t.Errorf("viewer creating manager's key: %d %s", r.status, r.raw)
	}
	r = env.do(t, call{method: "POST", path: "/iam/accessKeys", user: "admin", body: `{"username":"ghost"}`, contentType: "application/json"})
	if r.status != http.StatusNotFound {
		t.Errorf("key for an unknown user: %d %s", r.status, r.raw)
	}
	r = env.do(t, call{method: "POST", path: "/iam/accessKeys", user: "admin", body: `{"user":"x"}`, contentType: "application/json"})
	if r.status != http.StatusBadRequest {
		t.Errorf("unknown field: %d %s", r.status, r.raw)
	}

	list := func(c call) []map[string]any {
		t.Helper()
		c.method = http.MethodGet
		r := env.do(t, c)
		if r.status != http.StatusOK {
			t.Fatalf("list: %d %s", r.status, r.raw)
		}
		if strings.Contains(r.raw, "secret") || strings.Contains(r.raw, own.secret) || strings.Contains(r.raw, "v1.") {
			t.Errorf("the list carries a secret: %s", r.raw)
		}
		var out []map[string]any
		for _, k := range r.body["data"].(map[string]any)["contents"].([]any) {
			out = append(out, k.(map[string]any))
		}
		return out
	}
	users := func(ks []map[string]any) string {
		var us []string
		for _, k := range ks {
			us = append(us, k["username"].(string))
		}
		return strings.Join(us, ",")
	}
	if got := users(list(call{path: "/iam/accessKeys", user: "viewer"})); got != "viewer,viewer,viewer" {
		t.Errorf("viewer's list: %s", got)
	}
	if got := users(list(call{path: "/api/v2/iam/accessKeys?username=manager", user: "admin"})); got != "manager" {
		t.Errorf("admin's list of manager: %s", got)
	}
	all := list(call{path: "/iam/accessKeys", user: "admin"})
	if got := users(all); got != "viewer,viewer,viewer,manager" {
		t.Errorf("admin's list: %s", got)
	}
	if all[0]["accessKeyId"] != own.id || all[0]["lastUsedTime"] == nil || all[1]["lastUsedTime"] != nil {
		t.Errorf("first key %v, second %v: want the used one with lastUsedTime", all[0], all[1])
	}
	r = env.do(t, call{method: "GET", path: "/iam/accessKeys?username=manager", user: "viewer"})
	if r.status != http.StatusForbidden {
		t.Errorf("viewer listing manager's keys: %d %s", r.status, r.raw)
	}

	// Delete: another user's is a 404 without ADMIN; one's own works, and
	// then the key signs nothing.
	r = env.do(t, call{method: "DELETE", path: "/iam/accessKeys/" + mk.id, user: "viewer"})
	if r.status != http.StatusNotFound {
		t.Errorf("viewer deleting manager's key: %d %s", r.status, r.raw)
	}
	r = env.do(t, call{method: "GET", path: "/compute/hosts", key: mk})
	if r.status != http.StatusOK {
		t.Errorf("manager's key after a refused delete: %d %s", r.status, r.raw)
	}
	r = env.do(t, call{method: "DELETE", path: "/api/v2/iam/accessKeys/" + own.id, user: "viewer"})
	if r.status != http.StatusOK {
		t.Errorf("deleting one's own key: %d %s", r.status, r.raw)
	}
	r = env.do(t, call{method: "GET", path: "/compute/hosts", key: own})
	if r.status != http.StatusUnauthorized {
		t.Errorf("deleted key: %d %s", r.status, r.raw)
	}
	r = env.do(t, call{method: "DELETE", path: "/iam/accessKeys/" + mk.id, user: "admin"})
	if r.status != http.StatusOK {
		t.Errorf("admin deleting manager's key: %d %s", r.status, r.raw)
	}
	r = env.do(t, call{method: "DELETE", path: "/iam/accessKeys/" + mk.id, user: "admin"})
	if r.status != http.StatusNotFound || errorCode(r) != CodeNotFound {
		t.Errorf("deleting twice: %d %s", r.status, r.raw)
	}
	r = env.do(t, call{method: "PUT", path: "/iam/accessKeys/" + mk.id, user: "admin"})
	if r.status != http.StatusMethodNotAllowed {
		t.Errorf("PUT: %d %s", r.status, r.raw)
	}
}

func TestAccessKeyRoutesNeedTheService(t *testing.T) {
	env := newTestEnv(t) // no AccessKeys
	r := env.do(t, req{method: "GET", path: "/iam/accessKeys", user: "admin"})
	if r.status != http.StatusNotFound {
		t.Errorf("GET /iam/accessKeys without the service: %d", r.status)
	}
	r = env.do(t, req{method: "GET", path: "/compute/hosts", header: map[string][]string{"Authorization": {auth.SignatureScheme + " AP1:c2ln"}}})
	if r.status != http.StatusUnauthorized || !strings.Contains(r.raw, "not enabled") {
		t.Errorf("signed request without the service: %d %s", r.status, r.raw)
	}
}

func TestBruteForceIsThrottled(t *testing.T) {
	env := newIAMEnv(t)
	const attacker, other = "10.0.0.1:4000", "10.0.0.2:4000"
	guess := func(i int) call {
		return call{method: "GET", path: "/compute/hosts", user: "viewer", pass: fmt.Sprintf("guess-%d", i), peer: attacker}
	}
	for i := range 10 {
		if r := env.do(t, guess(i)); r.status != http.StatusUnauthorized {
			t.Fatalf("guess %d: %d %s", i, r.status, r.raw)
		}
	}
	if env.clock.sleeps != 5 {
		t.Errorf("%d guesses were slowed down, want 5 (the 6th to the 10th)", env.clock.sleeps)
	}
	// Locked out: even the right password is refused, with 429.
	r := env.do(t, call{method: "GET", path: "/compute/hosts", user: "viewer", peer: attacker})
	if r.status != http.StatusTooManyRequests || errorCode(r) != CodeTooManyRequests || r.header.Get("Retry-After") != "60" {
		t.Fatalf("after 10 failures: %d Retry-After %q %s", r.status, r.header.Get("Retry-After"), r.raw)
	}
	if r.body["successful"] != false || !strings.Contains(errorMessage(r), "retry in 60 s") {
		t.Errorf("envelope %s", r.raw)
	}
	// Only the pair is locked out: another user from the same address (a
	// NAT), and the same user from another address, log in.
	if r := env.do(t, call{method: "GET", path: "/compute/hosts", user: "manager", peer: attacker}); r.status != http.StatusOK {
		t.Errorf("another user from the attacker's address: %d", r.status)
	}
	if r := env.do(t, call{method: "GET", path: "/compute/hosts", user: "viewer", peer: other}); r.status != http.StatusOK {
		t.Errorf("the attacked user from another address: %d", r.status)
	}
	if r := env.do(t, call{method: "GET", path: "/compute/hosts", user: "manager", peer: other}); r.status != http.StatusOK {
		t.Errorf("another user from another address: %d %s", r.status, r.raw)
	}
	// Signatures count the same way, per access key id and address.
	k := env.createKey(t, call{user: "manager", peer: "10.0.0.3:1"})
	for range 10 {
		bad := call{method: "GET", path: "/compute/hosts", key: &testKey{k.id, "not-the-secret"}, peer: "10.0.0.4:1"}
		if r := env.do(t, bad); r.status != http.StatusUnauthorized {
			t.Fatalf("bad signature: %d", r.status)
		}
	}
	if r := env.do(t, call{method: "GET", path: "/compute/hosts", key: k, peer: "10.0.0.4:1"}); r.status != http.StatusTooManyRequests {
		t.Errorf("signature after 10 bad ones: %d", r.status)
	}
	// The lockout ends.
	env.clock.Advance(61 * time.Second)
	if r := env.do(t, call{method: "GET", path: "/compute/hosts", user: "viewer", peer: attacker}); r.status != http.StatusOK {
		t.Errorf("after the lockout: %d %s", r.status, r.raw)
	}
	if r := env.do(t, call{method: "GET", path: "/compute/hosts", key: k, peer: "10.0.0.4:1"}); r.status != http.StatusOK {
		t.Errorf("signature after the lockout: %d %s", r.status, r.raw)
	}
	if !strings.Contains(env.logs.String(), "authentication locked out after repeated failures") {
		t.Errorf("no lockout in the log")
	}
}

// TestErrorMapping429 checks the one mapping place for a throttled error.
func TestErrorMapping429(t *testing.T) {
	e := apiErrorOf(fmt.Errorf("login: %w", &auth.ThrottledError{Wait: 1500 * time.Millisecond}), "")
	if e.Status != http.StatusTooManyRequests || e.Code != CodeTooManyRequests || e.RetryAfter != 2 {
		t.Errorf("apiErrorOf = %+v", e)
	}
	e = apiErrorOf(fmt.Errorf("slow down: %w", errs.ErrTooManyRequests), "")
	if e.Status != http.StatusTooManyRequests || e.RetryAfter != 1 {
		t.Errorf("apiErrorOf without a wait = %+v", e)
	}
}
