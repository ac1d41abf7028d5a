package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strings"

	"agentplane/server/errs"
	"agentplane/server/task"
)

// CreateTask stores a new task with its subtasks, taking the agent-operation
// lock of every host in p.Locks, all in one transaction. It returns the task
// with IDs, upstreams and downstreams set. A lock held by another task is an
// ErrConflict error naming that task; a missing host is ErrNotFound.
//
// With p.Idempotency set, a task stored earlier under the same scope is
// returned instead (existed true), or ErrConflict when it was created for
// another request (fingerprint).
func (s *Store) CreateTask(ctx context.Context, p task.Plan) (created *task.Task, existed bool, err error) {
	created, existed, err = s.createTask(ctx, p)
	if p.Idempotency != nil && isUniqueViolation(err) {
		// A concurrent request with the same key committed first (possible
		// where transactions do not serialise, as on MySQL): return its task.
		return s.createTask(ctx, p)
	}
	return created, existed, err
}

func (s *Store) createTask(ctx context.Context, p task.Plan) (created *task.Task, existed bool, err error) {
	t := p.Task
	t.Subtasks = slices.Clone(p.Task.Subtasks)
	var earlier int64
	err = s.tx(ctx, func(tx *sql.Tx) error {
		if k := p.Idempotency; k != nil {
			var fp string
			err := tx.QueryRowContext(ctx, `SELECT task_id, fingerprint FROM idempotency_keys WHERE scope = ?`, k.Scope).
				Scan(&earlier, &fp)
			switch {
			case err == nil && fp != k.Fingerprint:
				return fmt.Errorf("Idempotency-Key already used for another request (task %d): %w", earlier, errs.ErrConflict)
			case err == nil:
				return nil
			case !errors.Is(err, sql.ErrNoRows):
				return fmt.Errorf("reading idempotency key: %w", err)
			}
		}
		res, err := tx.ExecContext(ctx, `INSERT INTO tasks (name, type, operation, status, creator, executor, host_id,
			task_definition_id, context, start_time, end_time, update_time) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)`,
			t.Name, t.Type, t.Operation, t.Status, t.Creator, t.Executor, t.HostID, t.TaskDefinitionID,
			toJSON(t.Context), ms(t.StartTime), ms(t.EndTime), ms(t.StartTime))
		if err != nil {
			return fmt.Errorf("inserting task: %w", err)
		}
		if t.ID, err = res.LastInsertId(); err != nil {
			return err
		}
		if k := p.Idempotency; k != nil {
			if _, err := tx.ExecContext(ctx, `INSERT INTO idempotency_keys (scope, fingerprint, task_id, create_time)
				VALUES (?,?,?,?)`, k.Scope, k.Fingerprint, t.ID, ms(t.StartTime)); err != nil {
				return fmt.Errorf("storing idempotency key: %w", err)
			}
		}
		for _, h := range p.Locks {
			if err := lockHost(ctx, tx, h, t.ID); err != nil {
				return err
			}
		}
		// Insert in series order, so IDs follow the order the DAG was built.
		order := make([]int, len(t.Subtasks))
		for i := range order {
			order[i] = i
		}
		slices.SortStableFunc(order, func(a, b int) int { return t.Subtasks[a].SeriesID - t.Subtasks[b].SeriesID })
		for _, i := range order {
			st := &t.Subtasks[i]
			st.TaskID = t.ID
			res, err := tx.ExecContext(ctx, `INSERT INTO subtasks (task_id, seq, name, description, class_name, node_type,
				operation, status, series_id, upstreams, downstreams, timeout_s, run_time, parallel_idx, prohibit_rollback,
				host_id, message) VALUES (?,?,?,?,?,?,?,?,?,'[]','[]',?,?,?,?,?,?)`,
				t.ID, i, st.Name, st.Description, st.ClassName, st.NodeType, st.Operation, st.Status, st.SeriesID,
				int(st.Timeout.Seconds()), st.RunTime, st.ParallelIdx, boolInt(st.ProhibitRollback), st.HostID, st.Message)
			if err != nil {
				return fmt.Errorf("inserting subtask %q: %w", st.Name, err)
			}
			if st.ID, err = res.LastInsertId(); err != nil {
				return err
			}
		}
		for i := range t.Subtasks {
			t.Subtasks[i].Upstreams, t.Subtasks[i].Downstreams = []int64{}, []int64{}
		}
		for _, e := range p.Edges {
			up, down := &t.Subtasks[e[0]], &t.Subtasks[e[1]]
			up.Downstreams = append(up.Downstreams, down.ID)
			down.Upstreams = append(down.Upstreams, up.ID)
		}
		for _, st := range t.Subtasks {
			if _, err := tx.ExecContext(ctx, `UPDATE subtasks SET upstreams = ?, downstreams = ? WHERE id = ?`,
				toJSON(st.Upstreams), toJSON(st.Downstreams), st.ID); err != nil {
				return fmt.Errorf("linking subtask %d: %w", st.ID, err)
			}
		}
		return nil
	})
	if err != nil {
		return nil, false, err
	}
	if earlier != 0 {
		prev, err := s.GetTask(ctx, earlier)
		return prev, true, err
	}
	return &t, false, nil
}

