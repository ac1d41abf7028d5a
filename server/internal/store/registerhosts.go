package store

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"agentplane/server/internal/errs"
	"agentplane/server/internal/host"
)

// When a replica dies, its thousands of agentds reconnect to the others at
// once, and each registration (RegisterHost: the host's row ONLINE, its
// epoch raised, the replica recorded) was a read, an UPDATE and a read back
// inside its own savepoint: four round trips on MySQL, while every other
// write of the replica (a batch's steps and log lines) waited behind them
// on its one writer, and the agents' Welcomes came after they gave up.
// RegisterHosts registers many hosts in one write: per registerChunk hosts
// one SELECT, one UPDATE (each column's value chosen by a CASE on the id)
// and one read back. On SQLite a statement is a call, not a round trip:
// there each host is its own RegisterHost, as before (the writer groups
// them).

// registerChunk bounds the hosts of one statement (14 placeholders each:
// well under SQLite's and MySQL's limits).
const registerChunk = 100

// registered is one host's answer: as RegisterHost's.
type registered struct {
	h   host.Host
	err error
}

// RegisterHosts is RegisterHost for each of rs (all on one replica), at
// the same time at: hs[i] and errs[i] are rs[i]'s answer. On MySQL the
// hosts that exist are registered in one write (a few statements per
// registerChunk hosts) and the others each by RegisterHost; a revoked host
// gets ErrPermissionDenied and nothing is written for it. A failed write
// fails every host in it.
func (s *Store) RegisterHosts(ctx context.Context, rs []host.Host, at time.Time) ([]host.Host, []error) {
	out := make([]registered, len(rs))
	var rest []int // registered one by one
	if s.dialect == dialectMySQL {
		rest = s.registerKnown(ctx, rs, at, out)
	} else {
		for i := range rs {
			rest = append(rest, i)
		}
	}
	var wg sync.WaitGroup
	for _, i := range rest {
		wg.Go(func() {
			h, err := s.RegisterHost(ctx, rs[i], at)
			out[i] = registered{h: h, err: err}
		})
	}
	wg.Wait()
	hs, fails := make([]host.Host, len(rs)), make([]error, len(rs))
	for i, r := range out {
		hs[i], fails[i] = r.h, r.err
	}
	return hs, fails
}

// registerKnown registers, in one write, the hosts of rs whose names exist,
// filling out; it returns the indexes of the others (new hosts, or all of
// them when the write could not find out), for RegisterHost.
func (s *Store) registerKnown(ctx context.Context, rs []host.Host, at time.Time, out []registered) (rest []int) {
	byName := map[string][]int{}
	for i, r := range rs {
		if r.Name == "" {
			out[i].err = fmt.Errorf("registering a host with no name: %w", errs.ErrInvalidArgument)
			continue
		}
		byName[r.Name] = append(byName[r.Name], i)
	}
	var names []string
	for name, is := range byName {
		if len(is) > 1 { // the same host twice: each its own epoch, in turn
			rest = append(rest, is[1:]...)
		}
		names = append(names, name)
	}
	done := map[int]bool{}
	err := s.tx(ctx, func(ctx context.Context, tx *wtx) error {
		clear(done)
		for start := 0; start < len(names); start += registerChunk {
			chunk := names[start:min(start+registerChunk, len(names))]
			if err := registerChunkTx(ctx, tx, chunk, byName, rs, at, out, done); err != nil {
				return err
			}
		}
		return nil
	})
	for name, is := range byName {
		i := is[0]
		switch {
		case err != nil:
			out[i] = registered{err: fmt.Errorf("registering host %q: %w", name, err)}
		case !done[i]:
			rest = append(rest, i) // a new host
		}
	}
	return rest
}

// regFound is an existing, unrevoked host of a registration: rs[i], its id
// and its merged process list.
type regFound struct {
	i     int
	id    int64
	procs []host.Process
}

