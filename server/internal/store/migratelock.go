package store

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/pressly/goose/v3/lock"
)

// migrationLock is the migration lock for MySQL and OceanBase (whose MySQL
// mode has no GET_LOCK and no LOCK TABLES): one row of migration_lock,
// leased to one migrator at a time.
//
//   - Lock takes the row by a compare-and-swap UPDATE, where the row is free
//     or its lease has expired, with an expiry of UTC_TIMESTAMP(6) + lease:
//     every time is the database's clock, never a server's. (UTC_TIMESTAMP
//     rather than NOW: NOW follows each session's time_zone, and two
//     servers' sessions may differ; a DATETIME keeps no zone.) While the row
//     is held by another, Lock polls with backoff until ctx ends.
//   - While the migrations run, the lease is renewed every lease/3; a
//     renewal that finds the row taken by another (this one's lease expired:
//     a long pause), or that fails for a whole lease, calls onLost, which
//     cancels the migration.
//   - Unlock frees the row, and fails if it was lost meanwhile.
//
// Every UPDATE bumps generation, so that a matched row is a changed row and
// RowsAffected says 1 whether the driver counts changed or found rows.
//
// It has the shape of goose's lock.Locker (a row is no session's, and the
// renewals commit on their own connection while goose's is inside a
// migration's transaction), but migrate holds it around the whole goose
// run instead of giving it to goose: see migrate.
type migrationLock struct {
	opts lockOptions

	mu    sync.Mutex
	owner string             // this holder's id, while it holds the row
	stop  context.CancelFunc // ends renew
	done  chan struct{}      // closed when renew has returned
}

// lockOptions tune a migrationLock; zero fields take the defaults.
type lockOptions struct {
	// lease is how long a holder keeps the row without renewing it: how
	// long the others wait for one that died holding it.
	lease time.Duration
	// maxPoll bounds the wait between two attempts to take the row.
	maxPoll time.Duration
	// onLost is called (once at most) when the lease was lost while held.
	onLost func(error)
}

const (
	defaultLease   = 30 * time.Second
	defaultMaxPoll = time.Second
	// lockTable is the lease's table; its one row has id lockRowID.
	lockTable = "migration_lock"
	lockRowID = 1
	// unlockTimeout bounds Unlock, called with a context never cancelled
	// (the migration's may have been).
	unlockTimeout = 10 * time.Second
)

// errLockLost: the migration lock's lease expired and another took it.
var errLockLost = errors.New("migration lock lost: its lease expired while the migrations ran")

var _ lock.Locker = (*migrationLock)(nil)

func newMigrationLock(o lockOptions) *migrationLock {
	if o.lease <= 0 {
		o.lease = defaultLease
	}
	if o.maxPoll <= 0 {
		o.maxPoll = defaultMaxPoll
	}
	if o.onLost == nil {
		o.onLost = func(error) {}
	}
	return &migrationLock{opts: o}
}

// Lock takes the row, waiting while another holds it, until ctx ends.
func (l *migrationLock) Lock(ctx context.Context, db *sql.DB) error {
	if db.Stats().MaxOpenConnections == 1 {
		// The renewals need a connection beside the one goose migrates on.
		return errors.New("migration lock: the pool needs two connections or more")
	}
	if err := ensureLockRow(ctx, db); err != nil {
		return err
	}
	owner, err := newOwnerID()
	if err != nil {
		return err
	}
	wait := 20 * time.Millisecond
	for {
		res, err := db.ExecContext(ctx, `UPDATE `+lockTable+` SET owner = ?, generation = generation + 1,
			expires_at = UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND
			WHERE id = ? AND (owner = '' OR expires_at < UTC_TIMESTAMP(6))`, owner, l.opts.lease.Microseconds(), lockRowID)
		if err != nil {
			if ctx.Err() != nil { // ctx ended during the UPDATE rather than between tries: the same wait, ended
				return fmt.Errorf("waiting for the migration lock (%s): %w", lockHolder(db), ctx.Err())
			}
			return fmt.Errorf("taking the migration lock: %w", err)
		}
		if n, err := res.RowsAffected(); err != nil {
			return fmt.Errorf("taking the migration lock: %w", err)
		} else if n == 1 {
			break
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("waiting for the migration lock (%s): %w", lockHolder(db), ctx.Err())
		case <-t.C:
		}
		wait = min(wait*2, l.opts.maxPoll)
	}
	rctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	l.mu.Lock()
	l.owner, l.stop, l.done = owner, stop, make(chan struct{})
	done := l.done
	l.mu.Unlock()
	go l.renew(rctx, db, owner, done)
	return nil
}

