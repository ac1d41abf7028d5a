package integration_test

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/md5"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	agentv1 "agentplane/gen/agentplane/agent/v1"
	auditv1 "agentplane/gen/agentplane/audit/v1"
	hostv1 "agentplane/gen/agentplane/host/v1"
	taskv1 "agentplane/gen/agentplane/task/v1"
)

// Security against the real binaries: OCP access-key signatures made by an
// implementation of the spec's string to sign written here (not the
// server's), agent identity (impersonation, used join tokens, revocation),
// brute force throttled, the audit record, TLS by default. Every secret the
// tests create is registered with addSecret, so the harness fails a test
// whose process logged one.

// ---- OCP's access-key signature, from the spec text ----

// ocpScheme is the Authorization scheme of a signed request.
const ocpScheme = "OCP-ACCESS-KEY-HMACSHA1"

// accessKey is an access key as created through the API.
type accessKey struct{ id, secret string }

// ocpStringToSign is the spec's
// METHOD\nMD5\nContent-Type\nDate\nHost\nOCP-headers\nPathAndQuery: MD5 the
// uppercase hex MD5 of the body (empty without one), OCP-headers the x-ocp-*
// headers as name:value lines sorted by name, PathAndQuery the path plus '?'
// and the query parameters sorted by name, names and values percent-encoded.
func ocpStringToSign(method string, body []byte, contentType, date, host string, hdr http.Header, path, rawQuery string) string {
	sum := ""
	if len(body) > 0 {
		h := md5.Sum(body)
		sum = strings.ToUpper(hex.EncodeToString(h[:]))
	}
	type line struct{ name, value string }
	var ocp []line
	for name, vs := range hdr {
		if n := strings.ToLower(name); strings.HasPrefix(n, "x-ocp-") {
			ocp = append(ocp, line{n, strings.Join(vs, ",")})
		}
	}
	sort.Slice(ocp, func(i, j int) bool { return ocp[i].name < ocp[j].name })
	lines := make([]string, len(ocp))
	for i, l := range ocp {
		lines[i] = l.name + ":" + l.value
	}
	pq := path
	if q := ocpQuery(rawQuery); q != "" {
		pq += "?" + q
	}
	return strings.Join([]string{method, sum, contentType, date, host, strings.Join(lines, "\n"), pq}, "\n")
}

// ocpQuery decodes the raw query's parameters and renders them sorted by
// raw name, then each name and value percent-encoded (RFC 3986).
func ocpQuery(raw string) string {
	type param struct{ name, value string }
	var ps []param
	for _, part := range strings.Split(raw, "&") {
		if part == "" {
			continue
		}
		n, v, _ := strings.Cut(part, "=")
		n, _ = url.QueryUnescape(n)
		v, _ = url.QueryUnescape(v)
		ps = append(ps, param{n, v})
	}
	// By raw name, before encoding, as OCP's clients sort them.
	sort.SliceStable(ps, func(i, j int) bool { return ps[i].name < ps[j].name })
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = pctEncode(p.name) + "=" + pctEncode(p.value)
	}
	return strings.Join(out, "&")
}

// pctEncode keeps RFC 3986's unreserved characters and writes every other
// byte as %XX.
func pctEncode(s string) string {
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

// authorization is the Authorization value of a request whose string to
// sign is sts: the scheme, then AK:Base64(HMAC-SHA1(secret, sts)).
func (k accessKey) authorization(sts string) string {
	m := hmac.New(sha1.New, []byte(k.secret))
	m.Write([]byte(sts))
	return ocpScheme + " " + k.id + ":" + base64.StdEncoding.EncodeToString(m.Sum(nil))
}

// signedRequest builds a REST request to target (path and raw query) signed
// with k, Date set to date; hdr are extra headers (Content-Type, x-ocp-*).
func (s *server) signedRequest(t *testing.T, k accessKey, method, target string, body []byte, hdr http.Header, date time.Time) *http.Request {
	t.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, s.url(target), rd)
	if err != nil {
		t.Fatal(err)
	}
	for name, vs := range hdr {
		req.Header[name] = vs
	}
	d := date.UTC().Format(http.TimeFormat)
	req.Header.Set("Date", d)
	sts := ocpStringToSign(method, body, req.Header.Get("Content-Type"), d, req.URL.Host, req.Header, req.URL.EscapedPath(), req.URL.RawQuery)
	req.Header.Set("Authorization", k.authorization(sts))
	return req
}

// withBody returns req with another body, same headers (its signature
// covers the first body).
func withBody(req *http.Request, body []byte) *http.Request {
	r := req.Clone(context.Background())
	r.Body, r.ContentLength, r.GetBody = io.NopCloser(bytes.NewReader(body)), int64(len(body)), nil
	return r
}

// withTarget returns req sent to another path and query, same headers.
func withTarget(t *testing.T, s *server, req *http.Request, target string) *http.Request {
	t.Helper()
	r := req.Clone(context.Background())
	u, err := url.Parse(s.url(target))
	if err != nil {
		t.Fatal(err)
	}
	r.URL, r.Host = u, ""
	if req.GetBody != nil {
		r.Body, _ = req.GetBody()
	}
	return r
}

// grpcSigned returns ctx carrying the metadata of a gRPC call to method
// signed with k, as the doc comment of server/internal/rpc's authenticator says: the
// string to sign of a POST without body or query, Content-Type
// application/grpc, the "date" metadata, the :authority, the x-ocp-*
// metadata, and the full method name as the path. It returns the
// Authorization value too.
func grpcSigned(ctx context.Context, k accessKey, authority, method string, date time.Time, ocp map[string]string) (context.Context, string) {
	d := date.UTC().Format(http.TimeFormat)
	hdr := http.Header{}
	pairs := []string{"date", d}
	for name, v := range ocp {
		hdr.Set(name, v)
		pairs = append(pairs, strings.ToLower(name), v)
	}
	auth := k.authorization(ocpStringToSign("POST", nil, "application/grpc", d, authority, hdr, method, ""))
	return metadata.AppendToOutgoingContext(ctx, append(pairs, "authorization", auth)...), auth
}

// TestOCPStringToSign pins the test's own implementation on a worked
// example, so that a bug in it cannot hide behind a matching bug in the
// server.
func TestOCPStringToSign(t *testing.T) {
	hdr := http.Header{"X-Ocp-Trace": {"t1"}, "X-Ocp-A": {"v"}, "Accept": {"*/*"}}
	got := ocpStringToSign("POST", []byte(`{"a":1}`), "application/json", "Mon, 02 Jan 2006 15:04:05 GMT", "h:1", hdr,
		"/compute/hosts/1/agent/stop", "z=1&name=Stop+OCP%2fx&a=%7e")
	want := "POST\nBB6CB5C68DF4652941CAF652A366F2D8\napplication/json\n" +
		"Mon, 02 Jan 2006 15:04:05 GMT\nh:1\nx-ocp-a:v\nx-ocp-trace:t1\n" +
		"/compute/hosts/1/agent/stop?a=~&name=Stop%20OCP%2Fx&z=1"
	if got != want {
		t.Errorf("string to sign\n%q\nwant\n%q", got, want)
	}
	if got := ocpStringToSign("GET", nil, "", "d", "h", nil, "/p", ""); got != "GET\n\n\nd\nh\n\n/p" {
		t.Errorf("empty parts: %q", got)
	}
}

