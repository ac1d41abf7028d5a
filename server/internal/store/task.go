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

// CreateTask stores a new task with its subtasks, owned by p.Task.Owner, taking every resource in
// p.Resources for it (resource.go), all in one transaction. It returns the task
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
			task_definition_id, context, start_time, end_time, update_time, owner_replica, owner_epoch)
			VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)`,
			t.Name, t.Type, t.Operation, t.Status, t.Creator, t.Executor, t.HostID, t.TaskDefinitionID,
			toJSON(t.Context), ms(t.StartTime), ms(t.EndTime), ms(t.StartTime), t.Owner.Replica, t.Owner.Epoch)
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
		if err := holdResources(ctx, tx, p.Resources, t.ID); err != nil {
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