// lockHost takes host's agent-operation lock for taskID.
func lockHost(ctx context.Context, q querier, hostID, taskID int64) error {
	res, err := q.ExecContext(ctx, `UPDATE hosts SET op_task_id = ? WHERE id = ? AND (op_task_id IS NULL OR op_task_id = ?)`,
		taskID, hostID, taskID)
	if err != nil {
		return fmt.Errorf("locking host %d: %w", hostID, err)
	}
	if n, _ := res.RowsAffected(); n == 1 {
		return nil
	}
	var holder sql.NullInt64
	switch err := q.QueryRowContext(ctx, `SELECT op_task_id FROM hosts WHERE id = ?`, hostID).Scan(&holder); {
	case errors.Is(err, sql.ErrNoRows):
		return fmt.Errorf("host %d: %w", hostID, errs.ErrNotFound)
	case err != nil:
		return fmt.Errorf("locking host %d: %w", hostID, err)
	}
	return fmt.Errorf("host %d: agent operation in progress (task %d): %w", hostID, holder.Int64, errs.ErrConflict)
}

// LockHost takes host's agent-operation lock for taskID; holding it already
// is fine. ErrConflict names the task holding it; ErrNotFound when the host
// does not exist.
func (s *Store) LockHost(ctx context.Context, hostID, taskID int64) error {
	return s.tx(ctx, func(tx *sql.Tx) error { return lockHost(ctx, tx, hostID, taskID) })
}

const taskCols = `id, name, type, operation, status, creator, executor, host_id, task_definition_id, context, start_time, end_time`

const subtaskCols = `id, task_id, name, description, class_name, node_type, operation, status, series_id, upstreams,
	downstreams, timeout_s, run_time, parallel_idx, prohibit_rollback, host_id, executor, start_time, end_time, message`

