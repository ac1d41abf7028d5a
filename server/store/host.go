package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"agentplane/server/errs"
	"agentplane/server/host"
)

const hostCols = `id, name, inner_ip, machine_id, status, agent_status, agentd_version, last_seen, op_task_id, processes,
	create_time, update_time`

func scanHost(sc interface{ Scan(...any) error }) (host.Host, error) {
	var h host.Host
	var lastSeen, created, updated int64
	var op sql.NullInt64
	var procs string
	err := sc.Scan(&h.ID, &h.Name, &h.InnerIP, &h.MachineID, &h.Status, &h.AgentStatus, &h.AgentdVersion, &lastSeen,
		&op, &procs, &created, &updated)
	if err != nil {
		return h, err
	}
	h.LastSeen, h.CreateTime, h.UpdateTime = fromMS(lastSeen), fromMS(created), fromMS(updated)
	h.OpTaskID = op.Int64
	h.Processes = []host.Process{}
	return h, fromJSON(procs, &h.Processes)
}

// RegisterHost records a connecting agentd's host and marks it ONLINE. The
// host is found by r.ID when that exists with the same name, else by name,
// else created; the stored host is returned with its id.
func (s *Store) RegisterHost(ctx context.Context, r host.Host, at time.Time) (host.Host, error) {
	if r.Name == "" {
		return host.Host{}, fmt.Errorf("registering a host with no name: %w", errs.ErrInvalidArgument)
	}
	if r.Processes == nil {
		r.Processes = []host.Process{}
	}
	var h host.Host
	err := s.tx(ctx, func(tx *sql.Tx) error {
		var id int64
		err := tx.QueryRowContext(ctx, `SELECT id FROM hosts WHERE name = ?`, r.Name).Scan(&id)
		switch {
		case errors.Is(err, sql.ErrNoRows):
			res, err := tx.ExecContext(ctx, `INSERT INTO hosts (name, inner_ip, machine_id, status, agent_status,
				agentd_version, last_seen, processes, create_time, update_time) VALUES (?,?,?,?,?,?,?,?,?,?)`,
				r.Name, r.InnerIP, r.MachineID, host.StatusOnline, agentStatusOf(r.Processes), r.AgentdVersion,
				ms(at), toJSON(r.Processes), ms(at), ms(at))
			if err != nil {
				return fmt.Errorf("inserting host %q: %w", r.Name, err)
			}
			if id, err = res.LastInsertId(); err != nil {
				return err
			}
		case err != nil:
			return fmt.Errorf("finding host %q: %w", r.Name, err)
		default:
			_, err = tx.ExecContext(ctx, `UPDATE hosts SET inner_ip = ?, machine_id = ?, status = ?, agentd_version = ?,
				last_seen = ?, processes = ?, agent_status = ?, update_time = ? WHERE id = ?`,
				r.InnerIP, r.MachineID, host.StatusOnline, r.AgentdVersion, ms(at), toJSON(r.Processes),
				agentStatusOf(r.Processes), ms(at), id)
			if err != nil {
				return fmt.Errorf("updating host %d: %w", id, err)
			}
		}
		// Read back in the same transaction: once it commits, nothing can
		// fail and leave the host ONLINE without a session.
		h, err = scanHost(tx.QueryRowContext(ctx, `SELECT `+hostCols+` FROM hosts WHERE id = ?`, id))
		return err
	})
	if err != nil {
		return host.Host{}, err
	}
	return h, nil
}

// agentStatusOf derives the agent's status from the base processes agentd
// reported: STARTED when any runs, else STOPPED.
func agentStatusOf(procs []host.Process) host.AgentStatus {
	if len(procs) > 0 {
		return host.AgentStarted
	}
	return host.AgentStopped
}

// HostSeen records that a host's agentd was heard from at `at`, with the OCP
// Agent processes it reported (nil: unchanged), from which the agent's
// status follows.
func (s *Store) HostSeen(ctx context.Context, id int64, at time.Time, procs []host.Process) error {
	var err error
	if procs == nil {
		_, err = s.w.ExecContext(ctx, `UPDATE hosts SET last_seen = ? WHERE id = ?`, ms(at), id)
	} else {
		_, err = s.w.ExecContext(ctx, `UPDATE hosts SET last_seen = ?, processes = ?, agent_status = ?, update_time = ?
			WHERE id = ?`, ms(at), toJSON(procs), agentStatusOf(procs), ms(at), id)
	}
	if err != nil {
		return fmt.Errorf("recording host %d seen: %w", id, err)
	}
	return nil
}

// SetHostStatus sets a host's status.
func (s *Store) SetHostStatus(ctx context.Context, id int64, st host.Status) error {
	res, err := s.w.ExecContext(ctx, `UPDATE hosts SET status = ?, update_time = ? WHERE id = ?`, st, nowMS(), id)
	if err != nil {
		return fmt.Errorf("setting host %d %s: %w", id, st, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("host %d: %w", id, errs.ErrNotFound)
	}
	return nil
}

// FinishAgentOperation records the OCP Agent's status on the host after the
// agent operation of taskID, and releases the host's lock if that task holds
// it. ErrConflict when another task holds the lock.
func (s *Store) FinishAgentOperation(ctx context.Context, hostID, taskID int64, st host.AgentStatus) error {
	res, err := s.w.ExecContext(ctx, `UPDATE hosts SET agent_status = ?, op_task_id = NULL, update_time = ?
		WHERE id = ? AND (op_task_id IS NULL OR op_task_id = ?)`, st, nowMS(), hostID, taskID)
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

// GetHost returns a host. ErrNotFound when there is none.
func (s *Store) GetHost(ctx context.Context, id int64) (*host.Host, error) {
	h, err := scanHost(s.r.QueryRowContext(ctx, `SELECT `+hostCols+` FROM hosts WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("host %d: %w", id, errs.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("reading host %d: %w", id, err)
	}
	return &h, nil
}

// ListHosts returns a page of hosts by ascending id.
func (s *Store) ListHosts(ctx context.Context, q host.ListQuery) (host.Page, error) {
	var p host.Page
	if err := s.r.QueryRowContext(ctx, `SELECT COUNT(*) FROM hosts`).Scan(&p.Total); err != nil {
		return p, fmt.Errorf("counting hosts: %w", err)
	}
	limit, offset := page(q.Page, q.Size)
	rows, err := s.r.QueryContext(ctx, `SELECT `+hostCols+` FROM hosts ORDER BY id LIMIT ? OFFSET ?`, limit, offset)
	if err != nil {
		return p, fmt.Errorf("listing hosts: %w", err)
	}
	defer rows.Close()
	p.Hosts = []host.Host{}
	for rows.Next() {
		h, err := scanHost(rows)
		if err != nil {
			return p, fmt.Errorf("listing hosts: %w", err)
		}
		p.Hosts = append(p.Hosts, h)
	}
	return p, rows.Err()
}

// MarkAllOffline sets every ONLINE host OFFLINE; the server calls it at start,
// before any agentd can have connected.
func (s *Store) MarkAllOffline(ctx context.Context) error {
	_, err := s.w.ExecContext(ctx, `UPDATE hosts SET status = ? WHERE status = ?`, host.StatusOffline, host.StatusOnline)
	if err != nil {
		return fmt.Errorf("marking hosts offline: %w", err)
	}
	return nil
}
