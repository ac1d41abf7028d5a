package rpc

import (
	"context"

	hostv1 "agentplane/gen/agentplane/host/v1"
	"agentplane/server/host"
	"agentplane/server/task"
)

// Hosts is the host API the adapter serves.
type Hosts interface {
	StopAgent(ctx context.Context, hostID int64) (*task.Task, error)
	GetHost(ctx context.Context, id int64) (*host.Host, error)
	ListHosts(ctx context.Context, q host.ListQuery) (host.Page, error)
}

type hostServer struct {
	hostv1.UnimplementedHostServiceServer
	hosts Hosts
}

var _ hostv1.HostServiceServer = (*hostServer)(nil)

func (s *hostServer) StopAgent(ctx context.Context, req *hostv1.StopAgentRequest) (*hostv1.StopAgentResponse, error) {
	t, err := s.hosts.StopAgent(ctx, req.GetHostId())
	if err != nil {
		return nil, toStatus(ctx, err)
	}
	return &hostv1.StopAgentResponse{Task: toTask(t)}, nil
}

func (s *hostServer) GetHost(ctx context.Context, req *hostv1.GetHostRequest) (*hostv1.GetHostResponse, error) {
	h, err := s.hosts.GetHost(ctx, req.GetId())
	if err != nil {
		return nil, toStatus(ctx, err)
	}
	return &hostv1.GetHostResponse{Host: toHost(h)}, nil
}

func (s *hostServer) ListHosts(ctx context.Context, req *hostv1.ListHostsRequest) (*hostv1.ListHostsResponse, error) {
	p, err := s.hosts.ListHosts(ctx, host.ListQuery{Page: int(req.GetPage()), Size: int(req.GetSize())})
	if err != nil {
		return nil, toStatus(ctx, err)
	}
	out := &hostv1.ListHostsResponse{TotalElements: p.Total}
	for i := range p.Hosts {
		out.Hosts = append(out.Hosts, toHost(&p.Hosts[i]))
	}
	return out, nil
}
