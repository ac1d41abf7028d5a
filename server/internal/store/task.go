package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"agentplane/server/internal/errs"
	"agentplane/server/internal/task"
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
	err = s.tx(ctx, func(ctx context.Context, tx *wtx) error {
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
		if err := lockHosts(ctx, tx, p.Locks, t.ID); err != nil {
			return err
		}
		return insertSubtasks(ctx, tx, &t, p.Edges)
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

// rowsPerInsert bounds the rows of one multi-row INSERT or IN list: well
// under SQLite's and MySQL's limits on placeholders per statement.
const rowsPerInsert = 500

// subtaskInsertCols are the columns insertSubtasks writes, one placeholder
// each.
const subtaskInsertCols = `id, task_id, seq, name, description, class_name, node_type, operation, status, series_id,
	upstreams, downstreams, timeout_s, run_time, parallel_idx, prohibit_rollback, host_id, message`

// insertSubtasks stores t's subtasks (seq: their index) with the DAG's edges,
// setting their IDs, task ID, upstreams and downstreams. The IDs are taken
// from the subtasks' id sequence before the insert, in series order (so
// they follow the order the DAG was built), which lets each row carry its
// edges at once: one multi-row INSERT per rowsPerInsert subtasks, and no
// second pass.
func insertSubtasks(ctx context.Context, tx *wtx, t *task.Task, edges [][2]int) error {
	n := len(t.Subtasks)
	if n == 0 {
		return nil
	}
	first, err := allocIDs(ctx, tx, "subtasks", n)
	if err != nil {
		return err
	}
	order := make([]int, n)
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int { return t.Subtasks[a].SeriesID - t.Subtasks[b].SeriesID })
	for k, i := range order {
		st := &t.Subtasks[i]
		st.ID, st.TaskID = first+int64(k), t.ID
		st.Upstreams, st.Downstreams = []int64{}, []int64{}
	}
	for _, e := range edges {
		up, down := &t.Subtasks[e[0]], &t.Subtasks[e[1]]
		up.Downstreams = append(up.Downstreams, down.ID)
		down.Upstreams = append(down.Upstreams, up.ID)
	}
	const row = "(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
	for lo := 0; lo < n; lo += rowsPerInsert {
		hi := min(lo+rowsPerInsert, n)
		args := make([]any, 0, (hi-lo)*18)
		for _, i := range order[lo:hi] {
			st := &t.Subtasks[i]
			args = append(args, st.ID, t.ID, i, st.Name, st.Description, st.ClassName, st.NodeType, st.Operation,
				st.Status, st.SeriesID, idsJSON(st.Upstreams), idsJSON(st.Downstreams), int(st.Timeout.Seconds()),
				st.RunTime, st.ParallelIdx, boolInt(st.ProhibitRollback), st.HostID, st.Message)
		}
		q := `INSERT INTO subtasks (` + subtaskInsertCols + `) VALUES ` + row + strings.Repeat(","+row, hi-lo-1)
		if _, err := tx.ExecContext(ctx, q, args...); err != nil {
			return fmt.Errorf("inserting subtasks %d..%d of task %d: %w", lo, hi-1, t.ID, err)
		}
	}
	return nil
}

// allocIDs takes n consecutive ids from the named sequence (id_sequences)
// and returns the first. The UPDATE holds the sequence's row until the
// transaction ends, so concurrent transactions (on MySQL) take disjoint
// ranges; SQLite runs one writer at a time anyway.
func allocIDs(ctx context.Context, tx *wtx, name string, n int) (int64, error) {
	res, err := tx.ExecContext(ctx, `UPDATE id_sequences SET next_id = next_id + ? WHERE name = ?`, n, name)
	if err != nil {
		return 0, fmt.Errorf("allocating %d %s ids: %w", n, name, err)
	}
	if err := expectOne(res, "id sequence "+name); err != nil {
		return 0, err
	}
	var next int64
	if err := tx.QueryRowContext(ctx, `SELECT next_id FROM id_sequences WHERE name = ?`, name).Scan(&next); err != nil {
		return 0, fmt.Errorf("allocating %d %s ids: %w", n, name, err)
	}
	return next - int64(n), nil
}

// idsJSON renders ids as the JSON array stored in upstreams and downstreams.
func idsJSON(ids []int64) string {
	b := make([]byte, 0, 2+8*len(ids))
	b = append(b, '[')
	for i, id := range ids {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendInt(b, id, 10)
	}
	return string(append(b, ']'))
}

// parseIDs reads a JSON array of ids as idsJSON writes it, falling back to
// encoding/json for any other spelling.
func parseIDs(s string) ([]int64, error) {
	if len(s) < 2 || s[0] != '[' || s[len(s)-1] != ']' {
		return idsFromJSON(s)
	}
	body := s[1 : len(s)-1]
	ids := make([]int64, 0, strings.Count(body, ",")+1)
	for body != "" {
		var part string
		part, body, _ = strings.Cut(body, ",")
		id, err := strconv.ParseInt(part, 10, 64)
		if err != nil {
			return idsFromJSON(s)
		}
		ids = append(ids, id)
	}
	return ids, nil
}

func idsFromJSON(s string) ([]int64, error) {
	var ids []int64
	err := fromJSON(s, &ids)
	return ids, err
}

// lockHosts takes the agent-operation locks of hosts for taskID: one UPDATE
// per rowsPerInsert hosts; where one of them is missing or held by another
// task, host by host, to name it.
func lockHosts(ctx context.Context, q querier, hosts []int64, taskID int64) error {
	for lo := 0; lo < len(hosts); lo += rowsPerInsert {
		chunk := hosts[lo:min(lo+rowsPerInsert, len(hosts))]
		args := make([]any, 0, 2+len(chunk))
		args = append(args, taskID, taskID)
		for _, h := range chunk {
			args = append(args, h)
		}
		res, err := q.ExecContext(ctx, `UPDATE hosts SET op_task_id = ? WHERE (op_task_id IS NULL OR op_task_id = ?)
			AND id IN (?`+strings.Repeat(",?", len(chunk)-1)+`)`, args...)
		if err != nil {
			return fmt.Errorf("locking %d hosts: %w", len(chunk), err)
		}
		if n, _ := res.RowsAffected(); n == int64(len(chunk)) {
			continue
		}
		for _, h := range chunk {
			if err := lockHost(ctx, q, h, taskID); err != nil {
				return err
			}
		}
	}
	return nil
}

// LockHost takes host's agent-operation lock for taskID; holding it already
// is fine. ErrConflict names the task holding it; ErrNotFound when the host
// does not exist.
func (s *Store) LockHost(ctx context.Context, hostID, taskID int64) error {
	return s.tx(ctx, func(ctx context.Context, tx *wtx) error { return lockHost(ctx, tx, hostID, taskID) })
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
// holds are released. logs are appended in the same transaction.
func (s *Store) UpdateTask(ctx context.Context, before, after *task.Task, lock []int64, logs ...task.SubtaskLogLine) error {
	return s.tx(ctx, func(ctx context.Context, tx *wtx) error {
		if err := lockHosts(ctx, tx, lock, after.ID); err != nil {
			return err
		}
		var update *sql.Stmt
		for i := range after.Subtasks {
			a := &after.Subtasks[i]
			b := sameSubtask(before, i, a.ID)
			if b == nil {
				return fmt.Errorf("subtask %d is not in task %d: %w", a.ID, before.ID, errs.ErrInvalidArgument)
			}
			if subtaskEqual(b, a) {
				continue
			}
			if update == nil {
				var err error
				update, err = tx.PrepareContext(ctx, `UPDATE subtasks SET operation = ?, status = ?, run_time = ?,
					executor = ?, start_time = ?, end_time = ?, message = ?, prohibit_rollback = ?
					WHERE id = ? AND status = ? AND operation = ? AND run_time = ?`)
				if err != nil {
					return fmt.Errorf("updating subtasks of task %d: %w", after.ID, err)
				}
				defer update.Close()
			}
			res, err := update.ExecContext(ctx, a.Operation, a.Status, a.RunTime, a.Executor, ms(a.StartTime),
				ms(a.EndTime), a.Message, boolInt(a.ProhibitRollback), a.ID, b.Status, b.Operation, b.RunTime)
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
		return s.appendSubtaskLogs(ctx, tx, logs)
	})
}

// sameSubtask returns subtask id of t: at index i when it is there (after
// is normally a modified copy of before, in the same order), else found by
// id.
func sameSubtask(t *task.Task, i int, id int64) *task.Subtask {
	if i < len(t.Subtasks) && t.Subtasks[i].ID == id {
		return &t.Subtasks[i]
	}
	return t.Subtask(id)
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
