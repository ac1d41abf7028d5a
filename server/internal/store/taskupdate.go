package store

import (
	"context"
	"database/sql"
	"fmt"

	"agentplane/server/internal/errs"
	"agentplane/server/internal/task"
)

// UpdateTask writes the difference between before and after (the same task)
// in one transaction, as compare-and-swap: each changed row is written only
// if it still has before's status, operation and run time; otherwise
// nothing is written and the error is task.ErrChanged. The resources in
// take are taken for the task (ErrConflict naming the holder when another
// task holds one; resource.go). When after is final, every resource the
// task holds is released. logs are appended in the same transaction.
func (s *Store) UpdateTask(ctx context.Context, before, after *task.Task, take []task.Resource, logs ...task.SubtaskLogLine) error {
	return s.tx(ctx, func(ctx context.Context, tx *wtx) error {
		if err := holdResources(ctx, tx, take, after.ID); err != nil {
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
		now := nowMS()
		res, err := tx.ExecContext(ctx, `UPDATE tasks SET operation = ?, status = ?, end_time = ?, `+bumpUpdateTime+`
			WHERE id = ? AND status = ? AND operation = ?`,
			after.Operation, after.Status, ms(after.EndTime), now, now, after.ID, before.Status, before.Operation)
		if err != nil {
			return fmt.Errorf("updating task %d: %w", after.ID, err)
		}
		if err := expectOne(res, fmt.Sprintf("task %d", after.ID)); err != nil {
			return err
		}
		if after.Status.Final() {
			if err := releaseResources(ctx, tx, after.ID); err != nil {
				return err
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
		ms(a.StartTime) == ms(b.StartTime) && ms(a.EndTime) == ms(b.EndTime) && a.Message == b.Message &&
		a.ProhibitRollback == b.ProhibitRollback
}
