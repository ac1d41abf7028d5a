package agentop

import (
	"context"
	"fmt"

	"agentplane/server/auth"
	"agentplane/server/errs"
	"agentplane/server/host"
	"agentplane/server/task"
)

// Submitter creates tasks.
type Submitter interface {
	Submit(ctx context.Context, p task.Plan) (*task.Task, error)
}

// Service is the host API: it checks permissions and validates input, then
// reads hosts or creates agent-operation tasks.
type Service struct {
	hosts Hosts
	tasks Submitter
}

// NewService returns the host API over the host store and the task engine.
func NewService(hosts Hosts, tasks Submitter) *Service {
	return &Service{hosts: hosts, tasks: tasks}
}

// StopAgent creates the "Stop OCP agent" task for the host and returns it,
// RUNNING. Needs HOST_MANAGER. ErrNotFound for an unknown host; ErrConflict,
// naming the running task, when another agent operation holds the host.
func (s *Service) StopAgent(ctx context.Context, hostID int64) (*task.Task, error) {
	if err := auth.Require(ctx, auth.RoleHostManager); err != nil {
		return nil, err
	}
	if hostID <= 0 {
		return nil, fmt.Errorf("host id %d: must be positive: %w", hostID, errs.ErrInvalidArgument)
	}
	p, _ := auth.FromContext(ctx)
	if _, err := s.hosts.GetHost(ctx, hostID); err != nil {
		return nil, err
	}
	t, err := s.tasks.Submit(ctx, StopPlan(hostID, p.Username))
	if err != nil {
		return nil, fmt.Errorf("stopping the agent of host %d: %w", hostID, err)
	}
	return t, nil
}

// GetHost returns a host. Needs HOST_VIEWER.
func (s *Service) GetHost(ctx context.Context, id int64) (*host.Host, error) {
	if err := auth.Require(ctx, auth.RoleHostViewer); err != nil {
		return nil, err
	}
	if id <= 0 {
		return nil, fmt.Errorf("host id %d: must be positive: %w", id, errs.ErrInvalidArgument)
	}
	return s.hosts.GetHost(ctx, id)
}

// ListHosts returns a page of hosts. Needs HOST_VIEWER.
func (s *Service) ListHosts(ctx context.Context, q host.ListQuery) (host.Page, error) {
	if err := auth.Require(ctx, auth.RoleHostViewer); err != nil {
		return host.Page{}, err
	}
	if q.Page < 0 || q.Size < 0 || q.Size > 2000 {
		return host.Page{}, fmt.Errorf("page %d size %d: page must be ≥ 1 and size 1..2000: %w", q.Page, q.Size, errs.ErrInvalidArgument)
	}
	return s.hosts.ListHosts(ctx, q)
}