// registerChunkTx registers the existing hosts of names (each rs[byName[name][0]])
// in tx, marking each one answered in done.
func registerChunkTx(ctx context.Context, tx *wtx, names []string, byName map[string][]int, rs []host.Host,
	at time.Time, out []registered, done map[int]bool) error {
	live, err := findRegistered(ctx, tx, names, byName, rs, at, out, done)
	if err != nil {
		return err
	}
	if len(live) == 0 {
		return nil
	}
	// One UPDATE: the per-host columns by CASE on the id, the rest alike.
	cols := []struct {
		name string
		val  func(f regFound) any
	}{
		{"inner_ip", func(f regFound) any { return rs[f.i].InnerIP }},
		{"machine_id", func(f regFound) any { return rs[f.i].MachineID }},
		{"agentd_version", func(f regFound) any { return rs[f.i].AgentdVersion }},
		{"install_home", func(f regFound) any { return rs[f.i].InstallHome }},
		{"processes", func(f regFound) any { return toJSON(f.procs) }},
		{"agent_status", func(f regFound) any { return string(registeredStatus(rs[f.i], f.procs)) }},
	}
	var b strings.Builder
	var uargs []any
	b.WriteString(`UPDATE hosts SET `)
	for _, c := range cols {
		b.WriteString(c.name + ` = CASE id`)
		for _, f := range live {
			b.WriteString(` WHEN ? THEN ?`)
			uargs = append(uargs, f.id, c.val(f))
		}
		b.WriteString(` ELSE ` + c.name + ` END, `)
	}
	b.WriteString(`status = ?, last_seen = ?, update_time = ?, epoch = epoch + 1, replica_id = ? WHERE revoke_time = 0 AND id IN (?` +
		strings.Repeat(`,?`, len(live)-1) + `)`)
	uargs = append(uargs, host.StatusOnline, ms(at), ms(at), rs[live[0].i].Replica)
	ids := make([]any, len(live))
	for k, f := range live {
		ids[k] = f.id
	}
	uargs = append(uargs, ids...)
	if _, err := tx.ExecContext(ctx, b.String(), uargs...); err != nil {
		return fmt.Errorf("registering %d hosts: %w", len(live), err)
	}
	// Read back in the same transaction, as RegisterHost does.
	brows, err := tx.QueryContext(ctx, `SELECT `+hostCols+` FROM hosts WHERE id IN (?`+strings.Repeat(`,?`, len(live)-1)+`)`, ids...)
	if err != nil {
		return fmt.Errorf("reading %d hosts back: %w", len(live), err)
	}
	defer brows.Close()
	byID := map[int64]int{}
	for _, f := range live {
		byID[f.id] = f.i
	}
	for brows.Next() {
		h, err := scanHost(brows)
		if err != nil {
			return err
		}
		i, ok := byID[h.ID]
		if !ok {
			continue
		}
		if !h.RevokeTime.IsZero() { // revoked between the SELECT and the UPDATE: not written
			out[i], done[i] = registered{err: fmt.Errorf("host %d (%q) is revoked: %w", h.ID, h.Name, errs.ErrPermissionDenied)}, true
			continue
		}
		out[i], done[i] = registered{h: h}, true
	}
	if err := brows.Err(); err != nil {
		return err
	}
	for _, f := range live {
		if !done[f.i] {
			return errors.New("a registered host was not read back")
		}
	}
	return nil
}

// findRegistered reads the hosts of names: the revoked are answered (and
// marked in done), the others returned with their reports merged.
func findRegistered(ctx context.Context, tx *wtx, names []string, byName map[string][]int, rs []host.Host,
	at time.Time, out []registered, done map[int]bool) ([]regFound, error) {
	args := make([]any, len(names))
	for i, n := range names {
		args[i] = n
	}
	rows, err := tx.QueryContext(ctx, `SELECT id, name, processes, revoke_time FROM hosts WHERE name IN (?`+
		strings.Repeat(`,?`, len(names)-1)+`)`, args...)
	if err != nil {
		return nil, fmt.Errorf("finding %d hosts: %w", len(names), err)
	}
	defer rows.Close()
	var live []regFound
	for rows.Next() {
		var id, revoked int64
		var name, stored string
		if err := rows.Scan(&id, &name, &stored, &revoked); err != nil {
			return nil, err
		}
		i := byName[name][0]
		if revoked != 0 {
			out[i], done[i] = registered{err: fmt.Errorf("host %d (%q) is revoked: %w", id, name, errs.ErrPermissionDenied)}, true
			continue
		}
		known, err := decodeProcesses(stored)
		if err != nil {
			return nil, fmt.Errorf("host %d: %w", id, err)
		}
		live = append(live, regFound{i: i, id: id, procs: mergeProcesses(known, rs[i].Processes, at)})
	}
	return live, rows.Err()
}