// ---- helpers ----

// clientFrom is a REST client whose connections come from the loopback
// address ip, so that failures it causes count against an address of its
// own in the server's throttle (the harness's calls come from 127.0.0.1).
func (s *server) clientFrom(t *testing.T, ip string) *http.Client {
	t.Helper()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 5 * time.Second}
	tr := &http.Transport{TLSClientConfig: s.tlsConfig(), DialContext: d.DialContext}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Timeout: 20 * time.Second, Transport: tr}
}

// do sends req with client and decodes the answer as s.call does.
func do(t *testing.T, client *http.Client, req *http.Request) apiResponse {
	t.Helper()
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading body: %v", req.Method, req.URL, err)
	}
	r := apiResponse{status: resp.StatusCode, header: resp.Header, body: b}
	if err := json.Unmarshal(b, &r.obj); err != nil {
		t.Fatalf("%s %s: status %d, body is not a JSON object: %v\n%s", req.Method, req.URL, resp.StatusCode, err, b)
	}
	return r
}

// basicFrom sends a REST request with c's Basic credentials through client.
func (s *server) basicFrom(t *testing.T, client *http.Client, method, path string, c *creds) apiResponse {
	t.Helper()
	req, err := http.NewRequest(method, s.url(path), nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", c.basic())
	return do(t, client, req)
}

// createUser creates a user as admin; its password is a secret.
func (s *server) createUser(t *testing.T, c *creds, roles ...string) {
	t.Helper()
	addSecret(c.pass)
	addSecret(c.basic())
	r := s.call(t, http.MethodPost, "/api/v2/iam/users", admin, map[string]any{"username": c.user, "password": c.pass, "roles": roles})
	if r.status != http.StatusOK {
		t.Fatalf("creating user %s: status %d: %s", c.user, r.status, r.body)
	}
}

// createAccessKey creates an access key for user as admin and registers
// its secret.
func (s *server) createAccessKey(t *testing.T, user string) accessKey {
	t.Helper()
	r := s.call(t, http.MethodPost, "/api/v2/iam/accessKeys", admin, map[string]any{"username": user})
	if r.status != http.StatusOK {
		t.Fatalf("creating an access key for %s: status %d: %s", user, r.status, r.body)
	}
	var out struct {
		AccessKeyID string `json:"accessKeyId"`
		Username    string `json:"username"`
		Secret      string `json:"secret"`
	}
	r.decode(t, &out)
	if out.AccessKeyID == "" || out.Secret == "" || out.Username != user {
		t.Fatalf("access key answer %s", r.body)
	}
	addSecret(out.Secret)
	return accessKey{id: out.AccessKeyID, secret: out.Secret}
}

// listAccessKeys returns the ids of user's keys and the raw answer.
func (s *server) listAccessKeys(t *testing.T, user string) ([]string, []byte) {
	t.Helper()
	r := s.call(t, http.MethodGet, "/api/v2/iam/accessKeys?username="+user, admin, nil)
	if r.status != http.StatusOK {
		t.Fatalf("listing access keys: status %d: %s", r.status, r.body)
	}
	var page struct {
		Contents []struct {
			AccessKeyID string `json:"accessKeyId"`
			Username    string `json:"username"`
		} `json:"contents"`
	}
	r.decode(t, &page)
	var ids []string
	for _, k := range page.Contents {
		ids = append(ids, k.AccessKeyID)
	}
	return ids, r.body
}

// wantUnauthorized checks a 401 envelope that repeats none of the
// Authorization value.
func wantUnauthorized(t *testing.T, what string, r apiResponse, authz string) {
	t.Helper()
	if r.status != http.StatusUnauthorized {
		t.Errorf("%s: status %d, want 401: %s", what, r.status, r.body)
		return
	}
	r.wantError(t, http.StatusUnauthorized)
	if _, sig, _ := strings.Cut(authz, ":"); sig != "" && bytes.Contains(r.body, []byte(sig)) {
		t.Errorf("%s: the 401 answer repeats the signature: %s", what, r.body)
	}
}

func wantGRPCCode(t *testing.T, what string, err error, want codes.Code) {
	t.Helper()
	if got := status.Code(err); got != want {
		t.Errorf("%s: gRPC code %s (%v), want %s", what, got, err, want)
	}
}

// checkLogLacks fails the test if the process's log holds any of values.
func checkLogLacks(t *testing.T, p *process, values []string) {
	t.Helper()
	log := p.log()
	if log == "" {
		t.Errorf("%s log is empty", p.name)
	}
	for _, v := range values {
		if strings.Contains(log, v) {
			t.Errorf("%s log contains an Authorization value sent (%.30s…)", p.name, v)
		}
	}
}

type auditEventJSON struct {
	ID            int64  `json:"id"`
	Time          string `json:"time"`
	Username      string `json:"username"`
	AccessKeyID   string `json:"accessKeyId"`
	SourceAddress string `json:"sourceAddress"`
	Operation     string `json:"operation"`
	HostID        int64  `json:"hostId"`
	TaskID        int64  `json:"taskId"`
	Target        string `json:"target"`
	Outcome       string `json:"outcome"`
	Message       string `json:"message"`
}

type auditPage struct {
	Contents []auditEventJSON `json:"contents"`
	Page     struct {
		TotalElements int64 `json:"totalElements"`
		TotalPages    int64 `json:"totalPages"`
		Number        int64 `json:"number"`
		Size          int64 `json:"size"`
	} `json:"page"`
}

// auditEvents reads a page of the audit record as admin.
func (s *server) auditEvents(t *testing.T, query string) auditPage {
	t.Helper()
	r := s.call(t, http.MethodGet, "/api/v2/audit/events?"+query, admin, nil)
	if r.status != http.StatusOK {
		t.Fatalf("GET audit events ?%s: status %d: %s", query, r.status, r.body)
	}
	var p auditPage
	r.decode(t, &p)
	return p
}

// findEvent returns the first event that match accepts.
func findEvent(events []auditEventJSON, match func(auditEventJSON) bool) (auditEventJSON, bool) {
	for _, e := range events {
		if match(e) {
			return e, true
		}
	}
	return auditEventJSON{}, false
}

// wantEvent fails the test unless an event matches.
func wantEvent(t *testing.T, events []auditEventJSON, what string, match func(auditEventJSON) bool) auditEventJSON {
	t.Helper()
	e, ok := findEvent(events, match)
	if !ok {
		var b strings.Builder
		for _, e := range events {
			fmt.Fprintf(&b, "  %+v\n", e)
		}
		t.Errorf("no audit event for %s among %d:\n%s", what, len(events), b.String())
	}
	return e
}

// argValue returns the value that follows flag in argv.
func argValue(t *testing.T, argv []string, flag string) string {
	t.Helper()
	i := slices.Index(argv, flag)
	if i < 0 || i+1 >= len(argv) {
		t.Fatalf("%s not in %v", flag, argv)
	}
	return argv[i+1]
}

// joinTokenOf returns the join token agentd a was started with.
func joinTokenOf(t *testing.T, a *agentd) string {
	t.Helper()
	for _, e := range a.env {
		if v, ok := strings.CutPrefix(e, "AGENTPLANE_JOIN_TOKEN="); ok {
			return v
		}
	}
	t.Fatalf("agentd %s has no join token in %v", a.name, a.env)
	return ""
}

// agentHello opens an AgentService stream on cc, sends hello and returns
// the error that ends the stream (nil if the server welcomed it).
func agentHello(t *testing.T, cc *grpc.ClientConn, hello *agentv1.Hello) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	stream, err := agentv1.NewAgentServiceClient(cc).Connect(ctx)
	if err != nil {
		return err
	}
	if err := stream.Send(&agentv1.ConnectRequest{Kind: &agentv1.ConnectRequest_Hello{Hello: hello}}); err != nil {
		_, err = stream.Recv() // the status that ended it
		return err
	}
	m, err := stream.Recv()
	if err == nil && m.GetWelcome() == nil {
		return fmt.Errorf("first answer is not a welcome: %v", m)
	}
	return err
}

