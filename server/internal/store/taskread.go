package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"

	"agentplane/server/internal/errs"
	"agentplane/server/internal/paging"
	"agentplane/server/internal/task"
)

const taskCols = `id, name, type, operation, status, creator, executor, host_id, task_definition_id, context, start_time, end_time,
	owner_replica, owner_epoch`

const subtaskCols = `id, task_id, name, description, class_name, node_type, operation, status, series_id, upstreams,
	downstreams, timeout_s, run_time, parallel_idx, prohibit_rollback, host_id, executor, start_time, end_time, message`

func scanTask(sc interface{ Scan(...any) error }) (task.Task, error) {
	var t task.Task
	var ctxJSON string
	var start, end int64
	err := sc.Scan(&t.ID, &t.Name, &t.Type, &t.Operation, &t.Status, &t.Creator, &t.Executor, &t.HostID,
		&t.TaskDefinitionID, &ctxJSON, &start, &end, &t.Owner.Replica, &t.Owner.Epoch)
	if err != nil {
		return t, err
	}
	t.StartTime, t.EndTime = fromMS(start), fromMS(end)
	return t, fromJSON(ctxJSON, &t.Context)
}

func scanSubtask(sc interface{ Scan(...any) error }) (task.Subtask, error) {
	var st task.Subtask
	var ups, downs string
	var timeout, prohibit int
	var start, end int64
	err := sc.Scan(&st.ID, &st.TaskID, &st.Name, &st.Description, &st.ClassName, &st.NodeType, &st.Operation,
		&st.Status, &st.SeriesID, &ups, &downs, &timeout, &st.RunTime, &st.ParallelIdx, &prohibit, &st.HostID,
		&st.Executor, &start, &end, &st.Message)
	if err != nil {
		return st, err
	}
	st.Timeout = secs(timeout)
	st.ProhibitRollback = prohibit != 0
	st.StartTime, st.EndTime = fromMS(start), fromMS(end)
	if st.Upstreams, err = parseIDs(ups); err != nil {
		return st, err
	}
	st.Downstreams, err = parseIDs(downs)
	return st, err
}

// GetTask returns the task with its subtasks. ErrNotFound when there is none.
func (s *Store) GetTask(ctx context.Context, id int64) (*task.Task, error) {
	t, err := scanTask(s.r.QueryRowContext(ctx, `SELECT `+taskCols+` FROM tasks WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("task %d: %w", id, errs.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("reading task %d: %w", id, err)
	}
	if err := s.loadSubtasks(ctx, []*task.Task{&t}); err != nil {
		return nil, err
	}
	return &t, nil
}

// loadSubtasks fills the subtasks of ts in one query.
func (s *Store) loadSubtasks(ctx context.Context, ts []*task.Task) error {
	if len(ts) == 0 {
		return nil
	}
	byID := make(map[int64]*task.Task, len(ts))
	args := make([]any, len(ts))
	for i, t := range ts {
		byID[t.ID] = t
		args[i] = t.ID
		t.Subtasks = []task.Subtask{}
	}
	rows, err := s.r.QueryContext(ctx, `SELECT `+subtaskCols+` FROM subtasks WHERE task_id IN (?`+
		strings.Repeat(",?", len(ts)-1)+`) ORDER BY task_id, seq`, args...)
	if err != nil {
		return fmt.Errorf("reading subtasks: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		st, err := scanSubtask(rows)
		if err != nil {
			return fmt.Errorf("reading subtasks: %w", err)
		}
		t := byID[st.TaskID]
		t.Subtasks = append(t.Subtasks, st)
	}
	return rows.Err()
}

// ListTasks returns a page of tasks matching q, newest first.
func (s *Store) ListTasks(ctx context.Context, q task.ListQuery) (task.Page, error) {
	where, args := []string{"1 = 1"}, []any{}
	if q.HostID != 0 {
		where = append(where, "(host_id = ? OR id IN (SELECT task_id FROM subtasks WHERE host_id = ?))")
		args = append(args, q.HostID, q.HostID)
	}
	if q.Status != "" {
		where, args = append(where, "status = ?"), append(args, q.Status)
	}
	if q.Type != "" {
		where, args = append(where, "type = ?"), append(args, q.Type)
	}
	if q.Name != "" {
		where = append(where, `LOWER(name) LIKE ? ESCAPE '!'`)
		args = append(args, "%"+likeEscaper.Replace(strings.ToLower(q.Name))+"%")
	}
	cond := strings.Join(where, " AND ")
	var p task.Page
	if err := s.r.QueryRowContext(ctx, `SELECT COUNT(*) FROM tasks WHERE `+cond, args...).Scan(&p.Total); err != nil {
		return p, fmt.Errorf("counting tasks: %w", err)
	}
	limit, offset := paging.Bounds(q.Page, q.Size)
	rows, err := s.r.QueryContext(ctx, `SELECT `+taskCols+` FROM tasks WHERE `+cond+` ORDER BY `+orderBy(q.Sort)+` LIMIT ? OFFSET ?`,
		append(args, limit, offset)...)
	if err != nil {
		return p, fmt.Errorf("listing tasks: %w", err)
	}
	defer rows.Close()
	p.Tasks = []task.Task{}
	for rows.Next() {
		t, err := scanTask(rows)
		if err != nil {
			return p, fmt.Errorf("listing tasks: %w", err)
		}
		p.Tasks = append(p.Tasks, t)
	}
	if err := rows.Err(); err != nil {
		return p, fmt.Errorf("listing tasks: %w", err)
	}
	ptrs := make([]*task.Task, len(p.Tasks))
	for i := range p.Tasks {
		ptrs[i] = &p.Tasks[i]
	}
	return p, s.loadSubtasks(ctx, ptrs)
}

// likeEscaper escapes LIKE's wildcards with '!', portable across SQLite and
// MySQL (whose default escape, backslash, SQLite lacks).
var likeEscaper = strings.NewReplacer("!", "!!", "%", "!%", "_", "!_")

// sortColumns maps the API's sort fields to columns.
var sortColumns = map[string]string{
	task.SortID: "id", task.SortName: "name", task.SortStatus: "status",
	task.SortStartTime: "start_time", task.SortEndTime: "end_time",
}

// orderBy renders a sort (validated by task.Service; unknown fields sort by
// id), with id as the tie-breaker so pages are stable.
func orderBy(s task.Sort) string {
	col, ok := sortColumns[s.Field]
	if !ok {
		col, s.Desc = "id", s.Field == "" || s.Desc
	}
	dir := " ASC"
	if s.Desc {
		dir = " DESC"
	}
	if col == "id" {
		return col + dir
	}
	return col + dir + ", id" + dir
}

// AttemptLive reports whether attempt is the current attempt of a subtask
// of hostID that is still running (RUNNING or CANCELING). A missing subtask,
// another host's, or an attempt that has moved on is not live.
func (s *Store) AttemptLive(ctx context.Context, hostID, subtaskID int64, attempt int) (bool, error) {
	var st task.SubtaskStatus
	var runTime int
	var h int64
	err := s.r.QueryRowContext(ctx, `SELECT status, run_time, host_id FROM subtasks WHERE id = ?`, subtaskID).
		Scan(&st, &runTime, &h)
	if errors.Is(err, sql.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("reading subtask %d: %w", subtaskID, err)
	}
	return h == hostID && runTime == attempt && (st == task.SubtaskRunning || st == task.SubtaskCanceling), nil
}
