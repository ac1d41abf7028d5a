package store

import (
	"context"
	"fmt"
	"time"

	"agentplane/server/internal/task"
)

// The owners of tasks (migrations/*/00004_task_owner.sql): each task is run
// and written by one replica, tasks.owner_replica, under a claim whose
// fencing epoch is tasks.owner_epoch (see task/owner.go). UpdateTask is
// fenced by it (taskupdate.go); these are the claims and the queries that
// find the tasks to claim. Whether an owner is live is the replicas
// registry's answer on the database's clock (replica.go), read in the same
// statement as the claim.

// notLive is the condition that replica column col names no replica whose
// heartbeat is within a `?` argument of microseconds.
func (d dialect) notLive(col string) string {
	return `NOT EXISTS (SELECT 1 FROM replicas WHERE replicas.id = ` + col + ` AND replicas.heartbeat_at > ` + d.ago() + `)`
}

// ClaimTask makes replica the owner of task id, at one epoch past from's,
// when the task's owner is still from (else task.ErrChanged); with
// deadAfter > 0, only while from.Replica has no heartbeat within deadAfter
// on the database's clock (or is not registered, or is "").
func (s *Store) ClaimTask(ctx context.Context, id int64, from task.Owner, replica string, deadAfter time.Duration) (task.Owner, error) {
	q := `UPDATE tasks SET owner_replica = ?, owner_epoch = owner_epoch + 1 WHERE id = ? AND owner_replica = ? AND owner_epoch = ?`
	args := []any{replica, id, from.Replica, from.Epoch}
	if deadAfter > 0 {
		q += ` AND ` + s.dialect.notLive("tasks.owner_replica")
		args = append(args, deadAfter.Microseconds())
	}
	res, err := s.exec(ctx, q, args...)
	if err != nil {
		return task.Owner{}, fmt.Errorf("claiming task %d: %w", id, err)
	}
	if err := expectOne(res, fmt.Sprintf("claiming task %d from replica %q at epoch %d", id, from.Replica, from.Epoch)); err != nil {
		return task.Owner{}, err
	}
	return task.Owner{Replica: replica, Epoch: from.Epoch + 1}, nil
}

// OwnedTasks returns the tasks that are not final and owned by replica,
// oldest first.
func (s *Store) OwnedTasks(ctx context.Context, replica string) ([]task.OwnedTask, error) {
	return s.ownedTasks(ctx, `SELECT id, owner_replica, owner_epoch FROM tasks WHERE status = ? AND owner_replica = ? ORDER BY id`,
		task.StatusRunning, replica)
}

// OrphanedTasks returns up to limit tasks that are not final and whose
// owner is neither replica nor live within deadAfter (as ClaimTask's),
// oldest first, in one query on the index tasks_owner.
func (s *Store) OrphanedTasks(ctx context.Context, replica string, deadAfter time.Duration, limit int) ([]task.OwnedTask, error) {
	return s.ownedTasks(ctx, `SELECT id, owner_replica, owner_epoch FROM tasks WHERE status = ? AND owner_replica <> ? AND `+
		s.dialect.notLive("tasks.owner_replica")+` ORDER BY id LIMIT ?`,
		task.StatusRunning, replica, deadAfter.Microseconds(), limit)
}

func (s *Store) ownedTasks(ctx context.Context, q string, args ...any) ([]task.OwnedTask, error) {
	rows, err := s.r.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("listing tasks by owner: %w", err)
	}
	defer rows.Close()
	var out []task.OwnedTask
	for rows.Next() {
		var o task.OwnedTask
		if err := rows.Scan(&o.ID, &o.Owner.Replica, &o.Owner.Epoch); err != nil {
			return nil, fmt.Errorf("listing tasks by owner: %w", err)
		}
		out = append(out, o)
	}
	return out, rows.Err()
}