// Unlock stops the renewals and frees the row.
func (l *migrationLock) Unlock(ctx context.Context, db *sql.DB) error {
	l.mu.Lock()
	owner, stop, done := l.owner, l.stop, l.done
	l.owner, l.stop, l.done = "", nil, nil
	l.mu.Unlock()
	if stop == nil {
		return errors.New("migration lock: unlock without lock")
	}
	stop()
	<-done
	ctx, cancel := context.WithTimeout(ctx, unlockTimeout)
	defer cancel()
	res, err := db.ExecContext(ctx, `UPDATE `+lockTable+` SET owner = '', generation = generation + 1,
		expires_at = UTC_TIMESTAMP(6) WHERE id = ? AND owner = ?`, lockRowID, owner)
	if err != nil {
		return fmt.Errorf("freeing the migration lock: %w", err)
	}
	if err := expectOne(res, "freeing the migration lock"); err != nil {
		return errLockLost
	}
	return nil
}

// renew extends the lease every lease/3 until ctx ends. It reports the
// lease lost when the row has another owner, or when no renewal has
// succeeded for a lease (measured on this process's monotonic clock from
// the last renewal it saw commit, so never later than the database's).
func (l *migrationLock) renew(ctx context.Context, db *sql.DB, owner string, done chan struct{}) {
	defer close(done)
	tick := time.NewTicker(l.opts.lease / 3)
	defer tick.Stop()
	last := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		rctx, cancel := context.WithTimeout(ctx, l.opts.lease/3)
		res, err := db.ExecContext(rctx, `UPDATE `+lockTable+` SET generation = generation + 1,
			expires_at = UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND WHERE id = ? AND owner = ?`,
			l.opts.lease.Microseconds(), lockRowID, owner)
		cancel()
		if err == nil {
			if err = expectOne(res, "renewing the migration lock"); err != nil {
				l.opts.onLost(errLockLost)
				return
			}
			last = time.Now()
			continue
		}
		if ctx.Err() != nil {
			return
		}
		if time.Since(last) >= l.opts.lease {
			l.opts.onLost(fmt.Errorf("%w (last renewal: %w)", errLockLost, err))
			return
		}
	}
}

// ensureLockRow creates the lock's table and its free row if missing; two
// servers may do so together.
func ensureLockRow(ctx context.Context, db *sql.DB) error {
	if _, err := db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS `+lockTable+` (
		id          INT          NOT NULL,
		owner       VARCHAR(128) NOT NULL,
		generation  BIGINT       NOT NULL,
		expires_at  DATETIME(6)  NOT NULL,
		PRIMARY KEY (id)
	) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin`); err != nil {
		return fmt.Errorf("creating %s: %w", lockTable, err)
	}
	_, err := db.ExecContext(ctx, `INSERT INTO `+lockTable+` (id, owner, generation, expires_at)
		VALUES (?, '', 0, UTC_TIMESTAMP(6))`, lockRowID)
	if err != nil && !isUniqueViolation(err) {
		return fmt.Errorf("creating the row of %s: %w", lockTable, err)
	}
	return nil
}

// lockHolder says who holds the lock and until when, for an error.
func lockHolder(db *sql.DB) string {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	var owner string
	var left float64
	err := db.QueryRowContext(ctx, `SELECT owner, TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6), expires_at) / 1e6
		FROM `+lockTable+` WHERE id = ?`, lockRowID).Scan(&owner, &left)
	if err != nil {
		return "holder unknown: " + err.Error()
	}
	if owner == "" {
		return "free"
	}
	return fmt.Sprintf("held by %s, lease ends in %.1fs", owner, left)
}

// newOwnerID names one holding of the lock: host, process and a random
// part, unique across servers and attempts.
func newOwnerID() (string, error) {
	host, err := os.Hostname()
	if err != nil {
		host = "unknown"
	}
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	id := fmt.Sprintf("%s/%d/%s", host, os.Getpid(), hex.EncodeToString(b[:]))
	if len(id) > 128 {
		id = id[len(id)-128:]
	}
	return id, nil
}
