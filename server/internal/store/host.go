package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"agentplane/server/internal/errs"
	"agentplane/server/internal/host"
	"agentplane/server/internal/paging"
)

const hostCols = `id, name, inner_ip, machine_id, status, agent_status, agentd_version, install_home, last_seen,
	op_task_id, processes, create_time, update_time, revoke_time, epoch, replica_id`

func scanHost(sc interface{ Scan(...any) error }) (host.Host, error) {
	var h host.Host
	var lastSeen, created, updated, revoked int64
	var op sql.NullInt64
	var procs string
	err := sc.Scan(&h.ID, &h.Name, &h.InnerIP, &h.MachineID, &h.Status, &h.AgentStatus, &h.AgentdVersion,
		&h.InstallHome, &lastSeen, &op, &procs, &created, &updated, &revoked, &h.Epoch, &h.Replica)
	if err != nil {
		return h, err
	}
	h.LastSeen, h.CreateTime, h.UpdateTime = fromMS(lastSeen), fromMS(created), fromMS(updated)
	h.RevokeTime = fromMS(revoked)
	h.OpTaskID = op.Int64
	if h.Processes, err = decodeProcesses(procs); err != nil {
		return h, err
	}
	// The fleet writes a process list only when it changes, and batches
	// last_seen (HostsSeen): a process STARTED in the list was in every
	// report since, so it was active when the host was last seen.
	for i := range h.Processes {
		if p := &h.Processes[i]; p.Status == host.AgentStarted && h.LastSeen.After(p.LastActiveTime) {
			p.LastActiveTime = h.LastSeen
		}
	}
	return h, nil
}

// decodeProcesses reads a stored process list. Lists stored before
// processes had a status held only the last report: those ran.
func decodeProcesses(text string) ([]host.Process, error) {
	ps := []host.Process{}
	if err := fromJSON(text, &ps); err != nil {
		return nil, err
	}
	for i := range ps {
		if ps[i].Status == host.AgentUnknown {
			ps[i].Status = host.AgentStarted
		}
	}
	return ps, nil
}

