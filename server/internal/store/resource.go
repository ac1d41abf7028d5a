package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"

	"agentplane/server/internal/errs"
	"agentplane/server/internal/host"
	"agentplane/server/internal/task"
)

// This file takes and releases the resources tasks hold (task.Resource).
// The one kind is a host's agent-operation lock (host.ResourceKind), the
// column hosts.op_task_id (indexed by hosts_op_task): NULL when free, else
// the id of the task holding it. Which tasks hold a host is agentop's
// (agentop/lock.go).

// holdResources takes rs for taskID; holding one already is fine.
// ErrConflict names the task holding one; ErrNotFound a missing host;
// ErrInvalidArgument a kind this store cannot lock.
func holdResources(ctx context.Context, q querier, rs []task.Resource, taskID int64) error {
	if len(rs) == 0 {
		return nil
	}
	hosts := make([]int64, len(rs))
	for i, r := range rs {
		if r.Kind != host.ResourceKind {
			return fmt.Errorf("resource %s: no such kind: %w", r, errs.ErrInvalidArgument)
		}
		hosts[i] = r.ID
	}
	return lockHosts(ctx, q, hosts, taskID)
}

// releaseResources releases every resource taskID holds.
func releaseResources(ctx context.Context, q querier, taskID int64) error {
	if _, err := q.ExecContext(ctx, `UPDATE hosts SET op_task_id = NULL WHERE op_task_id = ?`, taskID); err != nil {
		return fmt.Errorf("releasing hosts of task %d: %w", taskID, err)
	}
	return nil
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
	case holder.Valid && holder.Int64 == taskID:
		return nil // held already: MySQL counts the UPDATE that changed nothing as no row
	}
	return host.BusyError(hostID, holder.Int64)
}

// FinishAgentOperation records the OCP Agent's status on the host after the
// agent operation of taskID (a host NOT_INSTALLED stays so when st is
// STOPPED), and releases the host's lock if that task holds it.
// ErrConflict when another task holds the lock.
func (s *Store) FinishAgentOperation(ctx context.Context, hostID, taskID int64, st host.AgentStatus) error {
	now := nowMS()
	res, err := s.exec(ctx, `UPDATE hosts SET agent_status = `+keepNotInstalled+`, op_task_id = NULL, `+bumpUpdateTime+`
		WHERE id = ? AND (op_task_id IS NULL OR op_task_id = ?)`, st, st, now, now, hostID, taskID)
	if err != nil {
		return fmt.Errorf("finishing the agent operation on host %d: %w", hostID, err)
	}
	if n, _ := res.RowsAffected(); n == 1 {
		return nil
	}
	if _, err := s.GetHost(ctx, hostID); err != nil {
		return err
	}
	return fmt.Errorf("host %d: lock held by another task than %d: %w", hostID, taskID, errs.ErrConflict)
}
