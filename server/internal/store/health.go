package store

import (
	"context"
	"errors"
	"sync"
	"syscall"
	"time"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"agentplane/server/internal/errs"
)

// A write can fail because of the store itself (a full disk, an I/O error,
// a read-only or vanished file; on MySQL, the database unreachable, gone
// away or read-only: mysqlerr.go) rather than because of the change. Such
// failures are classified here, once, as *errs.StoreError (an
// errs.ErrStoreUnavailable), and they make the store unwritable until a
// write commits again: the writer records each group's outcome, and while
// the store is unwritable a probe (a one-row write to store_probe) runs
// every probeRetry, so the store turns writable by itself once space (or
// the database) is back. When no write has committed for probeIdle, the probe runs too, so
// that a store that went bad while idle is seen.

// Probe intervals.
const (
	probeRetry = 2 * time.Second
	probeIdle  = 5 * time.Second
)

// classify returns err as an *errs.StoreError when the store itself failed
// it (see above), else err unchanged.
func classify(err error) error {
	if err == nil || errors.Is(err, errs.ErrStoreUnavailable) {
		return err
	}
	hit, full := mysqlStoreFailure(err), mysqlFull(err)
	walkErrors(err, func(e error) {
		switch e := e.(type) { //nolint:errorlint // walkErrors visits every wrapped error: e is one of them
		case *sqlite.Error:
			switch e.Code() & 0xff { // the primary code of an extended one
			case sqlite3.SQLITE_FULL:
				hit, full = true, true
			case sqlite3.SQLITE_IOERR, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_NOMEM,
				sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED,
				sqlite3.SQLITE_PROTOCOL:
				hit = true
			}
		case syscall.Errno:
			switch e {
			case syscall.ENOSPC, syscall.EDQUOT:
				hit, full = true, true
			case syscall.EIO, syscall.EROFS:
				hit = true
			}
		}
	})
	if !hit {
		return err
	}
	return &errs.StoreError{Full: full, Err: err}
}

// walkErrors calls f on err and every error it wraps.
func walkErrors(err error, f func(error)) {
	if err == nil {
		return
	}
	f(err)
	switch u := err.(type) { //nolint:errorlint // this is the unwrapping: it must see err itself
	case interface{ Unwrap() error }:
		walkErrors(u.Unwrap(), f)
	case interface{ Unwrap() []error }:
		for _, e := range u.Unwrap() {
			walkErrors(e, f)
		}
	}
}

// health is whether the store can be written.
type health struct {
	mu       sync.Mutex
	err      error     // nil: writable; else the failure of the last write that failed for the store
	lastOK   time.Time // when a write last committed
	lastTry  time.Time // when the last probe started
	watchers []func(error)
}

// Writable returns nil while the store can be written (its last write, or
// probe, committed), else the *errs.StoreError that failed the last one.
// It costs a mutex; the probe runs in the background.
func (s *Store) Writable() error {
	s.health.mu.Lock()
	defer s.health.mu.Unlock()
	return s.health.err
}

// OnWritable registers fn, called each time the store turns unwritable
// (with the *errs.StoreError) and writable again (nil). Calls come one at a
// time, in order, from the store's writer: fn must return soon and must not
// call the Store.
func (s *Store) OnWritable(fn func(err error)) {
	s.health.mu.Lock()
	defer s.health.mu.Unlock()
	s.health.watchers = append(s.health.watchers, fn)
}

// noteWrites records a group's outcome (errs classified): unwritable if
// the store failed one, writable if one committed. Only the writer calls
// it.
func (s *Store) noteWrites(results []error) {
	var failed error
	ok := false
	for _, err := range results {
		switch {
		case errors.Is(err, errs.ErrStoreUnavailable):
			failed = err
		case err == nil:
			ok = true
		}
	}
	if failed == nil && !ok {
		return
	}
	h := &s.health
	h.mu.Lock()
	was := h.err
	if failed != nil {
		h.err = failed
	} else {
		h.err, h.lastOK = nil, time.Now()
	}
	now, watchers := h.err, h.watchers
	h.mu.Unlock()
	if (was == nil) != (now == nil) {
		for _, fn := range watchers {
			fn(now)
		}
	}
}

// probeDue reports whether the probe should run now, and if so notes that
// it starts.
func (s *Store) probeDue(now time.Time) bool {
	h := &s.health
	h.mu.Lock()
	defer h.mu.Unlock()
	every := probeIdle
	if h.err != nil {
		every = probeRetry
	}
	if now.Sub(h.lastOK) < every || now.Sub(h.lastTry) < every {
		return false
	}
	h.lastTry = now
	return true
}

// probe writes store_probe's row, through the writer: its outcome is
// recorded as any write's.
func (s *Store) probe() {
	ctx, cancel := context.WithTimeout(context.Background(), probeRetry)
	defer cancel()
	_, _ = s.exec(ctx, `UPDATE store_probe SET at = ? WHERE id = 1`, nowMS())
}
