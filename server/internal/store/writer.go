package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// Writes go through one goroutine that commits them in groups: SQLite has
// one writer, and a transaction's commit (an fsync, or on MySQL a round
// trip and the server's log flush) costs far more than a few more rows in
// it. Each write runs inside a savepoint of the group's
// transaction, so a write that fails is undone alone; a write returns only
// once its group has committed (or failed as a whole). Under load, the
// writes that queue while a group commits make the next group: 64 stops
// accepted at once cost a few commits, not 64 and their audit records
// another 64. Alone, a write is its own transaction, without savepoints.
//
// SAVEPOINT, ROLLBACK TO SAVEPOINT and RELEASE SAVEPOINT are the same on
// MySQL/OceanBase. There, each statement is a round trip while every write
// queued behind waits (the writer is bound by the database's latency, not
// by its own work), so a write's savepoint is not released: MySQL's
// SAVEPOINT w deletes the transaction's savepoint w before setting the new
// one, and COMMIT drops the last. SQLite's savepoints nest, so there each
// is released.

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
		s.prepareWanted()
	}
}

// commit runs a group of writes in one transaction and tells each its
// outcome. A transaction the database gave up on for a lock (a deadlock,
// a lock wait timeout: MySQL) is rolled back whole and run again, at most
// maxAttempts times; then its writes fail as the store unavailable.
func (s *Store) commit(group []*write) {
	began := time.Now()
	var errs []error
	for attempt := 1; ; attempt++ {
		var retry bool
		errs, retry = s.attempt(group)
		if !retry || attempt == maxAttempts {
			break
		}
		t := time.NewTimer(time.Duration(attempt) * retryWait)
		select {
		case <-t.C:
		case <-s.stop:
			t.Stop()
		}
	}
	for i := range errs {
		errs[i] = classify(errs[i])
	}
	s.noteWrites(errs)
	s.observeCommit(began, errs)
	for i, w := range group {
		w.done <- errs[i]
	}
}

// Retries of a transaction that lost a lock.
const (
	maxAttempts = 4
	retryWait   = 20 * time.Millisecond // times the attempt
)

// attempt runs a group of writes in one transaction, and returns each
// write's outcome; retry says that nothing was committed and the group
// should run again (a lock lost: retryable).
func (s *Store) attempt(group []*write) (errs []error, retry bool) {
	errs = make([]error, len(group))
	bg := context.Background()
	tx, err := s.w.BeginTx(bg, nil)
	if err != nil {
		for i := range errs {
			errs[i] = fmt.Errorf("begin: %w", err)
		}
		return errs, false
	}
	alone := len(group) == 1
	for i, w := range group {
		if err := w.ctx.Err(); err != nil {
			errs[i] = err
			continue
		}
		if !alone {
			if _, err := tx.ExecContext(bg, `SAVEPOINT w`); err != nil {
				return errs, s.abort(tx, errs, fmt.Errorf("savepoint: %w", err))
			}
		}
		errs[i] = run(w, &wtx{Tx: tx, c: s.wstmts})
		if retryable(errs[i]) {
			return errs, s.abort(tx, errs, errs[i])
		}
		if alone {
			break
		}
		if errs[i] != nil {
			if _, err := tx.ExecContext(bg, `ROLLBACK TO SAVEPOINT w`); err != nil {
				// (SQLite may have rolled the transaction back itself,
				// e.g. on a full disk: errs[i] says why.)
				return errs, s.abort(tx, errs, fmt.Errorf("rolling back a failed write (%w): %w", errs[i], err))
			}
		}
		if s.dialect == dialectMySQL {
			continue // the next SAVEPOINT w replaces this one (see above)
		}
		if _, err := tx.ExecContext(bg, `RELEASE SAVEPOINT w`); err != nil {
			return errs, s.abort(tx, errs, fmt.Errorf("release savepoint: %w", err))
		}
	}
	if alone && errs[0] != nil {
		_ = tx.Rollback()
		return errs, false
	}
	if err := tx.Commit(); err != nil {
		for i := range errs {
			if errs[i] == nil {
				errs[i] = fmt.Errorf("commit: %w", err)
			}
		}
		return errs, retryable(err)
	}
	return errs, false
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
// write not yet failed gets err. It reports whether err is retryable (the
// group runs again: abort's errors are then dropped).
func (s *Store) abort(tx *sql.Tx, errs []error, err error) bool {
	_ = tx.Rollback()
	for i := range errs {
		if errs[i] == nil {
			errs[i] = err
		}
	}
	return retryable(err)
}

// checkpointInterval is how often maintainer runs: a WAL checkpoint
// (SQLite) and the health probe when due.
const checkpointInterval = time.Second

// maintainer, on SQLite, checkpoints the WAL every checkpointInterval on a
// read connection, PASSIVE: it copies what no reader needs beside the
// writer, never blocking it, and the writer starts the WAL over once all of
// it is copied. On both dialects it runs the health probe when due
// (health.go). At Close it truncates the WAL (SQLite), the writer having
// stopped.
func (s *Store) maintainer() {
	defer close(s.maintained)
	t := time.NewTicker(checkpointInterval)
	defer t.Stop()
	sqlite := s.dialect == dialectSQLite
	for {
		select {
		case now := <-t.C:
			if sqlite {
				_, _ = s.r.DB.ExecContext(context.Background(), `PRAGMA wal_checkpoint(PASSIVE)`)
			}
			if s.probeDue(now) {
				s.probe()
			}
		case <-s.stopped:
			if sqlite {
				_, _ = s.r.DB.ExecContext(context.Background(), `PRAGMA wal_checkpoint(TRUNCATE)`)
			}
			return
		}
	}
}
