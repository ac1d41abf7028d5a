package store

import (
	"context"
	"fmt"
	"strings"

	"agentplane/server/internal/task"
)

// A step of a batch task changes many subtasks at once (the outcomes
// drained together, the attempts they start). On MySQL each statement is a
// round trip, made while the group-commit writer and the task's step wait:
// one UPDATE per subtask was most of the statements of a batch stop on a
// shared MariaDB. There UpdateTask writes them one UPDATE per subtaskChunk
// rows instead: each column's new value chosen by a CASE on the row's id, and
// every row's compare-and-swap in the WHERE, so a row that moved on
// matches nothing and the count of rows changed tells (each row written
// differs from before in a stored column, so it counts as changed on MySQL
// too). On SQLite a statement is a call, not a round trip, and parsing one
// this long cost more than the prepared one-row UPDATE run per subtask
// (a 2,000-host batch in the task tests took three times as long), so it
// keeps that.

// subtaskChange is a subtask's stored row (b) and what it becomes (a).
type subtaskChange struct{ b, a *task.Subtask }

// subtaskChunk bounds the rows of one UPDATE (20 placeholders each: well
// under SQLite's and MySQL's limits).
const subtaskChunk = 100

// updateSubtask is the statement of a lone change: prepared once.
const updateSubtask = `UPDATE subtasks SET operation = ?, status = ?, run_time = ?,
	executor = ?, start_time = ?, end_time = ?, message = ?, prohibit_rollback = ?
	WHERE id = ? AND status = ? AND operation = ? AND run_time = ?`

// updateSubtasks writes changed (subtasks of task taskID) as
// compare-and-swap: task.ErrChanged when any of them is no longer as
// before.
func updateSubtasks(ctx context.Context, tx *wtx, d dialect, taskID int64, changed []subtaskChange) error {
	size := subtaskChunk
	if d == dialectSQLite {
		size = 1 // a statement is a call, and the prepared one is cheaper than parsing a long one
	}
	for len(changed) > 0 {
		chunk := changed[:min(size, len(changed))]
		changed = changed[len(chunk):]
		query, args := updateSubtasksQuery(chunk)
		res, err := tx.ExecContext(ctx, query, args...)
		if err != nil {
			return fmt.Errorf("updating %d subtasks of task %d: %w", len(chunk), taskID, err)
		}
		n, err := res.RowsAffected()
		if err != nil {
			return fmt.Errorf("updating %d subtasks of task %d: %w", len(chunk), taskID, err)
		}
		if n != int64(len(chunk)) {
			return fmt.Errorf("%d subtasks of task %d (%d of %d as before): %w", len(chunk), taskID, n, len(chunk),
				task.ErrChanged)
		}
	}
	return nil
}

// updateSubtasksQuery is the UPDATE of changes: updateSubtask for one,
// else a CASE per column over their ids.
func updateSubtasksQuery(changes []subtaskChange) (string, []any) {
	values := func(a *task.Subtask) []any {
		return []any{a.Operation, a.Status, a.RunTime, a.Executor, ms(a.StartTime), ms(a.EndTime), a.Message,
			boolInt(a.ProhibitRollback)}
	}
	cas := func(c subtaskChange) []any { return []any{c.a.ID, c.b.Status, c.b.Operation, c.b.RunTime} }
	if len(changes) == 1 {
		return updateSubtask, append(values(changes[0].a), cas(changes[0])...)
	}
	cols := []string{"operation", "status", "run_time", "executor", "start_time", "end_time", "message", "prohibit_rollback"}
	rows := make([][]any, len(changes))
	for i, c := range changes {
		rows[i] = values(c.a)
	}
	var b strings.Builder
	args := make([]any, 0, 20*len(changes))
	b.WriteString("UPDATE subtasks SET ")
	for k, col := range cols {
		if k > 0 {
			b.WriteString(", ")
		}
		b.WriteString(col + " = CASE id")
		for i, c := range changes {
			b.WriteString(" WHEN ? THEN ?")
			args = append(args, c.a.ID, rows[i][k])
		}
		b.WriteString(" ELSE " + col + " END")
	}
	b.WriteString(" WHERE ")
	for i, c := range changes {
		if i > 0 {
			b.WriteString(" OR ")
		}
		b.WriteString("(id = ? AND status = ? AND operation = ? AND run_time = ?)")
		args = append(args, cas(c)...)
	}
	return b.String(), args
}
