package task

import (
	"context"
	"fmt"

	"agentplane/server/internal/audit"
	"agentplane/server/internal/auth"
	"agentplane/server/internal/errs"
)

// The operator's operations on tasks (OCP's task API). Each needs
// TASK_MANAGER, applies one state-machine transition as a compare-and-swap,
// and returns the task as stored after it. A transition the state does not
// allow fails with ErrFailedPrecondition naming the task, the operation and
// the state.
//
// Any replica serves any operation on any task: the replica that receives
// one for a task another replica owns (live or dead) first claims the task
// (a hand-over: its epoch goes up, so the old owner's next write fails and
// it drops the task, or sooner when the routing layer's broadcast reaches
// it, see Engine.Changed), then applies the operation and runs the task
// from then on, resuming its running attempts (Run.Resumed). An operation
// the task's state refuses claims nothing. (Rejected: forwarding the
// operation to the owner. It needs the owner reachable and live, a second
// path for a dead one, and a wait on another process inside the request;
// the claim is one compare-and-swap in the store every replica shares,
// whatever became of the owner.)

// RetryTask re-runs the failed subtasks of a FAILED task.
func (s *Service) RetryTask(ctx context.Context, id int64) (*Task, error) {
	return s.operate(ctx, id, 0, retryTask)
}

// RollbackTask rolls a FAILED task back; ErrRollbackProhibited when its
// context or a subtask that ran prohibits it.
func (s *Service) RollbackTask(ctx context.Context, id int64) (*Task, error) {
	return s.operate(ctx, id, 0, rollbackTask)
}

// RetrySubtask re-runs one FAILED subtask.
func (s *Service) RetrySubtask(ctx context.Context, taskID, subtaskID int64) (*Task, error) {
	return s.operate(ctx, taskID, subtaskID, func(t *Task) error { return retrySubtask(t, subtaskID) })
}

// SkipSubtask marks one FAILED subtask done without running it.
func (s *Service) SkipSubtask(ctx context.Context, taskID, subtaskID int64) (*Task, error) {
	return s.operate(ctx, taskID, subtaskID, func(t *Task) error { return skipSubtask(t, subtaskID, s.e.cfg.Now()) })
}

// CancelSubtask stops one RUNNING subtask. It returns once the subtask is
// CANCELING; it ends FAILED (operation CANCEL) when its work has stopped.
func (s *Service) CancelSubtask(ctx context.Context, taskID, subtaskID int64) (*Task, error) {
	t, err := s.operate(ctx, taskID, subtaskID, func(t *Task) error { return cancelSubtask(t, subtaskID) })
	if err == nil {
		if st := t.Subtask(subtaskID); st != nil {
			s.writeHeader(st, OpCancel)
		}
	}
	return t, err
}

// writeHeader appends to st's log the header of an operation on it.
func (s *Service) writeHeader(st *Subtask, op Operation) {
	now := s.e.cfg.Now()
	lines := []SubtaskLogLine{{SubtaskID: st.ID, LogLine: LogLine{RunTime: st.RunTime, Time: now,
		Line: logHeader(op, now), Header: true}}}
	err := s.e.cfg.Store.AppendSubtaskLogs(s.e.base, lines)
	if err != nil && s.e.base.Err() == nil {
		s.e.cfg.Log.Error().Err(err).Int64("subtask_id", st.ID).Int("lines", len(lines)).
			Msg("appending to subtask logs failed")
	}
}

// operate checks the caller and the ids, then applies mutate in one step.
// subtaskID 0 means a task-level operation.
func (s *Service) operate(ctx context.Context, id, subtaskID int64, mutate func(*Task) error) (*Task, error) {
	audit.SetTask(ctx, id)
	if err := auth.Require(ctx, auth.RoleTaskManager); err != nil {
		return nil, err
	}
	if err := validIDs(id, subtaskID); err != nil {
		return nil, err
	}
	if err := s.e.base.Err(); err != nil {
		return nil, fmt.Errorf("task %d: server shutting down: %w", id, errs.ErrUnavailable)
	}
	t, err := s.e.operate(ctx, id, func(t *Task, _ map[int64]int) error { return mutate(t) })
	if err != nil {
		return nil, err
	}
	hostID := t.HostID // 0 for a batch task: then the subtask's host, if any
	if st := t.Subtask(subtaskID); st != nil && st.HostID != 0 {
		hostID = st.HostID
	}
	if hostID != 0 {
		audit.SetHost(ctx, hostID)
	}
	p, _ := auth.FromContext(ctx)
	loggerOf(ctx, &s.e.cfg.Log).Info().Int64("task_id", id).Int64("subtask_id", subtaskID).Str("user", p.Username).
		Str("operation", string(t.Operation)).Msg("task operation")
	return t, nil
}

// operate claims task id if this engine does not own it (handOver), then
// applies mutate in one step.
func (e *Engine) operate(ctx context.Context, id int64, mutate mutation) (*Task, error) {
	mu := e.locks.of(id)
	mu.Lock()
	defer mu.Unlock()
	if err := e.handOver(ctx, id, mutate); err != nil {
		return nil, err
	}
	return e.stepLocked(ctx, id, mutate)
}
