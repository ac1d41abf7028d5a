package rpc

import (
	"context"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"

	clusterv1 "agentplane/gen/agentplane/cluster/v1"
	"agentplane/server/internal/api"
)

// registerCluster registers ClusterService when cfg.Replicas is set.
func registerCluster(s *grpc.Server, cfg Config) {
	if cfg.Replicas != nil {
		clusterv1.RegisterClusterServiceServer(s, &clusterServer{replicas: cfg.Replicas})
	}
}

// clusterServer serves ClusterService.
type clusterServer struct {
	clusterv1.UnimplementedClusterServiceServer
	replicas api.Replicas
}

var _ clusterv1.ClusterServiceServer = (*clusterServer)(nil)

func (s *clusterServer) ListReplicas(ctx context.Context, _ *clusterv1.ListReplicasRequest) (*clusterv1.ListReplicasResponse, error) {
	rs, err := s.replicas.List(ctx)
	if err != nil {
		return nil, toStatus(ctx, err)
	}
	out := &clusterv1.ListReplicasResponse{Replicas: make([]*clusterv1.Replica, 0, len(rs))}
	for _, r := range rs {
		out.Replicas = append(out.Replicas, &clusterv1.Replica{
			Id: r.ID, Address: r.Addr, Version: r.Version, StartTime: ts(r.Started), HeartbeatTime: ts(r.Heartbeat),
			Live: r.Live, HeartbeatAge: durationpb.New(r.Age),
		})
	}
	return out, nil
}
