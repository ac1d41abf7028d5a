package integration_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	hostv1 "agentplane/gen/agentplane/host/v1"
)

// TestStopFailures drives the failure paths against one server; each
// subtest that needs a host brings its own agentd and install home.
func TestStopFailures(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	cc := s.conn(t)
	hosts := hostv1.NewHostServiceClient(cc)
	grpcStop := func(t *testing.T, c *creds, hostID int64) error {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if c != nil {
			ctx = withCreds(ctx, c)
		}
		_, err := hosts.StopAgent(ctx, &hostv1.StopAgentRequest{HostId: hostID})
		return err
	}
	wantCode := func(t *testing.T, err error, want codes.Code) {
		t.Helper()
		if got := status.Code(err); got != want {
			t.Errorf("gRPC code %s (%v), want %s", got, err, want)
		}
	}

	// A host with an agentd, for the calls that must fail before any task.
	home := newHome(t)
	a := s.startAgentd(t, home, time.Second)

	t.Run("unknown host", func(t *testing.T) {
		s.stopREST(t, 987654, admin).wantError(t, http.StatusNotFound)
		r := s.call(t, http.MethodGet, "/api/v2/compute/hosts/987654", admin, nil)
		r.wantError(t, http.StatusNotFound)
		wantCode(t, grpcStop(t, admin, 987654), codes.NotFound)
	})

	t.Run("bad host id", func(t *testing.T) {
		for _, id := range []string{"abc", "0", "-5", "1.5", "99999999999999999999"} {
			for _, prefix := range []string{"", "/api/v2"} {
				r := s.call(t, http.MethodPost, prefix+"/compute/hosts/"+id+"/agent/stop", admin, nil)
				if r.status != http.StatusBadRequest {
					t.Errorf("POST %s/compute/hosts/%s/agent/stop: status %d, want 400: %s", prefix, id, r.status, r.body)
					continue
				}
				r.wantError(t, http.StatusBadRequest)
			}
		}
		wantCode(t, grpcStop(t, admin, 0), codes.InvalidArgument)
		wantCode(t, grpcStop(t, admin, -5), codes.InvalidArgument)
	})

	t.Run("no credentials", func(t *testing.T) {
		r := s.stopREST(t, a.hostID, nil)
		r.wantError(t, http.StatusUnauthorized)
		if !strings.HasPrefix(r.header.Get("WWW-Authenticate"), "Basic") {
			t.Errorf("401 without WWW-Authenticate: Basic (got %q)", r.header.Get("WWW-Authenticate"))
		}
		if msg := s.stopREST(t, a.hostID, &creds{"admin", "wrong"}).wantError(t, http.StatusUnauthorized); msg != "Invalid username or password." {
			t.Errorf("wrong password: message %q, want the sentence", msg)
		}
		wantCode(t, grpcStop(t, nil, a.hostID), codes.Unauthenticated)
		err := grpcStop(t, &creds{"admin", "wrong"}, a.hostID)
		wantCode(t, err, codes.Unauthenticated)
		if msg := status.Convert(err).Message(); msg != "Invalid username or password." {
			t.Errorf("wrong password over gRPC: message %q, want the sentence", msg)
		}
		if h := s.getHost(t, a.hostID); h.OperationTaskID != 0 {
			t.Errorf("a refused stop left operationTaskId %d", h.OperationTaskID)
		}
	})

	t.Run("viewer may not stop", func(t *testing.T) {
		viewer := &creds{"viewer", "viewer-password-1"}
		r := s.call(t, http.MethodPost, "/api/v2/iam/users", admin,
			map[string]any{"username": viewer.user, "password": viewer.pass, "roles": []string{"HOST_VIEWER"}})
		if r.status != http.StatusOK {
			t.Fatalf("creating the viewer: status %d: %s", r.status, r.body)
		}
		if r := s.call(t, http.MethodGet, fmt.Sprintf("/api/v2/compute/hosts/%d", a.hostID), viewer, nil); r.status != http.StatusOK {
			t.Errorf("viewer GET host: status %d, want 200: %s", r.status, r.body)
		}
		s.stopREST(t, a.hostID, viewer).wantError(t, http.StatusForbidden)
		wantCode(t, grpcStop(t, viewer, a.hostID), codes.PermissionDenied)
		// Creating users is for ADMIN only.
		s.call(t, http.MethodPost, "/api/v2/iam/users", viewer,
			map[string]any{"username": "x", "password": "x-password-1", "roles": []string{"ADMIN"}}).wantError(t, http.StatusForbidden)
		if h := s.getHost(t, a.hostID); h.OperationTaskID != 0 {
			t.Errorf("a refused stop left operationTaskId %d", h.OperationTaskID)
		}
	})

	t.Run("agentd offline", func(t *testing.T) {
		home := newHome(t)
		off := s.startAgentd(t, home, time.Second)
		off.proc.stop(t, 10*time.Second)
		s.waitHost(t, off.name, 30*time.Second, "OFFLINE", func(h hostJSON) bool { return h.Status == "OFFLINE" })

		r := s.stopREST(t, off.hostID, admin)
		if r.status != http.StatusOK {
			t.Fatalf("stop of an offline host: status %d, want 200 (a task that fails): %s", r.status, r.body)
		}
		var created taskJSON
		r.decode(t, &created)
		tk := s.waitFinal(t, created.ID)
		if tk.Status != "FAILED" {
			t.Errorf("task ended %s, want FAILED", tk.Status)
		}
		prep := tk.subtask("Prepare stop OCP agent")
		if prep.Status != "FAILED" || !strings.Contains(prep.Message, "agentd not connected") {
			t.Errorf("Prepare subtask %s %q, want FAILED with \"agentd not connected\"", prep.Status, prep.Message)
		}
		// Its log ends with why it failed.
		log := strings.TrimRight(s.subtaskLog(t, created.ID, prep.ID), "\n")
		if last := log[strings.LastIndex(log, "\n")+1:]; !strings.Contains(last, " failed: ") || !strings.Contains(last, "agentd not connected") {
			t.Errorf("Prepare's log ends with %q, want the reason it failed; log:\n%s", last, log)
		}
		h := s.getHost(t, off.hostID)
		t.Logf("host after the failed stop: agentStatus %s operationTaskId %d", h.AgentStatus, h.OperationTaskID)
	})

	t.Run("second stop conflicts", func(t *testing.T) {
		home := newHome(t)
		startFake(t, home, "FAKE_OCP_MODE=slow", "FAKE_OCP_SLOW=3s")
		slow := s.startAgentd(t, home, 20*time.Second)

		r := s.stopREST(t, slow.hostID, admin)
		if r.status != http.StatusOK {
			t.Fatalf("first stop: status %d: %s", r.status, r.body)
		}
		var first taskJSON
		r.decode(t, &first)

		msg := s.stopREST(t, slow.hostID, admin).wantError(t, http.StatusConflict)
		if !strings.Contains(msg, fmt.Sprintf("task %d", first.ID)) {
			t.Errorf("409 message %q does not name task %d", msg, first.ID)
		}
		busy := fmt.Sprintf("Host %d already has an agent operation in progress (task %d); wait for it to end or cancel it.", slow.hostID, first.ID)
		if msg != busy {
			t.Errorf("409 message %q, want the sentence %q", msg, busy)
		}
		err := grpcStop(t, admin, slow.hostID)
		wantCode(t, err, codes.Aborted)
		if err != nil && !strings.Contains(status.Convert(err).Message(), fmt.Sprintf("task %d", first.ID)) {
			t.Errorf("gRPC conflict message %q does not name task %d", status.Convert(err).Message(), first.ID)
		}
		if msg := status.Convert(err).Message(); msg != busy {
			t.Errorf("gRPC conflict message %q, want the sentence %q", msg, busy)
		}
		if tk := s.getTask(t, first.ID); tk.final() {
			t.Fatalf("first task already %s: the conflict was not tested against a running stop", tk.Status)
		}

		tk := s.waitFinal(t, first.ID)
		checkStopped(t, s, tk, home, nil, slow.hostID)
		// The lock is released: stopping again is allowed and idempotent.
		r = s.stopREST(t, slow.hostID, admin)
		if r.status != http.StatusOK {
			t.Fatalf("stop after the first finished: status %d: %s", r.status, r.body)
		}
		var again taskJSON
		r.decode(t, &again)
		if tk := s.waitFinal(t, again.ID); tk.Status != "SUCCESSFUL" {
			t.Errorf("idempotent stop ended %s: %+v", tk.Status, tk.Subtasks)
		}
	})

}
