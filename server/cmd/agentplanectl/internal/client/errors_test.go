package client

import (
	"fmt"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"agentplane/server/cmd/agentplanectl/internal/config"
)

func TestDescribe(t *testing.T) {
	c := &Client{Addr: "db:7070", Timeout: 30 * time.Second, cfg: config.Resolved{Method: config.Basic, User: "admin", Source: "AGENTPLANE_USER"}}
	for _, tc := range []struct {
		err  error
		msg  string
		code int
	}{
		{status.Error(codes.Unavailable, `connection error: desc = "transport: Error while dialing: dial tcp 127.0.0.1:1: connect: connection refused"`),
			"cannot reach the server at db:7070: connect: connection refused", ExitUnreachable},
		{status.Error(codes.Unavailable, `connection error: desc = "transport: authentication handshake failed: tls: failed to verify certificate: x509: certificate signed by unknown authority"`),
			"cannot reach the server at db:7070: authentication handshake failed: tls: failed to verify certificate: x509: certificate signed by unknown authority", ExitUnreachable},
		{status.Error(codes.Unavailable, "the data store is full"), "the server at db:7070 is unavailable: the data store is full (UNAVAILABLE)", ExitUnreachable},
		{status.Error(codes.DeadlineExceeded, "context deadline exceeded"), "no answer from the server at db:7070 within 30s (--timeout)", ExitUnreachable},
		{status.Error(codes.Unauthenticated, "invalid username or password"),
			"the server refused the credentials (user admin from AGENTPLANE_USER): invalid username or password (UNAUTHENTICATED)", ExitUnreachable},
		{status.Error(codes.NotFound, "task 9: not found"), "task 9: not found (NOT_FOUND)", ExitRefused},
		{status.Error(codes.FailedPrecondition, "task is RUNNING"), "task is RUNNING (FAILED_PRECONDITION)", ExitRefused},
		{fmt.Errorf("wrapped: %w", config.Errorf("no server")), "no server", ExitUsage},
		{Exitf(ExitFailed, "task 7 FAILED"), "task 7 FAILED", ExitFailed},
	} {
		msg, code := c.Describe(tc.err)
		if msg != tc.msg || code != tc.code {
			t.Errorf("%v:\n got %q %d\nwant %q %d", tc.err, msg, code, tc.msg, tc.code)
		}
	}
	st, err := status.New(codes.FailedPrecondition, "task 3 is RUNNING").WithDetails(&errdetails.ErrorInfo{Reason: "STATE", Metadata: map[string]string{"code": "20003"}})
	if err != nil {
		t.Fatal(err)
	}
	if msg, _ := c.Describe(st.Err()); msg != "task 3 is RUNNING (FAILED_PRECONDITION, STATE, code 20003)" {
		t.Errorf("with details: %q", msg)
	}
	if n := CodeName(codes.ResourceExhausted); n != "RESOURCE_EXHAUSTED" {
		t.Errorf("CodeName: %s", n)
	}
}