func scanTask(sc interface{ Scan(...any) error }) (task.Task, error) {
	var t task.Task
	var ctxJSON string
	var start, end int64
	err := sc.Scan(&t.ID, &t.Name, &t.Type, &t.Operation, &t.Status, &t.Creator, &t.Executor, &t.HostID,
		&t.TaskDefinitionID, &ctxJSON, &start, &end)
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
	if err := fromJSON(ups, &st.Upstreams); err != nil {
		return st, err
	}
	return st, fromJSON(downs, &st.Downstreams)
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
	limit, offset := page(q.Page, q.Size)
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

// orderBy renders a sort (validated by the engine; unknown fields sort by
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

// UpdateTask writes the difference between before and after (the same task)
// in one transaction, as compare-and-swap: each changed row is written only
// if it still has before's status, operation and run time; otherwise
// nothing is written and the error is task.ErrChanged. The agent-operation
// locks of the hosts in lock are taken (ErrConflict naming the holder when
// another task holds one). When after is final, the host locks the task
// holds are released.
func (s *Store) UpdateTask(ctx context.Context, before, after *task.Task, lock []int64) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		for _, h := range lock {
			if err := lockHost(ctx, tx, h, after.ID); err != nil {
				return err
			}
		}
		for i := range after.Subtasks {
			b, a := before.Subtask(after.Subtasks[i].ID), &after.Subtasks[i]
			if b == nil {
				return fmt.Errorf("subtask %d is not in task %d: %w", a.ID, before.ID, errs.ErrInvalidArgument)
			}
			if subtaskEqual(b, a) {
				continue
			}
			res, err := tx.ExecContext(ctx, `UPDATE subtasks SET operation = ?, status = ?, run_time = ?, executor = ?,
				start_time = ?, end_time = ?, message = ?, prohibit_rollback = ?
				WHERE id = ? AND status = ? AND operation = ? AND run_time = ?`,
				a.Operation, a.Status, a.RunTime, a.Executor, ms(a.StartTime), ms(a.EndTime), a.Message,
				boolInt(a.ProhibitRollback), a.ID, b.Status, b.Operation, b.RunTime)
			if err != nil {
				return fmt.Errorf("updating subtask %d: %w", a.ID, err)
			}
			if err := expectOne(res, fmt.Sprintf("subtask %d", a.ID)); err != nil {
				return err
			}
		}
		res, err := tx.ExecContext(ctx, `UPDATE tasks SET operation = ?, status = ?, end_time = ?, update_time = ?
			WHERE id = ? AND status = ? AND operation = ?`,
			after.Operation, after.Status, ms(after.EndTime), nowMS(), after.ID, before.Status, before.Operation)
		if err != nil {
			return fmt.Errorf("updating task %d: %w", after.ID, err)
		}
		if err := expectOne(res, fmt.Sprintf("task %d", after.ID)); err != nil {
			return err
		}
		if after.Status.Final() {
			if _, err := tx.ExecContext(ctx, `UPDATE hosts SET op_task_id = NULL WHERE op_task_id = ?`, after.ID); err != nil {
				return fmt.Errorf("releasing hosts of task %d: %w", after.ID, err)
			}
		}
		return nil
	})
}

func subtaskEqual(a, b *task.Subtask) bool {
	return a.Operation == b.Operation && a.Status == b.Status && a.RunTime == b.RunTime && a.Executor == b.Executor &&
		a.StartTime.Equal(b.StartTime) && a.EndTime.Equal(b.EndTime) && a.Message == b.Message &&
		a.ProhibitRollback == b.ProhibitRollback
}

// RunningTaskIDs returns the ids of tasks that are not final, oldest first.
func (s *Store) RunningTaskIDs(ctx context.Context) ([]int64, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT id FROM tasks WHERE status = ? ORDER BY id`, task.StatusRunning)
	if err != nil {
		return nil, fmt.Errorf("listing running tasks: %w", err)
	}
	defer rows.Close()
	var ids []int64
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		ids = append(ids, id)
	}
	return ids, rows.Err()
}

// AppendSubtaskLog appends one line to a subtask's log.
func (s *Store) AppendSubtaskLog(ctx context.Context, subtaskID int64, l task.LogLine) error {
	_, err := s.w.ExecContext(ctx, `INSERT INTO subtask_logs (subtask_id, run_time, at, line) VALUES (?,?,?,?)`,
		subtaskID, l.RunTime, ms(l.Time), l.Line)
	if err != nil {
		return fmt.Errorf("appending to the log of subtask %d: %w", subtaskID, err)
	}
	return nil
}

// SubtaskLog returns a subtask's log, oldest line first.
func (s *Store) SubtaskLog(ctx context.Context, subtaskID int64) ([]task.LogLine, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT run_time, at, line FROM subtask_logs WHERE subtask_id = ? ORDER BY id`, subtaskID)
	if err != nil {
		return nil, fmt.Errorf("reading the log of subtask %d: %w", subtaskID, err)
	}
	defer rows.Close()
	lines := []task.LogLine{}
	for rows.Next() {
		var l task.LogLine
		var at int64
		if err := rows.Scan(&l.RunTime, &at, &l.Line); err != nil {
			return nil, err
		}
		l.Time = fromMS(at)
		lines = append(lines, l)
	}
	return lines, rows.Err()
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
