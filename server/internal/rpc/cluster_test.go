package rpc

import (
	"context"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"google.golang.org/grpc/codes"

	clusterv1 "agentplane/gen/agentplane/cluster/v1"
	"agentplane/server/internal/replica"
)

// replicaStore is a registry holding fixed rows.
type replicaStore struct{ rows []replica.Info }

func (s replicaStore) RegisterReplica(context.Context, replica.Registration, time.Duration) ([]string, error) {
	return nil, nil
}
func (replicaStore) HeartbeatReplica(context.Context, string, string) error  { return nil }
func (replicaStore) DeregisterReplica(context.Context, string, string) error { return nil }
func (s replicaStore) ListReplicas(context.Context, time.Duration) ([]replica.Info, error) {
	return s.rows, nil
}

// clusterClient serves cfg (with apiUsers) over bufconn.
func clusterClient(t *testing.T, cfg Config) clusterv1.ClusterServiceClient {
	t.Helper()
	cfg.Users, cfg.Log = apiUsers{}, zerolog.Nop()
	return clusterv1.NewClusterServiceClient(serveBufconn(t, cfg))
}

func TestListReplicas(t *testing.T) {
	started := time.Date(2026, 12, 3, 6, 0, 0, 0, time.UTC)
	rows := []replica.Info{
		{ID: "a:7070", Addr: "10.0.0.1:7070", Version: "v1", Started: started, Heartbeat: started.Add(time.Minute), Live: true, Age: 1500 * time.Millisecond},
		{ID: "b:7070", Addr: "10.0.0.2:7070", Version: "v0", Started: started, Heartbeat: started, Age: time.Hour},
	}
	self, err := replica.Start(t.Context(), replica.Config{Store: replicaStore{rows: rows}, ID: "a:7070", Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	defer self.Close()
	c := clusterClient(t, Config{Replicas: self})

	_, err = c.ListReplicas(context.Background(), &clusterv1.ListReplicasRequest{})
	checkCode(t, err, codes.Unauthenticated, "")
	for _, user := range []string{"viewer", "tasker", "admin"} {
		resp, err := c.ListReplicas(as(t, user), &clusterv1.ListReplicasRequest{})
		checkCode(t, err, codes.OK, "")
		got := resp.GetReplicas()
		if len(got) != 2 {
			t.Fatalf("%s: %v", user, got)
		}
		a, b := got[0], got[1]
		if a.GetId() != "a:7070" || a.GetAddress() != "10.0.0.1:7070" || a.GetVersion() != "v1" || !a.GetLive() ||
			!a.GetStartTime().AsTime().Equal(started) || !a.GetHeartbeatTime().AsTime().Equal(started.Add(time.Minute)) ||
			a.GetHeartbeatAge().AsDuration() != 1500*time.Millisecond {
			t.Errorf("%s: first replica %v", user, a)
		}
		if b.GetId() != "b:7070" || b.GetLive() || b.GetHeartbeatAge().AsDuration() != time.Hour {
			t.Errorf("%s: second replica %v", user, b)
		}
	}

	// Without the registry: UNIMPLEMENTED.
	_, err = clusterClient(t, Config{}).ListReplicas(as(t, "admin"), &clusterv1.ListReplicasRequest{})
	checkCode(t, err, codes.Unimplemented, "")
}
