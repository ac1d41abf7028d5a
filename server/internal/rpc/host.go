package rpc

import (
	"context"
	"fmt"
	"path"

	"google.golang.org/grpc/metadata"

	hostv1 "agentplane/gen/agentplane/host/v1"
	"agentplane/server/internal/api"
	"agentplane/server/internal/errs"
	"agentplane/server/internal/host"
	"agentplane/server/internal/task"
)

type hostServer struct {
	hostv1.UnimplementedHostServiceServer
	hosts  api.Hosts
	enroll Enrollment // join tokens and revocation (enroll.go); nil: unimplemented
}

var _ hostv1.HostServiceServer = (*hostServer)(nil)

// idempotencyKeyMD is the metadata key that makes a task-creating call
// repeatable: the same caller sending the same key gets the task the first
// call created (REST's Idempotency-Key header).
const idempotencyKeyMD = "idempotency-key"

// withIdempotencyKey returns ctx carrying the call's idempotency-key
// metadata, if it sent one; ErrInvalidArgument when the key is malformed or
// sent more than once.
func withIdempotencyKey(ctx context.Context) (context.Context, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	keys := md.Get(idempotencyKeyMD)
	switch len(keys) {
	case 0:
		return ctx, nil
	case 1:
		return task.WithIdempotencyKey(ctx, keys[0])
	}
	return ctx, fmt.Errorf("%s metadata sent %d times, at most once allowed: %w", idempotencyKeyMD, len(keys), errs.ErrInvalidArgument)
}

// create runs a task-creating call with the call's idempotency key.
func create[A any](ctx context.Context, op func(context.Context, A) (*task.Task, error), arg A) (*task.Task, error) {
	ctx, err := withIdempotencyKey(ctx)
	if err != nil {
		return nil, toStatus(ctx, err)
	}
	t, err := op(ctx, arg)
	if err != nil {
		return nil, toStatus(ctx, err)
	}
	return t, nil
}

func (s *hostServer) StopAgent(ctx context.Context, req *hostv1.StopAgentRequest) (*hostv1.StopAgentResponse, error) {
	t, err := create(ctx, s.hosts.StopAgent, req.GetHostId())
	if err != nil {
		return nil, err
	}
	return &hostv1.StopAgentResponse{Task: toTask(t)}, nil
}

func (s *hostServer) StartAgent(ctx context.Context, req *hostv1.StartAgentRequest) (*hostv1.StartAgentResponse, error) {
	t, err := create(ctx, s.hosts.StartAgent, req.GetHostId())
	if err != nil {
		return nil, err
	}
	return &hostv1.StartAgentResponse{Task: toTask(t)}, nil
}

func (s *hostServer) RestartAgent(ctx context.Context, req *hostv1.RestartAgentRequest) (*hostv1.RestartAgentResponse, error) {
	t, err := create(ctx, s.hosts.RestartAgent, req.GetHostId())
	if err != nil {
		return nil, err
	}
	return &hostv1.RestartAgentResponse{Task: toTask(t)}, nil
}

func (s *hostServer) BatchStopAgents(ctx context.Context, req *hostv1.BatchStopAgentsRequest) (*hostv1.BatchStopAgentsResponse, error) {
	t, err := create(ctx, s.hosts.BatchStopAgents, req.GetHostIds())
	if err != nil {
		return nil, err
	}
	return &hostv1.BatchStopAgentsResponse{Task: toTask(t)}, nil
}

func (s *hostServer) BatchStartAgents(ctx context.Context, req *hostv1.BatchStartAgentsRequest) (*hostv1.BatchStartAgentsResponse, error) {
	t, err := create(ctx, s.hosts.BatchStartAgents, req.GetHostIds())
	if err != nil {
		return nil, err
	}
	return &hostv1.BatchStartAgentsResponse{Task: toTask(t)}, nil
}

func (s *hostServer) BatchRestartAgents(ctx context.Context, req *hostv1.BatchRestartAgentsRequest) (*hostv1.BatchRestartAgentsResponse, error) {
	t, err := create(ctx, s.hosts.BatchRestartAgents, req.GetHostIds())
	if err != nil {
		return nil, err
	}
	return &hostv1.BatchRestartAgentsResponse{Task: toTask(t)}, nil
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

func (s *hostServer) GetHostAgent(ctx context.Context, req *hostv1.GetHostAgentRequest) (*hostv1.GetHostAgentResponse, error) {
	a, err := s.hosts.GetHostAgent(ctx, req.GetHostId())
	if err != nil {
		return nil, toStatus(ctx, err)
	}
	return &hostv1.GetHostAgentResponse{Agent: toHostAgent(a)}, nil
}

// toHostAgent converts a host's agent. An agent whose status is not known
// yet is STARTED when a base process runs, else STOPPED.
func toHostAgent(a *host.Agent) *hostv1.HostAgent {
	out := &hostv1.HostAgent{
		Id: a.HostID, Version: a.Version, InstallHome: a.InstallHome, LastAvailableTime: ts(a.LastSeen),
		HostId: a.HostID, HostInnerIpAddress: a.InnerIP, Status: agentStatus[a.Status],
		CreateTime: ts(a.CreateTime), UpdateTime: ts(a.UpdateTime),
	}
	if a.InstallHome != "" {
		out.LogHome = path.Join(a.InstallHome, "log")
	}
	running := false
	for _, p := range a.Processes {
		running = running || p.Status == host.AgentStarted
		out.Processes = append(out.Processes, &hostv1.AgentProcess{
			HostId: a.HostID, Alias: p.Name, Pid: p.PID, User: p.User, StartCommand: p.Cmdline,
			StartTime: ts(p.CreateTime), LastActiveTime: ts(p.LastActiveTime), Status: processStatus(p.Status),
		})
	}
	if a.Status == host.AgentUnknown {
		out.Status = hostv1.AgentStatus_AGENT_STATUS_STOPPED
		if running {
			out.Status = hostv1.AgentStatus_AGENT_STATUS_STARTED
		}
	}
	return out
}

// processStatus is STARTED for a running process, else STOPPED.
func processStatus(s host.AgentStatus) hostv1.AgentStatus {
	if s == host.AgentStarted {
		return hostv1.AgentStatus_AGENT_STATUS_STARTED
	}
	return hostv1.AgentStatus_AGENT_STATUS_STOPPED
}
