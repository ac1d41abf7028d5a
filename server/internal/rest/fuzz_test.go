package rest

import (
	"bufio"
	"bytes"
	"context"
	"crypto/hmac"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"agentplane/server/internal/audit"
	"agentplane/server/internal/auth"
	"agentplane/server/internal/errs"
)

// fuzzKeys is an AccessKeys that knows one key, of user manager, and
// verifies with auth's string to sign and no Date check (so that a signed
// seed stays valid).
type fuzzKeys struct{}

const (
	fuzzKeyID     = "APFUZZ"
	fuzzKeySecret = "fuzz-secret"
)

func (fuzzKeys) Verify(_ context.Context, r *auth.SignedRequest) (auth.Principal, error) {
	sts, err := auth.StringToSign(r)
	if err != nil {
		return auth.Principal{}, err
	}
	if r.AccessKeyID != fuzzKeyID || !hmac.Equal([]byte(auth.Sign(fuzzKeySecret, sts)), []byte(r.Signature)) {
		return auth.Principal{}, fmt.Errorf("invalid access key or signature: %w", errs.ErrUnauthenticated)
	}
	return auth.Principal{Username: "manager", Roles: testUsers["manager"].roles, AccessKeyID: fuzzKeyID}, nil
}

func (fuzzKeys) CreateAccessKey(ctx context.Context, username string) (auth.AccessKey, string, error) {
	p, _ := auth.FromContext(ctx)
	if username != "" && username != p.Username {
		return auth.AccessKey{}, "", fmt.Errorf("another user's keys: %w", errs.ErrPermissionDenied)
	}
	return auth.AccessKey{ID: "APNEW", Username: p.Username, CreateTime: start}, "new-secret", nil
}

func (fuzzKeys) ListAccessKeys(context.Context, string) ([]auth.AccessKey, error) {
	return []auth.AccessKey{{ID: fuzzKeyID, Username: "manager", CreateTime: start}}, nil
}

func (fuzzKeys) DeleteAccessKey(_ context.Context, id string) error {
	if id != fuzzKeyID {
		return fmt.Errorf("access key %.64q: %w", id, errs.ErrNotFound)
	}
	return nil
}

// fuzzAudit records nothing and lists an empty record to ADMIN.
type fuzzAudit struct{}

func (fuzzAudit) Record(context.Context, audit.Event) {}

func (fuzzAudit) ListEvents(ctx context.Context, q audit.Query) (audit.Page, error) {
	if err := auth.Require(ctx, auth.RoleAdmin); err != nil {
		return audit.Page{}, err
	}
	return audit.Page{}, nil
}

// injectedFailures are the texts of the internal errors and panics the
// fakes inject (hostBroken, hostPanics, hostTimeout, hostUnreachable, user
// storefail): a 5xx is right only when the request's log holds one.
var injectedFailures = []string{"database at /secret/dsn is locked", "boom: secret panic detail", "waiting for store", "agentd not connected", "secret store error"}

// fuzzRequest renders a request as a client would send it; ok is false
// when it is not one net/http would parse.
func fuzzRequest(method, target, contentType, authorization, idemKey string, body []byte) (*http.Request, bool) {
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: agentplane.test\r\n", method, target)
	for _, h := range [][2]string{{"Content-Type", contentType}, {"Authorization", authorization}, {"Idempotency-Key", idemKey}} {
		if h[1] != "" {
			fmt.Fprintf(&b, "%s: %s\r\n", h[0], h[1])
		}
	}
	if len(body) > 0 {
		fmt.Fprintf(&b, "Content-Length: %d\r\n", len(body))
	}
	b.WriteString("\r\n")
	b.Write(body)
	r, err := http.ReadRequest(bufio.NewReader(&b))
	if err != nil {
		return nil, false
	}
	r.RemoteAddr = "192.0.2.1:4242"
	return r, true
}

// signedAuth signs a request for the seeds with the key fuzzKeys knows.
func signedAuth(method, target, contentType string, body []byte) string {
	path, query, _ := strings.Cut(target, "?")
	sts, err := auth.StringToSign(&auth.SignedRequest{Method: method, Body: body, ContentType: contentType, Host: "agentplane.test", Path: path, RawQuery: query})
	if err != nil {
		panic(err)
	}
	return auth.SignatureScheme + " " + fuzzKeyID + ":" + auth.Sign(fuzzKeySecret, sts)
}

func basic(user string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+testUsers[user].password))
}

