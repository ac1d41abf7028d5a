package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
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
// ErrConflict when another task holds the lock; ErrNotFound when the host
// does not exist. It returns once the write is committed (or failed).
//
// The calls that come while a group of them is written are written
// together (grouper), one UPDATE per inChunk hosts of the same task
// and status, in one write: a batch's 10,000 Finish steps cost a few dozen
// statements, not a savepoint and an UPDATE each. Where a host is missing
// or held by another task, its row is written alone to tell which.
func (s *Store) FinishAgentOperation(ctx context.Context, hostID, taskID int64, st host.AgentStatus) error {
	// Once queued, the write's outcome is awaited whatever ctx does (as a
	// write's on the writer): ctx ended before its group runs, it is not
	// written.
	_, err := s.finishes.do(context.Background(), finishReq{ctx: ctx, hostID: hostID, taskID: taskID, st: st}, s.finishAgentOperations)
	return err
}

// finishReq is a FinishAgentOperation waiting for its group.
type finishReq struct {
	ctx            context.Context
	hostID, taskID int64
	st             host.AgentStatus
}

// finishAgentOperations writes a group of FinishAgentOperation calls in one
// write, and returns their outcomes in their order.
func (s *Store) finishAgentOperations(reqs []finishReq) []result[struct{}] {
	out := make([]result[struct{}], len(reqs))
	type key struct {
		taskID int64
		st     host.AgentStatus
	}
	var keys []key
	by := map[key][]int{}
	for i, r := range reqs {
		if err := r.ctx.Err(); err != nil {
			out[i].err = err
			continue
		}
		k := key{r.taskID, r.st}
		if by[k] == nil {
			keys = append(keys, k)
		}
		by[k] = append(by[k], i)
	}
	if len(keys) == 0 {
		return out
	}
	now := nowMS()
	err := s.tx(context.Background(), func(ctx context.Context, tx *wtx) error {
		for _, k := range keys {
			for chunk := range slices.Chunk(by[k], inChunk) {
				if err := finishHosts(ctx, tx, reqs, chunk, out, k.taskID, k.st, now); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		for i := range out {
			if out[i].err == nil {
				out[i].err = fmt.Errorf("finishing the agent operation on host %d: %w", reqs[i].hostID, err)
			}
		}
	}
	return out
}

const finishSet = `UPDATE hosts SET agent_status = ` + keepNotInstalled + `, op_task_id = NULL, ` + bumpUpdateTime

// finishHosts writes the requests reqs[i], i in chunk, all of task taskID
// and status st: one UPDATE, and where it changes fewer rows than hosts,
// one per host, setting out[i].err for each host missing or held by
// another task. Its error is the database's.
func finishHosts(ctx context.Context, tx *wtx, reqs []finishReq, chunk []int, out []result[struct{}],
	taskID int64, st host.AgentStatus, now int64) error {
	ids := make([]int64, 0, len(chunk))
	for _, i := range chunk {
		ids = append(ids, reqs[i].hostID)
	}
	if ids = uniqueIDs(ids); len(ids) > 1 {
		in, inArgs := inList(ids)
		args := append([]any{st, st, now, now, taskID}, inArgs...)
		res, err := tx.ExecContext(ctx, finishSet+` WHERE (op_task_id IS NULL OR op_task_id = ?) AND id IN (`+in+`)`, args...)
		if err != nil {
			return fmt.Errorf("finishing the agent operation on %d hosts: %w", len(chunk), err)
		}
		if n, _ := res.RowsAffected(); n == int64(len(ids)) {
			return nil // every row changes: bumpUpdateTime
		}
	}
	for _, i := range chunk {
		err := finishHost(ctx, tx, reqs[i].hostID, taskID, st, now)
		if errors.Is(err, errs.ErrConflict) || errors.Is(err, errs.ErrNotFound) {
			out[i].err = err
			continue
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// finishHost is FinishAgentOperation's write of one host.
func finishHost(ctx context.Context, tx *wtx, hostID, taskID int64, st host.AgentStatus, now int64) error {
	res, err := tx.ExecContext(ctx, finishSet+` WHERE id = ? AND (op_task_id IS NULL OR op_task_id = ?)`,
		st, st, now, now, hostID, taskID)
	if err != nil {
		return fmt.Errorf("finishing the agent operation on host %d: %w", hostID, err)
	}
	if n, _ := res.RowsAffected(); n == 1 {
		return nil
	}
	var holder sql.NullInt64
	switch err := tx.QueryRowContext(ctx, `SELECT op_task_id FROM hosts WHERE id = ?`, hostID).Scan(&holder); {
	case errors.Is(err, sql.ErrNoRows):
		return fmt.Errorf("host %d: %w", hostID, errs.ErrNotFound)
	case err != nil:
		return fmt.Errorf("finishing the agent operation on host %d: %w", hostID, err)
	}
	return fmt.Errorf("host %d: lock held by another task than %d: %w", hostID, taskID, errs.ErrConflict)
}