// mergeProcesses merges a report of the running base processes, made at
// `at`, into the list known for a host. Every process ever seen stays,
// keyed by name: those reported are STARTED with the report's details and
// LastActiveTime at; the others become STOPPED with their last details. A
// name reported twice keeps its first entry. The result is sorted by name.
func mergeProcesses(known, reported []host.Process, at time.Time) []host.Process {
	byName := make(map[string]host.Process, len(known)+len(reported))
	for _, p := range known {
		p.Status = host.AgentStopped
		byName[p.Name] = p
	}
	seen := make(map[string]bool, len(reported))
	for _, p := range reported {
		if seen[p.Name] {
			continue
		}
		seen[p.Name] = true
		p.Status, p.LastActiveTime = host.AgentStarted, at
		byName[p.Name] = p
	}
	out := make([]host.Process, 0, len(byName))
	for _, p := range byName {
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b host.Process) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// RegisterHost records a connecting agentd's host and marks it ONLINE, with
// its install home, and r.Processes (the base processes running now; nil:
// none) merged into the host's process list as HostSeen does (the agent
// NOT_INSTALLED when r.AgentStatus says so and nothing runs), and adds one
// to the host's epoch (1 for a new host): the new stream's fencing token,
// in the same write (one transaction per stream, grouped with others by the
// writer). The host is found by name, else created; the stored host is
// returned with its id and new epoch. r.Replica, the replica the stream is
// on, is recorded in the same write (hosts.replica_id: where the host's
// stream is, for the replicas that route commands to it).
// ErrPermissionDenied, and nothing written, when the host is revoked.
func (s *Store) RegisterHost(ctx context.Context, r host.Host, at time.Time) (host.Host, error) {
	if r.Name == "" {
		return host.Host{}, fmt.Errorf("registering a host with no name: %w", errs.ErrInvalidArgument)
	}
	var h host.Host
	err := s.tx(ctx, func(ctx context.Context, tx *wtx) error {
		var id, revoked int64
		var stored string
		err := tx.QueryRowContext(ctx, `SELECT id, processes, revoke_time FROM hosts WHERE name = ?`, r.Name).Scan(&id, &stored, &revoked)
		switch {
		case errors.Is(err, sql.ErrNoRows):
			procs := mergeProcesses(nil, r.Processes, at)
			res, err := tx.ExecContext(ctx, `INSERT INTO hosts (name, inner_ip, machine_id, status, agent_status,
				agentd_version, install_home, last_seen, processes, create_time, update_time, epoch, replica_id)
				VALUES (?,?,?,?,?,?,?,?,?,?,?,1,?)`,
				r.Name, r.InnerIP, r.MachineID, host.StatusOnline, registeredStatus(r, procs), r.AgentdVersion,
				r.InstallHome, ms(at), toJSON(procs), ms(at), ms(at), r.Replica)
			if err != nil {
				return fmt.Errorf("inserting host %q: %w", r.Name, err)
			}
			if id, err = res.LastInsertId(); err != nil {
				return err
			}
		case err != nil:
			return fmt.Errorf("finding host %q: %w", r.Name, err)
		case revoked != 0:
			return fmt.Errorf("host %d (%q) is revoked: %w", id, r.Name, errs.ErrPermissionDenied)
		default:
			known, err := decodeProcesses(stored)
			if err != nil {
				return fmt.Errorf("host %d: %w", id, err)
			}
			procs := mergeProcesses(known, r.Processes, at)
			_, err = tx.ExecContext(ctx, `UPDATE hosts SET inner_ip = ?, machine_id = ?, status = ?, agentd_version = ?,
				install_home = ?, last_seen = ?, processes = ?, agent_status = ?, update_time = ?, epoch = epoch + 1, replica_id = ? WHERE id = ?`,
				r.InnerIP, r.MachineID, host.StatusOnline, r.AgentdVersion, r.InstallHome, ms(at), toJSON(procs),
				registeredStatus(r, procs), ms(at), r.Replica, id)
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

// registeredStatus is the agent's status at a registration r: as
// agentStatusOf, but NOT_INSTALLED when r says so and nothing runs.
func registeredStatus(r host.Host, procs []host.Process) host.AgentStatus {
	st := agentStatusOf(procs)
	if st == host.AgentStopped && r.AgentStatus == host.AgentNotInstalled {
		return host.AgentNotInstalled
	}
	return st
}

// keepNotInstalled is the SQL value of agent_status set to the
// parameter: NOT_INSTALLED stays while the new status is STOPPED (nothing
// runs where agentd looks); it takes the parameter twice.
const keepNotInstalled = `CASE WHEN agent_status = '` + string(host.AgentNotInstalled) + `' AND ? = '` +
	string(host.AgentStopped) + `' THEN agent_status ELSE ? END`

// agentStatusOf derives the agent's status from a host's merged process
// list: STARTED when any process is STARTED, else STOPPED.
func agentStatusOf(procs []host.Process) host.AgentStatus {
	for _, p := range procs {
		if p.Status == host.AgentStarted {
			return host.AgentStarted
		}
	}
	return host.AgentStopped
}

// HostSeen records that a host's agentd was heard from at `at`, with the
// base processes it reported running (nil: the same as last time, so only
// last_seen moves),
// merged into the host's process list (see RegisterHost); the agent's status
// follows (a host NOT_INSTALLED stays so while nothing runs). It is one write either way.
func (s *Store) HostSeen(ctx context.Context, id int64, at time.Time, procs []host.Process) error {
	if procs == nil {
		if _, err := s.exec(ctx, `UPDATE hosts SET last_seen = ? WHERE id = ?`, ms(at), id); err != nil {
			return fmt.Errorf("recording host %d seen: %w", id, err)
		}
		return nil
	}
	err := s.tx(ctx, func(ctx context.Context, tx *wtx) error {
		var stored string
		err := tx.QueryRowContext(ctx, `SELECT processes FROM hosts WHERE id = ?`, id).Scan(&stored)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("host %d: %w", id, errs.ErrNotFound)
		}
		if err != nil {
			return err
		}
		known, err := decodeProcesses(stored)
		if err != nil {
			return err
		}
		merged := mergeProcesses(known, procs, at)
		st := agentStatusOf(merged)
		_, err = tx.ExecContext(ctx, `UPDATE hosts SET last_seen = ?, processes = ?, agent_status = `+keepNotInstalled+`,
			update_time = ? WHERE id = ?`, ms(at), toJSON(merged), st, st, ms(at), id)
		return err
	})
	if err != nil {
		return fmt.Errorf("recording host %d seen: %w", id, err)
	}
	return nil
}

// SetHostStatus sets a host's status.
func (s *Store) SetHostStatus(ctx context.Context, id int64, st host.Status) error {
	now := nowMS()
	res, err := s.exec(ctx, `UPDATE hosts SET status = ?, `+bumpUpdateTime+` WHERE id = ?`, st, now, now, id)
	if err != nil {
		return fmt.Errorf("setting host %d %s: %w", id, st, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("host %d: %w", id, errs.ErrNotFound)
	}
	return nil
}

// HostReplica returns where the host's stream was last registered: the
// replica id and the stream's epoch (Host.Replica, Host.Epoch). It is what
// a replica reads to route a command to the host. ErrNotFound when there
// is no such host.
func (s *Store) HostReplica(ctx context.Context, id int64) (HostStream, error) {
	var hs HostStream
	err := s.r.QueryRowContext(ctx, `SELECT replica_id, epoch, status FROM hosts WHERE id = ?`, id).Scan(&hs.Replica, &hs.Epoch, &hs.Status)
	if errors.Is(err, sql.ErrNoRows) {
		return hs, fmt.Errorf("host %d: %w", id, errs.ErrNotFound)
	}
	if err != nil {
		return hs, fmt.Errorf("reading host %d: %w", id, err)
	}
	return hs, nil
}

// HostStream is where a host's stream was last registered (HostReplica).
type HostStream struct {
	Replica string // "" for a host registered before replicas shared a fleet
	Epoch   int64
	Status  host.Status
}

// HostsSeen records when each host's agentd was last heard from (its
// reports unchanged since the last HostSeen): one UPDATE statement per
// seenChunk hosts, each its own write, so that 10,000 hosts' heartbeats
// cost a few round trips to the database every interval (not one per
// host), and a request's write waits behind one statement at most. A time
// older than the one stored is ignored. Hosts that no longer exist are
// skipped.
func (s *Store) HostsSeen(ctx context.Context, seen map[int64]time.Time) error {
	ids := make([]int64, 0, len(seen))
	for id := range seen {
		ids = append(ids, id)
	}
	slices.Sort(ids) // rows locked in one order by every replica
	for chunk := range slices.Chunk(ids, seenChunk) {
		query, args := seenUpdate(chunk, seen)
		if _, err := s.exec(ctx, query, args...); err != nil {
			return fmt.Errorf("recording %d hosts seen: %w", len(seen), err)
		}
	}
	return nil
}

// seenChunk bounds the hosts of one HostsSeen statement (4 placeholders
// each: well under SQLite's and MySQL's limits).
const seenChunk = 200

// seenUpdate is one UPDATE moving each host of ids to its time in seen,
// unless the stored time is later: a CASE over the ids, portable to SQLite
// and MySQL.
func seenUpdate(ids []int64, seen map[int64]time.Time) (string, []any) {
	var b strings.Builder
	args := make([]any, 0, 4*len(ids))
	b.WriteString(`UPDATE hosts SET last_seen = CASE`)
	for _, id := range ids {
		at := ms(seen[id])
		b.WriteString(` WHEN id = ? AND last_seen < ? THEN ?`)
		args = append(args, id, at, at)
	}
	b.WriteString(` ELSE last_seen END WHERE id IN (?` + strings.Repeat(`,?`, len(ids)-1) + `)`)
	for _, id := range ids {
		args = append(args, id)
	}
	return b.String(), args
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

// GetHostAgent returns the OCP Agent of a host as agentd last reported it,
// with every base process seen there, by name. Version is empty: agentd
// does not report it. ErrNotFound when there is no such host.
func (s *Store) GetHostAgent(ctx context.Context, hostID int64) (*host.Agent, error) {
	h, err := s.GetHost(ctx, hostID)
	if err != nil {
		return nil, err
	}
	procs := slices.Clone(h.Processes)
	slices.SortFunc(procs, func(a, b host.Process) int { return strings.Compare(a.Name, b.Name) })
	return &host.Agent{
		HostID: h.ID, InnerIP: h.InnerIP, InstallHome: h.InstallHome, Status: h.AgentStatus, LastSeen: h.LastSeen,
		Processes: procs, CreateTime: h.CreateTime, UpdateTime: h.UpdateTime,
	}, nil
}

// ListHosts returns a page of hosts by ascending id.
func (s *Store) ListHosts(ctx context.Context, q host.ListQuery) (host.Page, error) {
	var p host.Page
	if err := s.r.QueryRowContext(ctx, `SELECT COUNT(*) FROM hosts`).Scan(&p.Total); err != nil {
		return p, fmt.Errorf("counting hosts: %w", err)
	}
	limit, offset := paging.Bounds(q.Page, q.Size)
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

// ExpectedBack returns the hosts whose agentds a starting server expects
// back: ONLINE (connected to the previous server when it stopped), holding
// a running operation, or seen since seenSince. Read before MarkAllOffline.
func (s *Store) ExpectedBack(ctx context.Context, seenSince time.Time) ([]int64, error) {
	return s.expectedBack(ctx, `SELECT id FROM hosts WHERE revoke_time = 0
		AND (status = ? OR op_task_id IS NOT NULL OR last_seen >= ?)`, host.StatusOnline, ms(seenSince))
}

// ExpectedBackOn is ExpectedBack for the hosts whose last stream was on
// replica id (or on no replica: rows from before replicas shared a fleet):
// the others' agentds are another replica's. Read before
// MarkReplicaOffline.
func (s *Store) ExpectedBackOn(ctx context.Context, id string, seenSince time.Time) ([]int64, error) {
	return s.expectedBack(ctx, `SELECT id FROM hosts WHERE revoke_time = 0 AND replica_id IN (?, '')
		AND (status = ? OR op_task_id IS NOT NULL OR last_seen >= ?)`, id, host.StatusOnline, ms(seenSince))
}

func (s *Store) expectedBack(ctx context.Context, q string, args ...any) ([]int64, error) {
	rows, err := s.r.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("listing the hosts expected back: %w", err)
	}
	defer rows.Close()
	var ids []int64
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			return nil, fmt.Errorf("listing the hosts expected back: %w", err)
		}
		ids = append(ids, id)
	}
	return ids, rows.Err()
}

// MarkAllOffline sets every ONLINE host OFFLINE; the server calls it at start,
// before any agentd can have connected.
func (s *Store) MarkAllOffline(ctx context.Context) error {
	_, err := s.exec(ctx, `UPDATE hosts SET status = ? WHERE status = ?`, host.StatusOffline, host.StatusOnline)
	if err != nil {
		return fmt.Errorf("marking hosts offline: %w", err)
	}
	return nil
}

// MarkOrphanHostsOffline sets OFFLINE every ONLINE host whose stream was
// registered on a replica that has not heartbeaten for deadAfter (on the
// database's clock) or is not registered at all: its agentd died with it,
// or has not come back to any replica since. A host that reconnects
// meanwhile is registered on a live replica and keeps its status. It
// returns how many hosts it set OFFLINE.
func (s *Store) MarkOrphanHostsOffline(ctx context.Context, deadAfter time.Duration) (int64, error) {
	res, err := s.exec(ctx, `UPDATE hosts SET status = ? WHERE status = ? AND replica_id <> ''
		AND NOT EXISTS (SELECT 1 FROM replicas r WHERE r.id = hosts.replica_id AND r.heartbeat_at > `+s.dialect.ago()+`)`,
		host.StatusOffline, host.StatusOnline, deadAfter.Microseconds())
	if err != nil {
		return 0, fmt.Errorf("marking the hosts of dead replicas offline: %w", err)
	}
	n, err := res.RowsAffected()
	return n, err
}

// MarkReplicaOffline sets OFFLINE every ONLINE host whose stream was on
// replica id (or on no replica: rows from before replicas shared a fleet);
// a starting replica calls it before any agentd can have connected to it.
// Hosts whose streams are on other replicas keep their status.
func (s *Store) MarkReplicaOffline(ctx context.Context, id string) error {
	_, err := s.exec(ctx, `UPDATE hosts SET status = ? WHERE status = ? AND replica_id IN (?, '')`,
		host.StatusOffline, host.StatusOnline, id)
	if err != nil {
		return fmt.Errorf("marking the hosts of replica %q offline: %w", id, err)
	}
	return nil
}
