package store

import (
	"context"
	"database/sql"
	"fmt"
	"slices"
	"time"

	"agentplane/server/internal/errs"
	"agentplane/server/internal/host"
)

// This file reads what every agent operation reads per host (HostState:
// Prepare's checks; HostReplicas: where the host's stream is, for each
// command) in groups (grouper): at 10,000 hosts the calls that come while
// one query runs are read by the next, a few hundred ids a query, instead
// of 10,000 single-row queries queuing for the read pool's connections.

// groupReadWait bounds a group's read.
const groupReadWait = 30 * time.Second

// inChunk is the most ids of one IN list (padded by inList, logsizes.go).
const inChunk = 512

// uniqueIDs returns ids sorted, without repeats.
func uniqueIDs(ids []int64) []int64 {
	ids = slices.Clone(ids)
	slices.Sort(ids)
	return slices.Compact(ids)
}

// readChunks calls read for ids, without repeats, inChunk at a time, under
// groupReadWait, until it fails.
func readChunks(ids []int64, read func(ctx context.Context, chunk []int64) error) error {
	if len(ids) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), groupReadWait)
	defer cancel()
	for chunk := range slices.Chunk(uniqueIDs(ids), inChunk) {
		if err := read(ctx, chunk); err != nil {
			return err
		}
	}
	return nil
}

// hostStateRead is a HostState waiting for its group.
type hostStateRead struct {
	ctx context.Context
	id  int64
}

// HostState returns a host without its process list (Processes nil): what
// an agent operation checks on every request, without decoding the list.
// ErrNotFound when there is none. Calls at the same time are read together
// (see above).
func (s *Store) HostState(ctx context.Context, id int64) (*host.Host, error) {
	return s.states.do(ctx, hostStateRead{ctx, id}, s.hostStates)
}

func (s *Store) hostStates(reqs []hostStateRead) []result[*host.Host] {
	out := make([]result[*host.Host], len(reqs))
	var ids []int64
	for i, r := range reqs {
		if err := r.ctx.Err(); err != nil {
			out[i].err = err
			continue
		}
		ids = append(ids, r.id)
	}
	got := map[int64]host.Host{}
	err := readChunks(ids, func(ctx context.Context, chunk []int64) error { return s.readHostStates(ctx, chunk, got) })
	for i, r := range reqs {
		switch h, ok := got[r.id]; {
		case out[i].err != nil:
		case err != nil:
			out[i].err = fmt.Errorf("reading host %d: %w", r.id, err)
		case !ok:
			out[i].err = fmt.Errorf("host %d: %w", r.id, errs.ErrNotFound)
		default:
			out[i].v = &h // a copy per caller
		}
	}
	return out
}

func (s *Store) readHostStates(ctx context.Context, ids []int64, out map[int64]host.Host) error {
	in, args := inList(ids)
	rows, err := s.r.QueryContext(ctx, `SELECT id, name, status, agent_status, last_seen, op_task_id, revoke_time
		FROM hosts WHERE id IN (`+in+`)`, args...)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var h host.Host
		var lastSeen, revoked int64
		var op sql.NullInt64
		if err := rows.Scan(&h.ID, &h.Name, &h.Status, &h.AgentStatus, &lastSeen, &op, &revoked); err != nil {
			return err
		}
		h.LastSeen, h.RevokeTime, h.OpTaskID = fromMS(lastSeen), fromMS(revoked), op.Int64
		out[h.ID] = h
	}
	return rows.Err()
}

// hostReplicasRead is a HostReplicas waiting for its group.
type hostReplicasRead struct {
	ctx context.Context
	ids []int64
}

// HostReplicas is HostReplica for several hosts at once; hosts that do not
// exist are left out. Calls at the same time are read together (see
// above).
func (s *Store) HostReplicas(ctx context.Context, ids []int64) (map[int64]HostStream, error) {
	return s.replicas.do(ctx, hostReplicasRead{ctx, ids}, s.hostReplicas)
}

func (s *Store) hostReplicas(reqs []hostReplicasRead) []result[map[int64]HostStream] {
	out := make([]result[map[int64]HostStream], len(reqs))
	var ids []int64
	for i, r := range reqs {
		if err := r.ctx.Err(); err != nil {
			out[i].err = err
			continue
		}
		ids = append(ids, r.ids...)
	}
	got := map[int64]HostStream{}
	err := readChunks(ids, func(ctx context.Context, chunk []int64) error { return s.readHostReplicas(ctx, chunk, got) })
	for i, r := range reqs {
		if out[i].err != nil {
			continue
		}
		if err != nil {
			out[i].err = fmt.Errorf("reading where hosts are: %w", err)
			continue
		}
		m := make(map[int64]HostStream, len(r.ids))
		for _, id := range r.ids {
			if hs, ok := got[id]; ok {
				m[id] = hs
			}
		}
		out[i].v = m
	}
	return out
}

func (s *Store) readHostReplicas(ctx context.Context, ids []int64, out map[int64]HostStream) error {
	in, args := inList(ids)
	rows, err := s.r.QueryContext(ctx, `SELECT id, replica_id, epoch, status FROM hosts WHERE id IN (`+in+`)`, args...)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var id int64
		var hs HostStream
		if err := rows.Scan(&id, &hs.Replica, &hs.Epoch, &hs.Status); err != nil {
			return err
		}
		out[id] = hs
	}
	return rows.Err()
}