// newCSR returns a DER certificate request for name with a new P-256 key.
func newCSR(t *testing.T, name string) []byte {
	t.Helper()
	_, der := newKeyAndCSR(t, name)
	return der
}

// countLines returns the lines of log holding every one of parts.
func countLines(log string, parts ...string) int {
	n := 0
	for _, line := range strings.Split(log, "\n") {
		all := true
		for _, p := range parts {
			all = all && strings.Contains(line, p)
		}
		if all && line != "" {
			n++
		}
	}
	return n
}

// ---- tests ----

// TestAccessKeySignature signs real HTTPS and gRPC requests with an access
// key of a non-admin user: accepted when right (the task's creator is the
// key's user), refused when the Date is 16 minutes off, when the body, path
// or query differ from what was signed, or when the key was deleted.
func TestAccessKeySignature(t *testing.T) {
	t.Parallel()
	s, by, home, a := fleetOfOne(t, time.Second)
	addSecret(admin.basic())
	operator := &creds{"operator", "operator-password-1"}
	s.createUser(t, operator, "HOST_MANAGER", "TASK_VIEWER")
	k := s.createAccessKey(t, operator.user)
	var sent []string // every Authorization value sent; none may be logged

	ids, body := s.listAccessKeys(t, operator.user)
	if !slices.Contains(ids, k.id) {
		t.Errorf("key %s not listed: %s", k.id, body)
	}
	if bytes.Contains(body, []byte(k.secret)) || bytes.Contains(body, []byte(`"secret"`)) {
		t.Errorf("the key list shows a secret: %s", body)
	}

	stopPath := fmt.Sprintf("/api/v2/compute/hosts/%d/agent/stop", a.hostID)
	stopBody := []byte(`{"reason": "maintenance window 42"}`)
	stopHdr := http.Header{"Content-Type": {"application/json"}, "X-Ocp-Request-Id": {"it-7f3a"}, "X-OCP-Client": {"integration"}}
	var created taskJSON
	t.Run("signed stop", func(t *testing.T) {
		req := s.signedRequest(t, k, http.MethodPost, stopPath, stopBody, stopHdr, time.Now())
		sent = append(sent, req.Header.Get("Authorization"))
		r := do(t, s.client, req)
		if r.status != http.StatusOK {
			t.Fatalf("signed stop: status %d: %s", r.status, r.body)
		}
		r.decode(t, &created)
		var tk struct {
			Creator string `json:"creator"`
		}
		r.decode(t, &tk)
		if tk.Creator != operator.user {
			t.Errorf("created task's creator %q, want %q", tk.Creator, operator.user)
		}
		checkStopped(t, s, s.waitFinal(t, created.ID), home, by, a.hostID)
		got := s.call(t, http.MethodGet, fmt.Sprintf("/api/v2/tasks/instances/%d", created.ID), admin, nil)
		got.decode(t, &tk)
		if tk.Creator != operator.user {
			t.Errorf("stored task's creator %q, want %q", tk.Creator, operator.user)
		}
	})
	if created.ID == 0 {
		t.FailNow()
	}

	t.Run("signed GET with a query to encode", func(t *testing.T) {
		// Spaces, a comma, a '+' as a form's space and a lowercase
		// escape: the canonical query re-encodes them all.
		for _, q := range []string{
			fmt.Sprintf("sort=id%%2Cdesc&name=Stop%%20OCP&size=5&hostId=%d&page=1", a.hostID),
			fmt.Sprintf("size=5&name=stop+ocp+agent&sort=id%%2cdesc&hostId=%d", a.hostID),
		} {
			req := s.signedRequest(t, k, http.MethodGet, "/api/v2/tasks/instances?"+q, nil, nil, time.Now())
			sent = append(sent, req.Header.Get("Authorization"))
			r := do(t, s.client, req)
			if r.status != http.StatusOK {
				t.Errorf("signed GET ?%s: status %d: %s", q, r.status, r.body)
				continue
			}
			var page struct {
				Contents []taskJSON `json:"contents"`
			}
			r.decode(t, &page)
			if len(page.Contents) != 1 || page.Contents[0].ID != created.ID {
				t.Errorf("signed GET ?%s: %d tasks, want task %d: %s", q, len(page.Contents), created.ID, r.body)
			}
		}
	})

	// Refused attempts come from their own address (see clientFrom).
	from2 := s.clientFrom(t, "127.0.0.2")
	tasksBefore := s.countTasks(t, fmt.Sprintf("hostId=%d", a.hostID))
	t.Run("refused", func(t *testing.T) {
		for _, skew := range []time.Duration{-16 * time.Minute, 16 * time.Minute} {
			req := s.signedRequest(t, k, http.MethodPost, stopPath, stopBody, stopHdr, time.Now().Add(skew))
			sent = append(sent, req.Header.Get("Authorization"))
			wantUnauthorized(t, fmt.Sprintf("Date %v off", skew), do(t, from2, req), req.Header.Get("Authorization"))
		}
		// Within the window: accepted (and the key's failures forgotten).
		req := s.signedRequest(t, k, http.MethodGet, "/api/v2/compute/hosts?page=1&size=20", nil, nil, time.Now().Add(-14*time.Minute))
		sent = append(sent, req.Header.Get("Authorization"))
		if r := do(t, from2, req); r.status != http.StatusOK {
			t.Errorf("Date 14 minutes old: status %d, want 200: %s", r.status, r.body)
		}

		req = s.signedRequest(t, k, http.MethodPost, stopPath, stopBody, stopHdr, time.Now())
		sent = append(sent, req.Header.Get("Authorization"))
		wantUnauthorized(t, "tampered body", do(t, from2, withBody(req, []byte(`{"reason": "maintenance window 43"}`))), req.Header.Get("Authorization"))

		startPath := fmt.Sprintf("/api/v2/compute/hosts/%d/agent/start", a.hostID)
		req = s.signedRequest(t, k, http.MethodPost, stopPath, stopBody, stopHdr, time.Now())
		sent = append(sent, req.Header.Get("Authorization"))
		wantUnauthorized(t, "tampered path", do(t, from2, withTarget(t, s, req, startPath)), req.Header.Get("Authorization"))

		req = s.signedRequest(t, k, http.MethodGet, "/api/v2/tasks/instances?page=1&size=5", nil, nil, time.Now())
		sent = append(sent, req.Header.Get("Authorization"))
		wantUnauthorized(t, "tampered query", do(t, from2, withTarget(t, s, req, "/api/v2/tasks/instances?page=1&size=6")), req.Header.Get("Authorization"))

		// A tampered x-ocp- header.
		req = s.signedRequest(t, k, http.MethodPost, stopPath, stopBody, stopHdr, time.Now())
		sent = append(sent, req.Header.Get("Authorization"))
		req.Header.Set("X-Ocp-Request-Id", "it-other")
		wantUnauthorized(t, "tampered x-ocp- header", do(t, from2, req), req.Header.Get("Authorization"))

		if n := s.countTasks(t, fmt.Sprintf("hostId=%d", a.hostID)); n != tasksBefore {
			t.Errorf("refused requests created tasks: %d, was %d", n, tasksBefore)
		}
	})

	cc := s.conn(t)
	hosts := hostv1.NewHostServiceClient(cc)
	const stopMethod = "/agentplane.host.v1.HostService/StopAgent"
	t.Run("gRPC", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		stop := &hostv1.StopAgentRequest{HostId: a.hostID}
		sctx, authz := grpcSignedReq(ctx, k, s.grpcAddr, stopMethod, stop, time.Now(), map[string]string{"x-ocp-request-id": "it-grpc-1"})
		sent = append(sent, authz)
		resp, err := hosts.StopAgent(sctx, stop)
		if err != nil {
			t.Fatalf("signed StopAgent: %v", err)
		}
		tk, err := taskv1.NewTaskServiceClient(cc).GetTask(withCreds(ctx, admin), &taskv1.GetTaskRequest{Id: resp.GetTask().GetId()})
		if err != nil {
			t.Fatalf("GetTask: %v", err)
		}
		if tk.GetTask().GetCreator() != operator.user {
			t.Errorf("gRPC task's creator %q, want %q", tk.GetTask().GetCreator(), operator.user)
		}
		if fin := s.waitFinal(t, resp.GetTask().GetId()); fin.Status != "SUCCESSFUL" {
			t.Errorf("second stop (nothing left to stop) ended %s, want SUCCESSFUL", fin.Status)
		}

		// Signed for GetHost, sent to StopAgent; and a stale date.
		sctx, authz = grpcSignedReq(ctx, k, s.grpcAddr, "/agentplane.host.v1.HostService/GetHost", stop, time.Now(), nil)
		sent = append(sent, authz)
		_, err = hosts.StopAgent(sctx, stop)
		wantGRPCCode(t, "signed for another method", err, codes.Unauthenticated)
		sctx, authz = grpcSignedReq(ctx, k, s.grpcAddr, stopMethod, stop, time.Now().Add(-16*time.Minute), nil)
		sent = append(sent, authz)
		_, err = hosts.StopAgent(sctx, stop)
		wantGRPCCode(t, "Date 16 minutes old", err, codes.Unauthenticated)
		if err != nil && strings.Contains(err.Error(), authz[len(ocpScheme)+1:]) {
			t.Errorf("the gRPC error repeats the credentials: %v", err)
		}
		// Signed with one x-ocp- value, sent with another.
		sctx, authz = grpcSignedReq(ctx, k, s.grpcAddr, stopMethod, stop, time.Now(), map[string]string{"x-ocp-request-id": "it-grpc-2"})
		sent = append(sent, authz)
		md, _ := metadata.FromOutgoingContext(sctx)
		md = md.Copy()
		md.Set("x-ocp-request-id", "it-grpc-3")
		_, err = hosts.StopAgent(metadata.NewOutgoingContext(ctx, md), stop)
		wantGRPCCode(t, "tampered x-ocp- metadata", err, codes.Unauthenticated)
	})

	t.Run("deleted key", func(t *testing.T) {
		if r := s.call(t, http.MethodDelete, "/api/v2/iam/accessKeys/"+k.id, admin, nil); r.status != http.StatusOK {
			t.Fatalf("deleting the key: status %d: %s", r.status, r.body)
		}
		if ids, body := s.listAccessKeys(t, operator.user); slices.Contains(ids, k.id) {
			t.Errorf("deleted key still listed: %s", body)
		}
		req := s.signedRequest(t, k, http.MethodGet, "/api/v2/compute/hosts", nil, nil, time.Now())
		sent = append(sent, req.Header.Get("Authorization"))
		wantUnauthorized(t, "deleted key", do(t, from2, req), req.Header.Get("Authorization"))
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		get := &hostv1.GetHostRequest{Id: a.hostID}
		sctx, authz := grpcSignedReq(ctx, k, s.grpcAddr, "/agentplane.host.v1.HostService/GetHost", get, time.Now(), nil)
		sent = append(sent, authz)
		_, err := hosts.GetHost(sctx, get)
		wantGRPCCode(t, "deleted key over gRPC", err, codes.Unauthenticated)
	})

	t.Run("audit", func(t *testing.T) {
		ev := s.auditEvents(t, fmt.Sprintf("hostId=%d&size=100", a.hostID)).Contents
		wantEvent(t, ev, "the signed stop", func(e auditEventJSON) bool {
			return e.Operation == "POST /compute/hosts/{hostId}/agent/stop" && e.Username == operator.user &&
				e.AccessKeyID == k.id && e.TaskID == created.ID && e.Outcome == "OK"
		})
		wantEvent(t, ev, "a refused signed stop from 127.0.0.2", func(e auditEventJSON) bool {
			return e.Operation == "POST /compute/hosts/{hostId}/agent/stop" && e.Outcome == "UNAUTHENTICATED" &&
				strings.HasPrefix(e.SourceAddress, "127.0.0.2:")
		})
		wantEvent(t, ev, "the signed gRPC StopAgent", func(e auditEventJSON) bool {
			return e.Operation == stopMethod && e.Username == operator.user && e.AccessKeyID == k.id && e.Outcome == "OK"
		})
	})

	// No Authorization value sent reaches the server's log; the harness
	// checks every log for the key's secret and the passwords.
	for _, v := range sent {
		addSecret(v)
	}
	checkLogLacks(t, s.proc, sent)
}