// FuzzHandler drives the whole REST handler (authentication, routing, path,
// query, header and body parsing, the envelopes) with requests net/http
// would accept. Whatever the request: no panic reaches net/http, the status
// is a valid HTTP status, the body is an OCP envelope whose successful and
// status fields agree with the answer, and a 5xx comes only from a failure
// the fakes inject.
func FuzzHandler(f *testing.F) {
	type seed struct {
		method, path, query, contentType, authorization, idemKey string
		body                                                     []byte
	}
	const ctJSON = "application/json"
	seeds := []seed{
		{"GET", "/compute/hosts", "page=1&size=20", "", basic("viewer"), "", nil},
		{"GET", "/api/v2/compute/hosts/2", "", "", basic("viewer"), "", nil},
		{"GET", "/api/v2/compute/hosts/2/agent", "", "", basic("admin"), "", nil},
		{"HEAD", "/compute/hosts/2", "", "", basic("viewer"), "", nil},
		{"POST", "/api/v2/compute/hosts/2/agent/stop", "", "", basic("manager"), "key-1", nil},
		{"POST", "/compute/hosts/500/agent/restart", "", ctJSON, basic("admin"), "", []byte("{}")},
		{"POST", "/compute/hosts/666/agent/start", "", "", basic("admin"), "", nil},
		{"POST", "/compute/hosts/batchStopAgents", "", ctJSON, basic("admin"), "k", []byte(`{"hostIds":[2,3]}`)},
		{"POST", "/compute/hosts/batchRestartAgents", "", "application/json; charset=utf-8", basic("manager"), "", []byte(`{"hostIds":[2,2],"x":1}`)},
		{"GET", "/tasks/instances", "name=Stop&status=RUNNING&type=MANUAL&hostId=2&sort=id,desc&page=2&size=5", "", basic("admin"), "", nil},
		{"GET", "/api/v2/tasks/instances/30443", "", "", basic("tasker"), "", nil},
		{"POST", "/tasks/instances/30443/retry", "", "", basic("tasker"), "", nil},
		{"POST", "/tasks/instances/20004/rollback", "", "", basic("tasker"), "", nil},
		{"POST", "/tasks/instances/30443/subtasks/32074/skip", "", "", basic("admin"), "", nil},
		{"GET", "/tasks/instances/30443/subtasks/32073/log", "", "", basic("viewer"), "", nil},
		{"POST", "/iam/users", "", ctJSON, basic("admin"), "", []byte(`{"username":"u","password":"password1","roles":["HOST_VIEWER"]}`)},
		{"POST", "/iam/accessKeys", "", ctJSON, basic("manager"), "", []byte(`{}`)},
		{"DELETE", "/api/v2/iam/accessKeys/APFUZZ", "", "", basic("admin"), "", nil},
		{"POST", "/agent/joinTokens", "", ctJSON, basic("admin"), "", []byte(`{"hostName":"h1","ttlSeconds":600}`)},
		{"POST", "/compute/hosts/2/revoke", "", "", basic("admin"), "", nil},
		{"GET", "/audit/events", "startTime=2026-11-27T04:10:00.000+08:00&outcome=OK", "", basic("admin"), "", nil},
		{"GET", "/compute/hosts", "", "", basic("storefail"), "", nil},
		{"GET", "/compute/hosts", "", "", "Basic !!!", "", nil},
		{"PUT", "/compute/hosts/x/agent/stop", "", "text/plain", "", "", []byte("x")},
		{"GET", "/api/v2/../compute//hosts/%2e%2e", "", "", basic("admin"), "", nil},
		{"POST", "/compute/hosts/batchStopAgents", "", ctJSON, signedAuth("POST", "/compute/hosts/batchStopAgents", ctJSON, []byte(`{"hostIds":[2]}`)), "", []byte(`{"hostIds":[2]}`)},
		{"GET", "/compute/hosts", "size=2&page=1", "", signedAuth("GET", "/compute/hosts?size=2&page=1", "", nil), "", nil},
		{"GET", "/compute/hosts", "a=%zz", "", auth.SignatureScheme + " AK:c2ln", "", nil},
	}
	for _, s := range seeds {
		f.Add(s.method, s.path, s.query, s.contentType, s.authorization, s.idemKey, s.body)
	}
	logs := &syncBuffer{}
	h := NewHandler(Config{
		Hosts: &fakeHosts{}, Tasks: &fakeTasks{}, Users: fakeUsers{}, Enroll: &fakeEnroll{}, AccessKeys: fuzzKeys{}, Audit: fuzzAudit{},
		Log: zerolog.New(logs), MaxBodyBytes: 4096,
		// Failed logins neither wait nor lock out: each input stands alone.
		Throttle: auth.NewThrottle(auth.ThrottleConfig{SlowAfter: 1 << 30, LockAfter: 1 << 30, Sleep: func(context.Context, time.Duration) error { return nil }}),
	})
	f.Fuzz(func(t *testing.T, method, path, query, contentType, authorization, idemKey string, body []byte) {
		target := path
		if query != "" {
			target += "?" + query
		}
		r, ok := fuzzRequest(method, target, contentType, authorization, idemKey, body)
		if !ok {
			return
		}
		logs.mu.Lock()
		logs.buf.Reset()
		logs.mu.Unlock()
		w := httptest.NewRecorder()
		done := make(chan any, 1)
		go func() {
			defer func() { done <- recover() }()
			h.ServeHTTP(w, r)
		}()
		select {
		case v := <-done:
			if v != nil {
				t.Fatalf("%s %q: panic reached net/http: %v", method, target, v)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%s %q: no answer within 5s", method, target)
		}
		if w.Code < 100 || w.Code > 599 || http.StatusText(w.Code) == "" {
			t.Fatalf("%s %q: status %d", method, target, w.Code)
		}
		var env struct {
			Successful *bool `json:"successful"`
			Status     int   `json:"status"`
		}
		if err := json.Unmarshal(w.Body.Bytes(), &env); err != nil || env.Successful == nil {
			t.Fatalf("%s %q: %d, body is not an OCP envelope (%v): %q", method, target, w.Code, err, w.Body.String())
		}
		if *env.Successful != (w.Code < 300) || env.Status != w.Code {
			t.Fatalf("%s %q: %d with an envelope of status %d, successful %v", method, target, w.Code, env.Status, *env.Successful)
		}
		if w.Code >= 500 {
			log := logs.String()
			injected := false
			for _, s := range injectedFailures {
				injected = injected || strings.Contains(log, s)
			}
			if !injected {
				t.Fatalf("%s %q: %d for no injected failure:\n%s", method, target, w.Code, log)
			}
		}
	})
}
