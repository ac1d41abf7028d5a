package task

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"agentplane/server/internal/auth"
	"agentplane/server/internal/errs"
	"agentplane/server/internal/paging"
)

// Service is the task API users call: it checks the caller's role,
// validates the request and notes the audit record's subjects, then reads
// tasks from the store or changes them through the Engine, which runs them.
// Adapters (rest, rpc) serve it. The reads are here (service.go); the
// operations that change a task (retry, rollback, skip, cancel) in ops.go.
type Service struct {
	e *Engine
}

// NewService returns the task API over the engine that runs the tasks.
func NewService(e *Engine) *Service { return &Service{e: e} }

// GetTask returns a task. Needs TASK_VIEWER.
func (s *Service) GetTask(ctx context.Context, id int64) (*Task, error) {
	if err := auth.Require(ctx, auth.RoleTaskViewer); err != nil {
		return nil, err
	}
	if id <= 0 {
		return nil, fmt.Errorf("task id %d: must be positive: %w", id, errs.ErrInvalidArgument)
	}
	return s.e.cfg.Store.GetTask(ctx, id)
}

// ListTasks returns a page of tasks, newest first unless q.Sort says
// otherwise. Needs TASK_VIEWER.
func (s *Service) ListTasks(ctx context.Context, q ListQuery) (Page, error) {
	if err := auth.Require(ctx, auth.RoleTaskViewer); err != nil {
		return Page{}, err
	}
	if err := paging.Check(q.Page, q.Size); err != nil {
		return Page{}, err
	}
	if q.Sort.Field != "" && !slices.Contains(sortFields, q.Sort.Field) {
		return Page{}, fmt.Errorf("sort field %q: must be one of %s: %w", q.Sort.Field, strings.Join(sortFields, ", "), errs.ErrInvalidArgument)
	}
	if len(q.Name) > 128 {
		return Page{}, fmt.Errorf("name filter longer than 128 characters: %w", errs.ErrInvalidArgument)
	}
	return s.e.cfg.Store.ListTasks(ctx, q)
}

// WatchTask calls send with the task now and after every change, and returns
// nil once it has sent the task in a final status. It returns early with
// send's error or ctx's. send must not modify the task. Changes that follow
// each other faster than a refresh (reading, comparing and sending the
// task) costs are sent together: a watcher of a big task that changes
// thousands of times spends at most about half its time refreshing. It
// follows a task on any replica: one another replica runs is read from the
// store each time that replica's change reaches this one (Engine.Changed),
// and every 5 s while it is not final, should one be lost. Needs
// TASK_VIEWER.
func (s *Service) WatchTask(ctx context.Context, id int64, send func(*Task) error) error {
	if err := auth.Require(ctx, auth.RoleTaskViewer); err != nil {
		return err
	}
	if id <= 0 {
		return fmt.Errorf("task id %d: must be positive: %w", id, errs.ErrInvalidArgument)
	}
	return s.e.watch(ctx, id, send)
}

// validIDs checks a task id and a subtask id (0: none).
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
func (s *Service) SubtaskLog(ctx context.Context, taskID, subtaskID int64, q LogQuery) (LogPage, error) {
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
	lines, more, err := s.e.cfg.Store.SubtaskLog(ctx, taskID, subtaskID, q.After, q.Limit, MaxLogPageBytes)
	if errors.Is(err, errs.ErrNotFound) {
		// Say which is missing: the task, or the subtask in it.
		if _, terr := s.e.cfg.Store.GetTask(ctx, taskID); terr != nil {
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