// TestAgentIdentity: a host's client certificate cannot speak for another
// host, a stream without one is refused, a used join token enrolls nothing,
// and a revoked host is shut out while the others go on. The audit record
// of it all is then read back, over REST and gRPC.
func TestAgentIdentity(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	addSecret(admin.basic())
	homeA, homeB := newHome(t), newHome(t)
	startFake(t, homeB)
	a := s.startAgentd(t, homeA, time.Second)
	b := s.startAgentd(t, homeB, time.Second)

	stateA := argValue(t, a.argv, "--state-dir")
	for _, f := range []string{"agent.key", "agent.crt"} {
		fi, err := os.Stat(filepath.Join(stateA, f))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm()&0o077 != 0 {
			t.Errorf("%s has mode %v, want 0600", f, fi.Mode().Perm())
		}
	}
	certA, err := tls.LoadX509KeyPair(filepath.Join(stateA, "agent.crt"), filepath.Join(stateA, "agent.key"))
	if err != nil {
		t.Fatal(err)
	}
	mtls := s.tlsConfig()
	mtls.Certificates = []tls.Certificate{certA}
	ccA, err := grpc.NewClient(s.grpcAddr, grpc.WithTransportCredentials(credentials.NewTLS(mtls)))
	if err != nil {
		t.Fatal(err)
	}
	defer ccA.Close()
	cc := s.conn(t) // TLS without a client certificate

	t.Run("impersonation refused", func(t *testing.T) {
		for _, tc := range []struct {
			what  string
			hello *agentv1.Hello
		}{
			{"B's host id", &agentv1.Hello{HostId: b.hostID, HostName: a.name, InstallHome: homeA}},
			{"B's name", &agentv1.Hello{HostName: b.name, InstallHome: homeB}},
			{"B's host id and name", &agentv1.Hello{HostId: b.hostID, HostName: b.name, InstallHome: homeB}},
		} {
			wantGRPCCode(t, "A's certificate, hello naming "+tc.what, agentHello(t, ccA, tc.hello), codes.PermissionDenied)
		}
		for _, h := range []*agentv1.Hello{
			{HostId: b.hostID, HostName: b.name, InstallHome: homeB},
			{HostName: b.name, Token: "not-a-bootstrap-token", InstallHome: homeB},
		} {
			wantGRPCCode(t, "no client certificate", agentHello(t, cc, h), codes.Unauthenticated)
		}
		for _, x := range []*agentd{a, b} {
			if h := s.getHost(t, x.hostID); h.Status != "ONLINE" {
				t.Errorf("host %s is %s after the refused streams, want ONLINE", x.name, h.Status)
			}
		}
		if n := countLines(a.proc.log(), "connection to server lost"); n != 0 {
			t.Errorf("agentd A lost its stream %d times", n)
		}
		if n := countLines(b.proc.log(), "connection to server lost"); n != 0 {
			t.Errorf("agentd B lost its stream %d times", n)
		}
	})

	t.Run("join tokens", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		agents := agentv1.NewAgentServiceClient(cc)
		used := joinTokenOf(t, a)
		for _, name := range []string{a.name, "it-another-host"} {
			_, err := agents.Enroll(ctx, &agentv1.EnrollRequest{JoinToken: used, HostName: name, Csr: newCSR(t, name)})
			wantGRPCCode(t, "enrolling "+name+" with a used token", err, codes.Unauthenticated)
		}
		bound := s.joinToken(t, "it-bound-name")
		_, err := agents.Enroll(ctx, &agentv1.EnrollRequest{JoinToken: bound, HostName: b.name, Csr: newCSR(t, b.name)})
		wantGRPCCode(t, "a token bound to another name", err, codes.PermissionDenied)
		_, err = agents.Enroll(ctx, &agentv1.EnrollRequest{JoinToken: "forged-token-0123456789", HostName: "it-forged", Csr: newCSR(t, "it-forged")})
		wantGRPCCode(t, "a forged token", err, codes.Unauthenticated)
	})

	var stopB taskJSON
	t.Run("B's stop works", func(t *testing.T) {
		stopB = s.stopOK(t, b.hostID)
		if tk := s.waitFinal(t, stopB.ID); tk.Status != "SUCCESSFUL" {
			t.Errorf("stop of B ended %s, want SUCCESSFUL: %+v", tk.Status, tk)
		}
		checkNoneUnder(t, homeB)
	})

	hostManager := &creds{"hostmgr", "hostmgr-password-1"}
	s.createUser(t, hostManager, "HOST_MANAGER", "TASK_MANAGER")
	revokePath := fmt.Sprintf("/api/v2/compute/hosts/%d/revoke", a.hostID)
	t.Run("revoked host refused", func(t *testing.T) {
		s.call(t, http.MethodPost, revokePath, hostManager, nil).wantError(t, http.StatusForbidden)
		if h := s.getHost(t, a.hostID); h.Status != "ONLINE" {
			t.Errorf("host A is %s after a refused revoke, want ONLINE", h.Status)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		_, err := hostClient(cc).RevokeHost(withCreds(ctx, hostManager), &hostv1.RevokeHostRequest{HostId: a.hostID})
		wantGRPCCode(t, "RevokeHost as HOST_MANAGER", err, codes.PermissionDenied)

		before := countLines(a.proc.log(), "connection to server lost", "PermissionDenied")
		r := s.call(t, http.MethodPost, revokePath, admin, nil)
		if r.status != http.StatusOK {
			t.Fatalf("revoke: status %d: %s", r.status, r.body)
		}
		var revoked struct {
			ID         int64   `json:"id"`
			RevokeTime *string `json:"revokeTime"`
		}
		r.decode(t, &revoked)
		if revoked.ID != a.hostID || revoked.RevokeTime == nil {
			t.Errorf("revoke answered %s", r.body)
		}
		s.waitHost(t, a.name, 15*time.Second, "OFFLINE after the revocation", func(h hostJSON) bool { return h.Status == "OFFLINE" })
		// The stream ended, and agentd's reconnects are refused.
		waitFor(t, 20*time.Second, "agentd A's stream end and a refused reconnect in its log", func() bool {
			return countLines(a.proc.log(), "connection to server lost", "PermissionDenied")-before >= 2
		})
		waitFor(t, 10*time.Second, "the server to log a revoked host's refused stream", func() bool {
			return countLines(s.proc.log(), "agent stream refused", "revoked") >= 1
		})
		if !a.proc.alive() {
			t.Errorf("agentd A exited: %v", a.proc.err)
		}
		// A's own certificate, A's own hello: refused too.
		wantGRPCCode(t, "A's hello after the revocation",
			agentHello(t, ccA, &agentv1.Hello{HostId: a.hostID, HostName: a.name, InstallHome: homeA}), codes.PermissionDenied)
		if h := s.getHost(t, a.hostID); h.Status != "OFFLINE" {
			t.Errorf("host A is %s, want OFFLINE", h.Status)
		}

		// A stop of A is refused at once: 400, 20003, naming the revocation.
		if r := s.stopREST(t, a.hostID, admin); r.status != http.StatusBadRequest {
			t.Errorf("stop of revoked host A: %d %s, want 400", r.status, r.body)
		} else if msg := r.wantError(t, http.StatusBadRequest); !strings.Contains(msg, "revoked") {
			t.Errorf("stop of revoked host A: message %q does not say it is revoked", msg)
		}

		// B goes on.
		if h := s.getHost(t, b.hostID); h.Status != "ONLINE" {
			t.Errorf("host B is %s, want ONLINE", h.Status)
		}
		if tk := s.waitFinal(t, s.stopOK(t, b.hostID).ID); tk.Status != "SUCCESSFUL" {
			t.Errorf("stop of B after A's revocation ended %s", tk.Status)
		}
		if n := countLines(b.proc.log(), "connection to server lost"); n != 0 {
			t.Errorf("agentd B lost its stream %d times", n)
		}
	})

	// A refused call from an address of its own.
	wrong := &creds{"admin", "wrong-password-audit"}
	addSecret(wrong.pass)
	addSecret(wrong.basic())
	from3 := s.clientFrom(t, "127.0.0.3")
	s.basicFrom(t, from3, http.MethodPost, fmt.Sprintf("/api/v2/compute/hosts/%d/agent/stop", b.hostID), wrong).wantError(t, http.StatusUnauthorized)

	t.Run("audit", func(t *testing.T) {
		all := s.auditEvents(t, "size=2000")
		ev := all.Contents
		if int64(len(ev)) != all.Page.TotalElements {
			t.Errorf("%d events on one page, totalElements %d", len(ev), all.Page.TotalElements)
		}
		for i := 1; i < len(ev); i++ {
			if ev[i].ID >= ev[i-1].ID {
				t.Errorf("events not newest first: id %d after %d", ev[i].ID, ev[i-1].ID)
				break
			}
		}
		stop := wantEvent(t, ev, "B's stop", func(e auditEventJSON) bool {
			return e.Operation == "POST /compute/hosts/{hostId}/agent/stop" && e.Username == "admin" &&
				e.HostID == b.hostID && e.TaskID == stopB.ID && e.Outcome == "OK"
		})
		if !strings.HasPrefix(stop.SourceAddress, "127.0.0.1:") || stop.Time == "" || stop.AccessKeyID != "" {
			t.Errorf("stop event %+v: want source 127.0.0.1, a time, no access key", stop)
		}
		for _, x := range []*agentd{a, b} {
			wantEvent(t, ev, "the enrollment of "+x.name, func(e auditEventJSON) bool {
				return e.Operation == "/agentplane.agent.v1.AgentService/Enroll" && e.Username == "agent:"+x.name &&
					e.HostID == x.hostID && e.Outcome == "OK"
			})
		}
		wantEvent(t, ev, "the enrollment with a used token", func(e auditEventJSON) bool {
			return e.Operation == "/agentplane.agent.v1.AgentService/Enroll" && e.Username == "agent:"+a.name &&
				e.Outcome == "UNAUTHENTICATED" && e.SourceAddress != ""
		})
		wantEvent(t, ev, "the revocation", func(e auditEventJSON) bool {
			return e.Operation == "POST /compute/hosts/{hostId}/revoke" && e.Username == "admin" && e.HostID == a.hostID && e.Outcome == "OK"
		})
		wantEvent(t, ev, "the refused revocation", func(e auditEventJSON) bool {
			return e.Operation == "POST /compute/hosts/{hostId}/revoke" && e.Username == hostManager.user &&
				e.HostID == a.hostID && e.Outcome == "PERMISSION_DENIED" && strings.HasPrefix(e.SourceAddress, "127.0.0.1:")
		})
		wantEvent(t, ev, "the refused gRPC revocation", func(e auditEventJSON) bool {
			return e.Operation == "/agentplane.host.v1.HostService/RevokeHost" && e.Username == hostManager.user &&
				e.HostID == a.hostID && e.Outcome == "PERMISSION_DENIED"
		})
		refused := wantEvent(t, ev, "the stop with a wrong password", func(e auditEventJSON) bool {
			return e.Operation == "POST /compute/hosts/{hostId}/agent/stop" && e.Outcome == "UNAUTHENTICATED" &&
				strings.HasPrefix(e.SourceAddress, "127.0.0.3:")
		})
		if refused.Username != "" || refused.HostID != b.hostID {
			t.Errorf("refused stop %+v: want no user, host %d", refused, b.hostID)
		}
		wantEvent(t, ev, "a join token's creation", func(e auditEventJSON) bool {
			return e.Operation == "POST /agent/joinTokens" && e.Username == "admin" && strings.HasPrefix(e.Target, "join_token:")
		})
		for _, e := range ev {
			for _, secret := range []string{joinTokenOf(t, a), joinTokenOf(t, b), wrong.pass, hostManager.pass} {
				if strings.Contains(e.Message+e.Target+e.Operation, secret) {
					t.Errorf("audit event %d holds a secret", e.ID)
				}
			}
		}

		// Filters.
		for _, f := range []struct {
			query string
			match func(auditEventJSON) bool
			min   int
		}{
			{"operation=REVOKE", func(e auditEventJSON) bool { return strings.Contains(strings.ToLower(e.Operation), "revoke") }, 3},
			{fmt.Sprintf("hostId=%d", b.hostID), func(e auditEventJSON) bool { return e.HostID == b.hostID }, 3},
			{"outcome=PERMISSION_DENIED", func(e auditEventJSON) bool { return e.Outcome == "PERMISSION_DENIED" }, 2},
			{"username=" + hostManager.user, func(e auditEventJSON) bool { return e.Username == hostManager.user }, 2},
			{fmt.Sprintf("taskId=%d", stopB.ID), func(e auditEventJSON) bool { return e.TaskID == stopB.ID }, 1},
			{fmt.Sprintf("hostId=%d&outcome=OK&operation=agent/stop", b.hostID), func(e auditEventJSON) bool {
				return e.HostID == b.hostID && e.Outcome == "OK" && strings.Contains(e.Operation, "agent/stop")
			}, 2},
		} {
			p := s.auditEvents(t, f.query+"&size=2000")
			want := 0
			for _, e := range ev {
				if f.match(e) {
					want++
				}
			}
			if len(p.Contents) != want || p.Page.TotalElements != int64(want) || want < f.min {
				t.Errorf("?%s: %d events (total %d), want %d (at least %d)", f.query, len(p.Contents), p.Page.TotalElements, want, f.min)
			}
			for _, e := range p.Contents {
				if !f.match(e) {
					t.Errorf("?%s returned %+v", f.query, e)
				}
			}
		}

		// Paging: pages of 3, newest first, together the whole record.
		var paged []int64
		pages := (len(ev) + 2) / 3
		for n := 1; n <= pages+1; n++ {
			p := s.auditEvents(t, fmt.Sprintf("size=3&page=%d", n))
			if p.Page.TotalElements != int64(len(ev)) || p.Page.TotalPages != int64(pages) || p.Page.Size != 3 || p.Page.Number != int64(n) {
				t.Errorf("page %d: page %+v, want total %d in %d pages of 3", n, p.Page, len(ev), pages)
			}
			if n == pages+1 && len(p.Contents) != 0 {
				t.Errorf("page %d past the end has %d events", n, len(p.Contents))
			}
			for _, e := range p.Contents {
				paged = append(paged, e.ID)
			}
		}
		var ids []int64
		for _, e := range ev {
			ids = append(ids, e.ID)
		}
		if !slices.Equal(paged, ids) {
			t.Errorf("pages of 3 give ids %v, want %v", paged, ids)
		}
		s.call(t, http.MethodGet, "/api/v2/audit/events?size=0", admin, nil).wantError(t, http.StatusBadRequest)

		// Only ADMIN reads the record.
		s.call(t, http.MethodGet, "/api/v2/audit/events", hostManager, nil).wantError(t, http.StatusForbidden)
		s.call(t, http.MethodGet, "/api/v2/audit/events", nil, nil).wantError(t, http.StatusUnauthorized)

		// And over gRPC.
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		audits := auditv1.NewAuditServiceClient(cc)
		resp, err := audits.ListAuditEvents(withCreds(ctx, admin), &auditv1.ListAuditEventsRequest{
			HostId: b.hostID, Operation: "agent/stop", Outcome: "OK", Size: 1, Page: 1,
		})
		if err != nil {
			t.Fatalf("ListAuditEvents: %v", err)
		}
		if len(resp.GetEvents()) != 1 || resp.GetTotalElements() < 2 {
			t.Errorf("ListAuditEvents of B's stops, size 1: %d events of %d", len(resp.GetEvents()), resp.GetTotalElements())
		} else if e := resp.GetEvents()[0]; e.GetHostId() != b.hostID || e.GetUsername() != "admin" || e.GetTaskId() <= stopB.ID ||
			!strings.HasPrefix(e.GetSourceAddress(), "127.0.0.1:") || e.GetTime() == nil {
			t.Errorf("newest stop of B over gRPC: %v", e)
		}
		resp, err = audits.ListAuditEvents(withCreds(ctx, admin), &auditv1.ListAuditEventsRequest{TaskId: stopB.ID})
		if err != nil {
			t.Fatalf("ListAuditEvents by task: %v", err)
		}
		if len(resp.GetEvents()) != 1 || resp.GetEvents()[0].GetOperation() != "POST /compute/hosts/{hostId}/agent/stop" {
			t.Errorf("ListAuditEvents of task %d: %v", stopB.ID, resp.GetEvents())
		}
		_, err = audits.ListAuditEvents(withCreds(ctx, hostManager), &auditv1.ListAuditEventsRequest{})
		wantGRPCCode(t, "ListAuditEvents as HOST_MANAGER", err, codes.PermissionDenied)
		_, err = audits.ListAuditEvents(ctx, &auditv1.ListAuditEventsRequest{})
		wantGRPCCode(t, "ListAuditEvents without credentials", err, codes.Unauthenticated)
	})

	checkLogLacks(t, s.proc, []string{wrong.basic(), hostManager.basic(), admin.basic()})
}

