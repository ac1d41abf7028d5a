package agentop

import (
	"context"
	"fmt"
	"strings"

	"agentplane/server/internal/audit"
	"agentplane/server/internal/auth"
	"agentplane/server/internal/errs"
	"agentplane/server/internal/host"
	"agentplane/server/internal/paging"
	"agentplane/server/internal/task"
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
	return s.hostOp(ctx, OpStop, hostID)
}

// StartAgent creates the "Start OCP agent" task for the host. As StopAgent.
func (s *Service) StartAgent(ctx context.Context, hostID int64) (*task.Task, error) {
	return s.hostOp(ctx, OpStart, hostID)
}

// RestartAgent creates the "Restart OCP agent" task (stop, then start) for
// the host. As StopAgent.
func (s *Service) RestartAgent(ctx context.Context, hostID int64) (*task.Task, error) {
	return s.hostOp(ctx, OpRestart, hostID)
}

// BatchStopAgents creates one "Batch stop OCP agent" task with a parallel
// branch per host. Needs HOST_MANAGER. ErrInvalidArgument unless hostIDs
// are 1..MaxBatch distinct positive ids; ErrNotFound naming an unknown
// host; ErrConflict naming the task that holds one of the hosts.
func (s *Service) BatchStopAgents(ctx context.Context, hostIDs []int64) (*task.Task, error) {
	return s.batchOp(ctx, OpStop, hostIDs)
}

// BatchStartAgents is BatchStopAgents for start.
func (s *Service) BatchStartAgents(ctx context.Context, hostIDs []int64) (*task.Task, error) {
	return s.batchOp(ctx, OpStart, hostIDs)
}

// BatchRestartAgents is BatchStopAgents for restart.
func (s *Service) BatchRestartAgents(ctx context.Context, hostIDs []int64) (*task.Task, error) {
	return s.batchOp(ctx, OpRestart, hostIDs)
}

// MaxBatch bounds the hosts of one batch task.
const MaxBatch = 10000

func (s *Service) hostOp(ctx context.Context, op Op, hostID int64) (*task.Task, error) {
	audit.SetHost(ctx, hostID)
	if err := auth.Require(ctx, auth.RoleHostManager); err != nil {
		return nil, err
	}
	if hostID <= 0 {
		return nil, fmt.Errorf("host id %d: must be positive: %w", hostID, errs.ErrInvalidArgument)
	}
	p, _ := auth.FromContext(ctx)
	if err := s.operable(ctx, hostID); err != nil {
		return nil, err
	}
	t, err := s.tasks.Submit(ctx, HostPlan(op, hostID, p.Username))
	if err != nil {
		return nil, fmt.Errorf("%s of the agent of host %d: %w", strings.ToLower(string(op)), hostID, err)
	}
	audit.SetTask(ctx, t.ID)
	return t, nil
}

func (s *Service) batchOp(ctx context.Context, op Op, hostIDs []int64) (*task.Task, error) {
	if err := auth.Require(ctx, auth.RoleHostManager); err != nil {
		return nil, err
	}
	if len(hostIDs) == 0 || len(hostIDs) > MaxBatch {
		return nil, fmt.Errorf("hostIds: %d hosts, must be 1..%d: %w", len(hostIDs), MaxBatch, errs.ErrInvalidArgument)
	}
	seen := make(map[int64]bool, len(hostIDs))
	for _, id := range hostIDs {
		if id <= 0 {
			return nil, fmt.Errorf("hostIds: host id %d: must be positive: %w", id, errs.ErrInvalidArgument)
		}
		if seen[id] {
			return nil, fmt.Errorf("hostIds: host id %d is listed twice: %w", id, errs.ErrInvalidArgument)
		}
		seen[id] = true
		if err := s.operable(ctx, id); err != nil {
			return nil, err
		}
	}
	p, _ := auth.FromContext(ctx)
	t, err := s.tasks.Submit(ctx, BatchPlan(op, hostIDs, p.Username))
	if err != nil {
		return nil, fmt.Errorf("batch %s of %d agents: %w", strings.ToLower(string(op)), len(hostIDs), err)
	}
	audit.SetTask(ctx, t.ID)
	return t, nil
}

// operable checks that a host exists and is not revoked (its agentd can
// never connect again, so an operation could only fail).
func (s *Service) operable(ctx context.Context, hostID int64) error {
	h, err := s.hosts.HostState(ctx, hostID)
	if err != nil {
		return err
	}
	if !h.RevokeTime.IsZero() {
		return fmt.Errorf("host %d is revoked; enroll its agentd again first: %w", hostID, errs.ErrFailedPrecondition)
	}
	return nil
}

// GetHostAgent returns the OCP Agent of a host, as agentd last reported it.
// Needs HOST_VIEWER.
func (s *Service) GetHostAgent(ctx context.Context, hostID int64) (*host.Agent, error) {
	if err := auth.Require(ctx, auth.RoleHostViewer); err != nil {
		return nil, err
	}
	if hostID <= 0 {
		return nil, fmt.Errorf("host id %d: must be positive: %w", hostID, errs.ErrInvalidArgument)
	}
	return s.hosts.GetHostAgent(ctx, hostID)
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
	if err := paging.Check(q.Page, q.Size); err != nil {
		return host.Page{}, err
	}
	return s.hosts.ListHosts(ctx, q)
}
