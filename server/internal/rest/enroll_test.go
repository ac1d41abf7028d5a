package rest

import (
	"context"
	"fmt"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"agentplane/server/internal/auth"
	"agentplane/server/internal/enroll"
	"agentplane/server/internal/errs"
	"agentplane/server/internal/host"
)

// fakeEnroll checks ADMIN and validates as enroll.Service does.
type fakeEnroll struct {
	mu       sync.Mutex
	lastName string
	lastTTL  time.Duration
}

const joinTokenSecret = "c2VjcmV0LWpvaW4tdG9rZW4"

func (f *fakeEnroll) CreateJoinToken(ctx context.Context, hostName string, ttl time.Duration) (enroll.JoinToken, error) {
	if err := auth.Require(ctx, auth.RoleAdmin); err != nil {
		return enroll.JoinToken{}, err
	}
	if len(hostName) > 255 {
		return enroll.JoinToken{}, fmt.Errorf("host name too long: %w", errs.ErrInvalidArgument)
	}
	f.mu.Lock()
	f.lastName, f.lastTTL = hostName, ttl
	f.mu.Unlock()
	if ttl == 0 {
		ttl = time.Hour
	}
	return enroll.JoinToken{ID: 1, Token: joinTokenSecret, HostName: hostName, ExpireTime: start.Add(ttl)}, nil
}

func (f *fakeEnroll) last() (string, time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.lastName, f.lastTTL
}

func (f *fakeEnroll) RevokeHost(ctx context.Context, id int64) (*host.Host, error) {
	if err := auth.Require(ctx, auth.RoleAdmin); err != nil {
		return nil, err
	}
	if id != hostOK {
		return nil, fmt.Errorf("host %d: %w", id, errs.ErrNotFound)
	}
	h := testHost(id)
	h.RevokeTime = start.Add(time.Minute)
	return &h, nil
}

func newEnrollEnv(t *testing.T) (*testEnv, *fakeEnroll) {
	t.Helper()
	env := &testEnv{hosts: &fakeHosts{}, tasks: &fakeTasks{}, logs: &syncBuffer{}}
	fe := &fakeEnroll{}
	env.srv = httptest.NewServer(NewHandler(Config{
		Hosts: env.hosts, Tasks: env.tasks, Users: fakeUsers{}, Enroll: fe, Log: zerolog.New(env.logs), MaxBodyBytes: 1024,
	}))
	t.Cleanup(env.srv.Close)
	return env, fe
}

func TestJoinTokenRoute(t *testing.T) {
	env, fe := newEnrollEnv(t)
	for _, path := range []string{"/agent/joinTokens", "/api/v2/agent/joinTokens"} {
		r := env.do(t, req{method: "POST", path: path, user: "admin", contentType: "application/json", body: `{"hostName":"h1","ttlSeconds":600}`})
		if r.status != 200 {
			t.Fatalf("%s: %d %s", path, r.status, r.raw)
		}
		d := r.body["data"].(map[string]any)
		if d["token"] != joinTokenSecret || d["hostName"] != "h1" || !timeRE.MatchString(fmt.Sprint(d["expireTime"])) || len(d) != 3 {
			t.Errorf("data = %v", d)
		}
		if r.header.Get("Cache-Control") != "no-store" {
			t.Errorf("Cache-Control %q", r.header.Get("Cache-Control"))
		}
		if name, ttl := fe.last(); name != "h1" || ttl != 10*time.Minute {
			t.Errorf("service got %q %s", name, ttl)
		}
	}
	// No body at all: any host, the default lifetime.
	r := env.do(t, req{method: "POST", path: "/agent/joinTokens", user: "admin"})
	if name, ttl := fe.last(); r.status != 200 || name != "" || ttl != 0 {
		t.Errorf("empty body: %d, service got %q %s", r.status, name, ttl)
	}
	if strings.Contains(env.logs.String(), joinTokenSecret) {
		t.Error("the token reached the log")
	}

	tests := []struct {
		name   string
		req    req
		status int
		code   int
		target string
	}{
		{"as host manager", req{method: "POST", path: "/agent/joinTokens", user: "manager"}, 403, CodeNotAuthorized, ""},
		{"no credentials", req{method: "POST", path: "/agent/joinTokens"}, 401, CodeUnauthenticated, ""},
		{"ttl over 24h", req{method: "POST", path: "/agent/joinTokens", user: "admin", contentType: "application/json", body: `{"ttlSeconds":86401}`}, 400, CodeBadRequest, "ttlSeconds"},
		{"negative ttl", req{method: "POST", path: "/agent/joinTokens", user: "admin", contentType: "application/json", body: `{"ttlSeconds":-1}`}, 400, CodeBadRequest, "ttlSeconds"},
		{"unknown field", req{method: "POST", path: "/agent/joinTokens", user: "admin", contentType: "application/json", body: `{"host":"h1"}`}, 400, CodeBadRequest, "body"},
		{"not JSON", req{method: "POST", path: "/agent/joinTokens", user: "admin", contentType: "text/plain", body: `x`}, 415, CodeUnsupportedMedia, ""},
		{"GET", req{method: "GET", path: "/agent/joinTokens", user: "admin"}, 405, CodeMethodNotAllowed, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := env.do(t, tt.req)
			e, _ := r.body["error"].(map[string]any)
			if r.status != tt.status || e["code"] != float64(tt.code) {
				t.Fatalf("%d %s", r.status, r.raw)
			}
			if tt.target != "" && e["target"] != tt.target {
				t.Errorf("target %v, want %s", e["target"], tt.target)
			}
		})
	}
}

func TestRevokeHostRoute(t *testing.T) {
	env, _ := newEnrollEnv(t)
	r := env.do(t, req{method: "POST", path: "/api/v2/compute/hosts/2/revoke", user: "admin"})
	if r.status != 200 {
		t.Fatalf("%d %s", r.status, r.raw)
	}
	d := r.body["data"].(map[string]any)
	if d["id"] != float64(hostOK) || !timeRE.MatchString(fmt.Sprint(d["revokeTime"])) {
		t.Errorf("host %v", d)
	}
	for _, tt := range []struct {
		req    req
		status int
		code   int
	}{
		{req{method: "POST", path: "/compute/hosts/2/revoke", user: "manager"}, 403, CodeNotAuthorized},
		{req{method: "POST", path: "/compute/hosts/2/revoke", user: "viewer"}, 403, CodeNotAuthorized},
		{req{method: "POST", path: "/compute/hosts/77/revoke", user: "admin"}, 404, CodeNotFound},
		{req{method: "POST", path: "/compute/hosts/abc/revoke", user: "admin"}, 400, CodeBadRequest},
		{req{method: "GET", path: "/compute/hosts/2/revoke", user: "admin"}, 405, CodeMethodNotAllowed},
	} {
		r := env.do(t, tt.req)
		e, _ := r.body["error"].(map[string]any)
		if r.status != tt.status || e["code"] != float64(tt.code) {
			t.Errorf("%s %s as %s: %d %s", tt.req.method, tt.req.path, tt.req.user, r.status, r.raw)
		}
	}
	// Without the service, the routes do not exist.
	plain := newTestEnv(t)
	if r := plain.do(t, req{method: "POST", path: "/agent/joinTokens", user: "admin"}); r.status != 404 {
		t.Errorf("without Enroll: %d", r.status)
	}
}
