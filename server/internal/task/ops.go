package task

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"agentplane/server/internal/audit"
	"agentplane/server/internal/auth"
	"agentplane/server/internal/errs"
)

// The operator's operations on tasks (OCP's task API). Each needs
// TASK_MANAGER, applies one state-machine transition as a compare-and-swap,
// and returns the task as stored after it. A transition the state does not
// allow fails with ErrFailedPrecondition naming the task, the operation and
// the state.

// RetryTask re-runs the failed subtasks of a FAILED task.
func (e *Engine) RetryTask(ctx context.Context, id int64) (*Task, error) {
	return e.operate(ctx, id, 0, retryTask)
}

// RollbackTask rolls a FAILED task back; ErrRollbackProhibited when its
// context or a subtask that ran prohibits it.
func (e *Engine) RollbackTask(ctx context.Context, id int64) (*Task, error) {
	return e.operate(ctx, id, 0, rollbackTask)
}

// RetrySubtask re-runs one FAILED subtask.
func (e *Engine) RetrySubtask(ctx context.Context, taskID, subtaskID int64) (*Task, error) {
	return e.operate(ctx, taskID, subtaskID, func(t *Task) error { return retrySubtask(t, subtaskID) })
}

// SkipSubtask marks one FAILED subtask done without running it.
func (e *Engine) SkipSubtask(ctx context.Context, taskID, subtaskID int64) (*Task, error) {
	return e.operate(ctx, taskID, subtaskID, func(t *Task) error { return skipSubtask(t, subtaskID, e.cfg.Now()) })
}

// CancelSubtask stops one RUNNING subtask. It returns once the subtask is
// CANCELING; it ends FAILED (operation CANCEL) when its work has stopped.
func (e *Engine) CancelSubtask(ctx context.Context, taskID, subtaskID int64) (*Task, error) {
	t, err := e.operate(ctx, taskID, subtaskID, func(t *Task) error { return cancelSubtask(t, subtaskID) })
	if err == nil {
		if st := t.Subtask(subtaskID); st != nil {
			now := e.cfg.Now()
			e.writeLogs([]SubtaskLogLine{{SubtaskID: st.ID, LogLine: LogLine{RunTime: st.RunTime, Time: now,
				Line: logHeader(OpCancel, now), Header: true}}})
		}
	}
	return t, err
}

// operate checks the caller and the ids, then applies mutate in one step.
// subtaskID 0 means a task-level operation.
func (e *Engine) operate(ctx context.Context, id, subtaskID int64, mutate func(*Task) error) (*Task, error) {
	audit.SetTask(ctx, id)
	if err := auth.Require(ctx, auth.RoleTaskManager); err != nil {
		return nil, err
	}
	if err := validIDs(id, subtaskID); err != nil {
		return nil, err
	}
	if err := e.base.Err(); err != nil {
		return nil, fmt.Errorf("task %d: server shutting down: %w", id, errs.ErrUnavailable)
	}
	t, err := e.step(ctx, id, func(t *Task, _ map[int64]int) error { return mutate(t) })
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
	e.logger(ctx).Info().Int64("task_id", id).Int64("subtask_id", subtaskID).Str("user", p.Username).
		Str("operation", string(t.Operation)).Msg("task operation")
	return t, nil
}

func validIDs(id, subtaskID int64) error {
	if id <= 0 {
		return fmt.Errorf("task id %d: must be positive: %w", id, errs.ErrInvalidArgument)
	}
	if subtaskID < 0 {
		return fmt.Errorf("subtask id %d: must be positive: %w", subtaskID, errs.ErrInvalidArgument)
	}
	return nil
}

// SubtaskLog returns a page of a subtask's log as text: each attempt's
// header line, then that attempt's lines, each prefixed with its time (a
// marker line stands for older lines dropped to bound the log). It is
// readable while the subtask runs. A page holds at most q.Limit lines and
// MaxLogPageBytes of line text, so a read's memory is bounded whatever the
// log. Needs TASK_VIEWER.
func (e *Engine) SubtaskLog(ctx context.Context, taskID, subtaskID int64, q LogQuery) (LogPage, error) {
	if err := auth.Require(ctx, auth.RoleTaskViewer); err != nil {
		return LogPage{}, err
	}
	if err := validIDs(taskID, subtaskID); err != nil {
		return LogPage{}, err
	}
	if subtaskID == 0 {
		return LogPage{}, fmt.Errorf("subtask id 0: must be positive: %w", errs.ErrInvalidArgument)
	}
	if q.After < 0 {
		return LogPage{}, fmt.Errorf("log offset %d: must not be negative: %w", q.After, errs.ErrInvalidArgument)
	}
	if q.Limit < 0 || q.Limit > MaxLogPageLines {
		return LogPage{}, fmt.Errorf("log limit %d: must be 1..%d: %w", q.Limit, MaxLogPageLines, errs.ErrInvalidArgument)
	}
	if q.Limit == 0 {
		q.Limit = MaxLogPageLines
	}
	lines, more, err := e.cfg.Store.SubtaskLog(ctx, taskID, subtaskID, q.After, q.Limit, MaxLogPageBytes)
	if errors.Is(err, errs.ErrNotFound) {
		// Say which is missing: the task, or the subtask in it.
		if _, terr := e.cfg.Store.GetTask(ctx, taskID); terr != nil {
			return LogPage{}, terr
		}
		return LogPage{}, subtaskNotFound(taskID, subtaskID)
	}
	if err != nil {
		return LogPage{}, err
	}
	page := LogPage{Lines: len(lines), Next: q.After, More: more}
	var b strings.Builder
	for _, l := range lines {
		if !l.Header {
			b.WriteString(l.Time.Format(LogHeaderLayout))
			b.WriteByte(' ')
		}
		b.WriteString(l.Line)
		b.WriteByte('\n')
		page.Next = l.Seq
	}
	page.Text = b.String()
	return page, nil
}

type idempotencyKeyCtx struct{}

// MaxIdempotencyKey is the longest Idempotency-Key accepted.
const MaxIdempotencyKey = 255

// WithIdempotencyKey returns ctx carrying a request's Idempotency-Key:
// Submit then returns the task the same caller created before with the same
// key, instead of creating another. The key must be 1..255 printable ASCII
// characters.
func WithIdempotencyKey(ctx context.Context, key string) (context.Context, error) {
	if key == "" || len(key) > MaxIdempotencyKey {
		return ctx, fmt.Errorf("Idempotency-Key must be 1..%d characters, got %d: %w", MaxIdempotencyKey, len(key), errs.ErrInvalidArgument)
	}
	for i := 0; i < len(key); i++ {
		if key[i] < 0x20 || key[i] > 0x7e {
			return ctx, fmt.Errorf("Idempotency-Key must be printable ASCII: %w", errs.ErrInvalidArgument)
		}
	}
	return context.WithValue(ctx, idempotencyKeyCtx{}, key), nil
}

// IdempotencyKey returns the Idempotency-Key ctx carries (see
// WithIdempotencyKey), or "" when it carries none.
func IdempotencyKey(ctx context.Context) string {
	k, _ := ctx.Value(idempotencyKeyCtx{}).(string)
	return k
}

// fingerprint identifies what a plan asks: its name and hosts.
func fingerprint(p Plan) string {
	parts := []string{p.Task.Name}
	for _, h := range p.Locks {
		parts = append(parts, strconv.FormatInt(h, 10))
	}
	return digest(parts...)
}

func digest(parts ...string) string {
	h := sha256.New()
	for _, p := range parts {
		h.Write([]byte(p))
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil))
}
