package api

import (
	"context"

	"agentplane/server/internal/host"
	"agentplane/server/internal/task"
)

// AgentOperations stop, start and restart agents, each as a task
// (agentop.Service). The methods honour an Idempotency-Key in ctx
// (task.WithIdempotencyKey): the same caller sending the same key gets the
// task the first call created.
type AgentOperations interface {
	StopAgent(ctx context.Context, hostID int64) (*task.Task, error)
	StartAgent(ctx context.Context, hostID int64) (*task.Task, error)
	RestartAgent(ctx context.Context, hostID int64) (*task.Task, error)
	BatchStopAgents(ctx context.Context, hostIDs []int64) (*task.Task, error)
	BatchStartAgents(ctx context.Context, hostIDs []int64) (*task.Task, error)
	BatchRestartAgents(ctx context.Context, hostIDs []int64) (*task.Task, error)
}

// HostReader reads hosts and their agents (agentop.Service).
type HostReader interface {
	GetHost(ctx context.Context, id int64) (*host.Host, error)
	ListHosts(ctx context.Context, q host.ListQuery) (host.Page, error)
	GetHostAgent(ctx context.Context, hostID int64) (*host.Agent, error)
}

// Hosts is the host API both adapters serve.
type Hosts interface {
	AgentOperations
	HostReader
}