func hostClient(cc *grpc.ClientConn) hostv1.HostServiceClient { return hostv1.NewHostServiceClient(cc) }

// TestBruteForceThrottled guesses one user's password from one address
// until the server locks it out: 429 with Retry-After and the OCP error
// envelope, even for the right password; another user from another
// address goes on. The server is this test's alone (the throttle is per
// process).
func TestBruteForceThrottled(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	victim := &creds{"victim", "victim-password-1"}
	other := &creds{"bystander", "bystander-password-1"}
	s.createUser(t, victim, "HOST_VIEWER")
	s.createUser(t, other, "HOST_VIEWER")
	guess := &creds{victim.user, "guessed-password-0"}
	addSecret(guess.pass)
	addSecret(guess.basic())
	const path = "/api/v2/compute/hosts"

	attacker := s.clientFrom(t, "127.0.0.2")
	elsewhere := s.clientFrom(t, "127.0.0.3")
	if r := s.basicFrom(t, attacker, http.MethodGet, path, victim); r.status != http.StatusOK {
		t.Fatalf("victim before the attack: status %d: %s", r.status, r.body)
	}

	// Failures 1..10 are 401; from the 6th on the server waits before
	// answering; the 10th locks this user out from this address.
	// The server waits 0.5 s before the 6th, growing by 0.5 s: guesses 6..10
	// take at least 7.5 s in all, whatever bcrypt costs.
	var slowed time.Duration
	for i := 1; i <= 10; i++ {
		start := time.Now()
		r := s.basicFrom(t, attacker, http.MethodGet, path, guess)
		if i >= 6 {
			slowed += time.Since(start)
		}
		if r.status != http.StatusUnauthorized {
			t.Fatalf("guess %d: status %d, want 401: %s", i, r.status, r.body)
		}
	}
	if slowed < 7*time.Second {
		t.Errorf("guesses 6..10 were answered in %s in all: not slowed down", slowed)
	}

	wantThrottled := func(t *testing.T, what string, r apiResponse) {
		t.Helper()
		if r.status != http.StatusTooManyRequests {
			t.Errorf("%s: status %d, want 429: %s", what, r.status, r.body)
			return
		}
		r.wantError(t, http.StatusTooManyRequests)
		ra, err := strconv.Atoi(r.header.Get("Retry-After"))
		if err != nil || ra < 1 || ra > 15*60 {
			t.Errorf("%s: Retry-After %q, want whole seconds 1..900", what, r.header.Get("Retry-After"))
		}
		for _, field := range []string{"timestamp", "traceId", "duration"} {
			if _, ok := r.obj[field]; !ok {
				t.Errorf("%s: envelope without %s: %s", what, field, r.body)
			}
		}
		if bytes.Contains(r.body, []byte(guess.pass)) || bytes.Contains(r.body, []byte(victim.pass)) {
			t.Errorf("%s: the answer repeats a password: %s", what, r.body)
		}
	}
	wantThrottled(t, "11th guess", s.basicFrom(t, attacker, http.MethodGet, path, guess))
	wantThrottled(t, "the right password from the attacking address", s.basicFrom(t, attacker, http.MethodGet, path, victim))
	// The lockout is the attacker's, not the victim's: from any other
	// address the victim logs in, and another user from the attacking
	// address (one NAT) too, having no failures from it.
	if r := s.basicFrom(t, elsewhere, http.MethodGet, path, victim); r.status != http.StatusOK {
		t.Errorf("the right password from another address: status %d, want 200: %s", r.status, r.body)
	}
	if r := s.basicFrom(t, attacker, http.MethodGet, path, other); r.status != http.StatusOK {
		t.Errorf("another user from the attacking address: status %d, want 200: %s", r.status, r.body)
	}
	if r := s.basicFrom(t, elsewhere, http.MethodGet, path, other); r.status != http.StatusOK {
		t.Errorf("another user from another address: status %d, want 200: %s", r.status, r.body)
	}
	if r := s.call(t, http.MethodGet, path, admin, nil); r.status != http.StatusOK {
		t.Errorf("admin from 127.0.0.1: status %d, want 200: %s", r.status, r.body)
	}
	// An access key of the victim's, from the attacking address, is not
	// locked out by password failures.
	k := s.createAccessKey(t, victim.user)
	req := s.signedRequest(t, k, http.MethodGet, path, nil, nil, time.Now())
	if r := do(t, attacker, req); r.status != http.StatusOK {
		t.Errorf("the victim's access key from the attacking address: status %d, want 200: %s", r.status, r.body)
	}
	addSecret(req.Header.Get("Authorization"))

	// Ten failures for ten names from one address refuse none of the
	// users behind it.
	nat := s.clientFrom(t, "127.0.0.4")
	for i := 1; i <= 10; i++ {
		g := &creds{fmt.Sprintf("nobody-%d", i), "guessed-password-0"}
		addSecret(g.basic())
		if r := s.basicFrom(t, nat, http.MethodGet, path, g); r.status != http.StatusUnauthorized {
			t.Fatalf("guess %d from 127.0.0.4: status %d, want 401: %s", i, r.status, r.body)
		}
	}
	if r := s.basicFrom(t, nat, http.MethodGet, path, victim); r.status != http.StatusOK {
		t.Errorf("the victim behind an address that failed for other names: status %d, want 200: %s", r.status, r.body)
	}

	// gRPC shares the throttle: the attacker's pair is locked out there
	// too, the victim from his own address is not.
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	_, err := hostClient(s.conn(t)).ListHosts(withCreds(ctx, victim), &hostv1.ListHostsRequest{})
	wantGRPCCode(t, "the victim over gRPC from 127.0.0.1", err, codes.OK)

	// The lockout is in the log, naming the account attacked and the
	// address; the guesses are not (the harness checks every log for the
	// passwords).
	if countLines(s.proc.log(), "locked out", `"user":"victim"`, "127.0.0.2") == 0 {
		t.Errorf("no lockout naming the user and the address in the server log")
	}
	checkLogLacks(t, s.proc, []string{guess.basic(), victim.basic(), other.basic()})
}

