package store

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"agentplane/server/internal/errs"
	"agentplane/server/internal/host"
)

// When a replica dies, the streams its agents open on the others end and
// begin again, and a stream's end is one OFFLINE write. In a 10,000-host
// failover thousands of them (5 s each) timed out queued one by one on the
// survivors' single writer. They are written in groups (grouper), like
// FinishAgentOperation's: the calls that come while one group is written
// go together in the next, one UPDATE per offlineChunk hosts, each row
// still on its own epoch.

// offlineChunk bounds the hosts of one UPDATE (two placeholders each, well
// under SQLite's and MySQL's limits).
const offlineChunk = 256

// offlineReq is a SetHostOffline waiting for its group.
type offlineReq struct {
	ctx       context.Context
	id, epoch int64
}

// SetHostOffline marks a host OFFLINE if its epoch is still epoch: the
// stream that ended is still its newest, not replaced by one on another
// replica (a compare-and-swap; a newer stream's ONLINE stays). It reports
// whether it wrote; ErrNotFound when there is no such host. It returns once
// the write is committed (or failed).
//
// The calls that come while a group of them is written are written
// together (see above); once queued, the write's outcome is awaited
// whatever ctx does (as a write's on the writer), and a call whose ctx
// ended before its group is written is not written.
func (s *Store) SetHostOffline(ctx context.Context, id, epoch int64) (bool, error) {
	return s.offlines.do(context.Background(), offlineReq{ctx: ctx, id: id, epoch: epoch}, s.setHostsOffline)
}

// setHostsOffline writes a group of SetHostOffline calls in one write, and
// returns their outcomes in their order.
func (s *Store) setHostsOffline(reqs []offlineReq) []result[bool] {
	out := make([]result[bool], len(reqs))
	var live []int
	for i, r := range reqs {
		if err := r.ctx.Err(); err != nil {
			out[i].err = err
			continue
		}
		live = append(live, i)
	}
	if len(live) == 0 {
		return out
	}
	now := nowMS()
	var wrote map[int]bool
	err := s.tx(context.Background(), func(ctx context.Context, tx *wtx) error {
		wrote = map[int]bool{} // fn may run again: start afresh
		for _, i := range live {
			out[i] = result[bool]{}
		}
		for chunk := range slices.Chunk(live, offlineChunk) {
			if err := offlineChunkTx(ctx, tx, reqs, chunk, out, wrote, now); err != nil {
				return err
			}
		}
		return nil
	})
	for _, i := range live {
		switch {
		case err != nil:
			out[i] = result[bool]{err: fmt.Errorf("setting host %d OFFLINE: %w", reqs[i].id, err)}
		case out[i].err == nil:
			out[i].v = wrote[i]
		}
	}
	return out
}

// offlineChunkTx writes OFFLINE the hosts of reqs[i], i in chunk, each only
// at its epoch: one UPDATE, and where it changes fewer rows than asked, one
// read of the chunk's hosts to tell which it wrote (set in wrote) and which
// do not exist (out[i].err). Its error is the database's.
func offlineChunkTx(ctx context.Context, tx *wtx, reqs []offlineReq, chunk []int, out []result[bool],
	wrote map[int]bool, now int64) error {
	type pair struct{ id, epoch int64 }
	var pairs []pair
	seen := map[pair]bool{}
	for _, i := range chunk {
		p := pair{reqs[i].id, reqs[i].epoch}
		if !seen[p] { // the same stream's end twice: one row
			seen[p] = true
			pairs = append(pairs, p)
		}
	}
	// (id = ? AND epoch = ?) OR ...: each row on its own epoch, portable
	// (no row constructors) and a primary-key range on MySQL.
	args := []any{host.StatusOffline, now, now}
	for _, p := range pairs {
		args = append(args, p.id, p.epoch)
	}
	res, err := tx.ExecContext(ctx, `UPDATE hosts SET status = ?, `+bumpUpdateTime+` WHERE (id = ? AND epoch = ?)`+
		strings.Repeat(` OR (id = ? AND epoch = ?)`, len(pairs)-1), args...)
	if err != nil {
		return fmt.Errorf("setting %d hosts OFFLINE: %w", len(pairs), err)
	}
	if n, _ := res.RowsAffected(); n == int64(len(pairs)) { // every row matched changes: bumpUpdateTime
		for _, i := range chunk {
			wrote[i] = true
		}
		return nil
	}
	// Read back in the same transaction: a row still at the epoch asked was
	// written (the UPDATE holds it); one at another epoch was not.
	ids := make([]int64, len(pairs))
	for k, p := range pairs {
		ids[k] = p.id
	}
	in, inArgs := inList(uniqueIDs(ids))
	rows, err := tx.QueryContext(ctx, `SELECT id, epoch FROM hosts WHERE id IN (`+in+`)`, inArgs...)
	if err != nil {
		return fmt.Errorf("reading %d hosts back: %w", len(pairs), err)
	}
	defer rows.Close()
	epochs := map[int64]int64{}
	for rows.Next() {
		var id, epoch int64
		if err := rows.Scan(&id, &epoch); err != nil {
			return err
		}
		epochs[id] = epoch
	}
	if err := rows.Err(); err != nil {
		return err
	}
	for _, i := range chunk {
		epoch, ok := epochs[reqs[i].id]
		if !ok {
			out[i].err = fmt.Errorf("host %d: %w", reqs[i].id, errs.ErrNotFound)
			continue
		}
		wrote[i] = epoch == reqs[i].epoch
	}
	return nil
}
