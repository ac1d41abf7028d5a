package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"agentplane/server/internal/errs"
	"agentplane/server/internal/task"
)

// UpdateTask writes the difference between before and after (the same task)
// in one transaction, as compare-and-swap: each changed row is written only
// if it still has before's status, operation and run time; otherwise
// nothing is written and the error is task.ErrChanged. The write is fenced
// by before.Owner: when the task has another owner or epoch (another
// replica claimed it), nothing is written and the error is
// task.ErrNotOwner. The resources in
// take are taken for the task (ErrConflict naming the holder when another
// task holds one; resource.go). When after is final, every resource the
// task holds is released. logs are appended in the same transaction.
func (s *Store) UpdateTask(ctx context.Context, before, after *task.Task, take []task.Resource, logs ...task.SubtaskLogLine) error {
	return s.tx(ctx, func(ctx context.Context, tx *wtx) error {
		// The task's row first: the fence, and (InnoDB) the row lock that
		// holds back a concurrent claim until this commits.
		now := nowMS()
		res, err := tx.ExecContext(ctx, `UPDATE tasks SET operation = ?, status = ?, end_time = ?, `+bumpUpdateTime+`
			WHERE id = ? AND status = ? AND operation = ? AND owner_replica = ? AND owner_epoch = ?`,
			after.Operation, after.Status, ms(after.EndTime), now, now, after.ID, before.Status, before.Operation,
			before.Owner.Replica, before.Owner.Epoch)
		if err != nil {
			return fmt.Errorf("updating task %d: %w", after.ID, err)
		}
		if n, err := res.RowsAffected(); err != nil || n != 1 {
			return taskUpdateMissed(ctx, tx, before, err)
		}
		if err := holdResources(ctx, tx, take, after.ID); err != nil {
			return err
		}
		var changed []subtaskChange
		for i := range after.Subtasks {
			a := &after.Subtasks[i]
			b := sameSubtask(before, i, a.ID)
			if b == nil {
				return fmt.Errorf("subtask %d is not in task %d: %w", a.ID, before.ID, errs.ErrInvalidArgument)
			}
			if !subtaskEqual(b, a) {
				changed = append(changed, subtaskChange{b, a})
			}
		}
		if err := updateSubtasks(ctx, tx, s.dialect, after.ID, changed); err != nil {
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

// taskUpdateMissed says why UpdateTask's write of before's row matched
// nothing (or err, when counting failed): ErrNotOwner when the task has
// another owner or epoch, else ErrChanged (ErrNotFound when it is gone).
func taskUpdateMissed(ctx context.Context, tx *wtx, before *task.Task, err error) error {
	if err != nil {
		return fmt.Errorf("task %d: %w", before.ID, err)
	}
	var owner task.Owner
	err = tx.QueryRowContext(ctx, `SELECT owner_replica, owner_epoch FROM tasks WHERE id = ?`, before.ID).
		Scan(&owner.Replica, &owner.Epoch)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return fmt.Errorf("task %d: %w", before.ID, errs.ErrNotFound)
	case err != nil:
		return fmt.Errorf("reading the owner of task %d: %w", before.ID, err)
	case owner != before.Owner:
		return fmt.Errorf("task %d: owned by replica %q at epoch %d, not %q at %d: %w", before.ID,
			owner.Replica, owner.Epoch, before.Owner.Replica, before.Owner.Epoch, task.ErrNotOwner)
	}
	return fmt.Errorf("task %d: %w", before.ID, task.ErrChanged)
}