// TestTLSByDefault: without certificate flags both listeners serve only
// TLS, with a certificate for 127.0.0.1 signed by the CA the server
// generated in its data dir (keys 0600, fingerprint in the log).
func TestTLSByDefault(t *testing.T) {
	t.Parallel()
	s := startServer(t)

	t.Run("no plaintext REST", func(t *testing.T) {
		req, err := http.NewRequest(http.MethodGet, "http://"+s.httpAddr+"/api/v2/compute/hosts", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.SetBasicAuth(admin.user, admin.pass)
		resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode < 400 || bytes.Contains(b, []byte(`"successful"`)) {
				t.Errorf("plain HTTP answered %d: %s", resp.StatusCode, b)
			}
		}
	})

	t.Run("no plaintext gRPC", func(t *testing.T) {
		plain, err := grpc.NewClient(s.grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer plain.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err = healthpb.NewHealthClient(plain).Check(ctx, &healthpb.HealthCheckRequest{})
		if err == nil {
			t.Errorf("a plaintext health check succeeded")
		}
		_, err = hostClient(plain).ListHosts(withCreds(ctx, admin), &hostv1.ListHostsRequest{})
		if err == nil {
			t.Errorf("a plaintext ListHosts succeeded")
		}
		// Over TLS it works.
		if _, err := healthpb.NewHealthClient(s.conn(t)).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
			t.Errorf("health check over TLS: %v", err)
		}
	})

	t.Run("certificate", func(t *testing.T) {
		pemCA, err := os.ReadFile(s.caFile)
		if err != nil {
			t.Fatal(err)
		}
		blk, _ := pem.Decode(pemCA)
		if blk == nil {
			t.Fatalf("%s holds no PEM", s.caFile)
		}
		ca, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		if !ca.IsCA {
			t.Errorf("ca.crt is not a CA certificate")
		}
		roots := x509.NewCertPool()
		roots.AddCert(ca)
		for _, addr := range []string{s.httpAddr, s.grpcAddr} {
			conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: roots, ServerName: "127.0.0.1", NextProtos: []string{"h2", "http/1.1"}})
			if err != nil {
				t.Errorf("TLS to %s verified against ca.crt for 127.0.0.1: %v", addr, err)
				continue
			}
			leaf := conn.ConnectionState().PeerCertificates[0]
			if err := leaf.VerifyHostname("127.0.0.1"); err != nil {
				t.Errorf("%s: %v", addr, err)
			}
			conn.Close()
			// Not trusted by the system roots.
			if c, err := tls.Dial("tcp", addr, &tls.Config{ServerName: "127.0.0.1"}); err == nil {
				c.Close()
				t.Errorf("%s: the server certificate verifies without ca.crt", addr)
			}
		}

		// Keys in the data dir are 0600.
		keys, _ := filepath.Glob(filepath.Join(s.dataDir, "*.key"))
		if len(keys) == 0 {
			t.Errorf("no *.key in %s", s.dataDir)
		}
		for _, k := range keys {
			if fi, err := os.Stat(k); err != nil || fi.Mode().Perm()&0o077 != 0 {
				t.Errorf("%s: mode %v (%v), want 0600", k, fi.Mode().Perm(), err)
			}
		}

		// The fingerprint an operator compares, as openssl prints it.
		sum := sha256.Sum256(ca.Raw)
		hexes := make([]string, len(sum))
		for i, x := range sum {
			hexes[i] = fmt.Sprintf("%02X", x)
		}
		if fp := strings.Join(hexes, ":"); !strings.Contains(s.proc.log(), fp) {
			t.Errorf("the server log lacks the CA fingerprint %s", fp)
		}
	})
}
