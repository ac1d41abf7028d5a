package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// Writes go through one goroutine that commits them in groups: SQLite has
// one writer, and a transaction's commit costs far more than a few more
// rows in it. Each write runs inside a savepoint of the group's
// transaction, so a write that fails is undone alone; a write returns only
// once its group has committed (or failed as a whole). Under load, the
// writes that queue while a group commits make the next group: 64 stops
// accepted at once cost a few commits, not 64 and their audit records
// another 64. Alone, a write is its own transaction, without savepoints.
//
// SAVEPOINT, ROLLBACK TO SAVEPOINT and RELEASE SAVEPOINT are the same on
// MySQL/OceanBase.

// maxGroup bounds the writes of one transaction.
const maxGroup = 256

// write is one caller's transaction body waiting for the writer.
type write struct {
	ctx  context.Context
	fn   func(ctx context.Context, tx *wtx) error
	done chan error
}

// errClosed is the error of a write after Close.
var errClosed = errors.New("store closed")

// tx runs fn in a write transaction (shared with other writes, see above),
// and returns nil once it is committed. fn gets ctx without its
// cancellation: cancelling a statement would abort the whole group's
// transaction. A ctx already done when the writer gets to fn fails it
// unrun. fn must not call the Store's writing methods (they would wait for
// the writer, which waits for fn).
func (s *Store) tx(ctx context.Context, fn func(ctx context.Context, tx *wtx) error) error {
	w := &write{ctx: ctx, fn: fn, done: make(chan error, 1)}
	select {
	case s.writes <- w:
	case <-ctx.Done():
		return ctx.Err()
	case <-s.stopped:
		return errClosed
	}
	return <-w.done
}

// exec runs one statement as a write.
func (s *Store) exec(ctx context.Context, query string, args ...any) (res sql.Result, err error) {
	err = s.tx(ctx, func(ctx context.Context, tx *wtx) error {
		res, err = tx.ExecContext(ctx, query, args...)
		return err
	})
	return res, err
}

// writer commits the queued writes in groups until Close, then commits
// what is still queued and returns.
func (s *Store) writer() {
	defer close(s.stopped)
	for {
		var first *write
		select {
		case first = <-s.writes:
		case <-s.stop:
			return
		}
		group := []*write{first}
	more:
		for len(group) < maxGroup {
			select {
			case w := <-s.writes:
				group = append(group, w)
			default:
				break more
			}
		}
		s.commit(group)
		s.wstmts.prepareWanted(context.Background(), s.w)
	}
}

// commit runs a group of writes in one transaction and tells each its
// outcome.
func (s *Store) commit(group []*write) {
	errs := make([]error, len(group))
	defer func() {
		for i := range errs {
			errs[i] = classify(errs[i])
		}
		s.noteWrites(errs)
		for i, w := range group {
			w.done <- errs[i]
		}
	}()
	bg := context.Background()
	tx, err := s.w.BeginTx(bg, nil)
	if err != nil {
		for i := range errs {
			errs[i] = fmt.Errorf("begin: %w", err)
		}
		return
	}
	alone := len(group) == 1
	for i, w := range group {
		if err := w.ctx.Err(); err != nil {
			errs[i] = err
			continue
		}
		if !alone {
			if _, err := tx.ExecContext(bg, `SAVEPOINT w`); err != nil {
				s.abort(tx, errs, fmt.Errorf("savepoint: %w", err))
				return
			}
		}
		errs[i] = run(w, &wtx{Tx: tx, c: s.wstmts})
		if alone {
			break
		}
		if errs[i] != nil {
			if _, err := tx.ExecContext(bg, `ROLLBACK TO SAVEPOINT w`); err != nil {
				// (SQLite may have rolled the transaction back itself,
				// e.g. on a full disk: errs[i] says why.)
				s.abort(tx, errs, fmt.Errorf("rolling back a failed write (%w): %w", errs[i], err))
				return
			}
		}
		if _, err := tx.ExecContext(bg, `RELEASE SAVEPOINT w`); err != nil {
			s.abort(tx, errs, fmt.Errorf("release savepoint: %w", err))
			return
		}
	}
	if alone && errs[0] != nil {
		_ = tx.Rollback()
		return
	}
	if err := tx.Commit(); err != nil {
		for i := range errs {
			if errs[i] == nil {
				errs[i] = fmt.Errorf("commit: %w", err)
			}
		}
	}
}

// run calls a write's body with the group's transaction; a panic fails
// the write, not the writer.
func run(w *write, tx *wtx) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("store write panicked: %v", p)
		}
	}()
	return w.fn(context.WithoutCancel(w.ctx), tx)
}

// abort rolls the group back after the transaction itself failed: every
// write not yet failed gets err.
func (s *Store) abort(tx *sql.Tx, errs []error, err error) {
	_ = tx.Rollback()
	for i := range errs {
		if errs[i] == nil {
			errs[i] = err
		}
	}
}

// checkpointInterval is how often checkpointer copies the WAL into the
// database.
const checkpointInterval = time.Second

// checkpointer checkpoints the WAL every checkpointInterval on a read
// connection, PASSIVE: it copies what no reader needs beside the writer,
// never blocking it, and the writer starts the WAL over once all of it is
// copied. It also runs the health probe when due (health.go). At Close it
// truncates the WAL, the writer having stopped.
func (s *Store) checkpointer() {
	defer close(s.checkpointed)
	t := time.NewTicker(checkpointInterval)
	defer t.Stop()
	for {
		select {
		case now := <-t.C:
			_, _ = s.r.DB.ExecContext(context.Background(), `PRAGMA wal_checkpoint(PASSIVE)`)
			if s.probeDue(now) {
				s.probe()
			}
		case <-s.stopped:
			_, _ = s.r.DB.ExecContext(context.Background(), `PRAGMA wal_checkpoint(TRUNCATE)`)
			return
		}
	}
}
