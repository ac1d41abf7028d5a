package integration_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	hostv1 "agentplane/gen/agentplane/host/v1"
)

// rawBytes is a gRPC codec that sends bytes as they are (under the proto
// content subtype) and discards the answer.
type rawBytes struct{}

func (rawBytes) Marshal(v any) ([]byte, error)      { return v.([]byte), nil }
func (rawBytes) Unmarshal(data []byte, v any) error { return nil }
func (rawBytes) Name() string                       { return "proto" }

// TestMalformedRequests: against the real server, a second spelling of a
// host id or a key twice in a body is a 400, and a gRPC request whose bytes
// do not decode is INVALID_ARGUMENT and in the audit record.
func TestMalformedRequests(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	for _, tt := range []struct {
		name, path string
		body       any
		want       string
	}{
		{"host id +1", "/api/v2/compute/hosts/+1/agent/stop", nil, "hostId must be a positive 64-bit integer in plain decimal"},
		{"host id 01", "/compute/hosts/01/agent/stop", nil, "hostId must be a positive 64-bit integer in plain decimal"},
		{"hostIds twice", "/api/v2/compute/hosts/batchStopAgents", json.RawMessage(`{"hostIds":[1],"hostIds":[2]}`), `key "hostIds" occurs twice`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := s.call(t, http.MethodPost, tt.path, admin, tt.body)
			if msg := r.wantError(t, http.StatusBadRequest); !strings.Contains(msg, tt.want) {
				t.Errorf("message %q, want it to say %q", msg, tt.want)
			}
		})
	}
	t.Run("undecodable gRPC request", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(withCreds(context.Background(), admin), 10*time.Second)
		defer cancel()
		var out []byte
		err := s.conn(t).Invoke(ctx, hostv1.HostService_StopAgent_FullMethodName, []byte{0x08, 0x80}, &out, grpc.ForceCodec(rawBytes{}))
		if st := status.Convert(err); st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), "malformed request") {
			t.Fatalf("undecodable StopAgent: %v, want INVALID_ARGUMENT", err)
		}
		wantEvent(t, s.auditEvents(t, "size=100").Contents, "the undecodable StopAgent", func(e auditEventJSON) bool {
			return e.Operation == hostv1.HostService_StopAgent_FullMethodName && e.Username == admin.user &&
				e.Outcome == "INVALID_ARGUMENT" && strings.Contains(e.Message, "malformed request")
		})
	})
}
