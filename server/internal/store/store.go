// Package store owns durable state, in SQL, one file per domain: hosts
// (host.go) and the resources tasks hold on them (resource.go: a host's
// agent-operation lock); tasks and subtasks with their idempotency keys
// (task.go creates, taskread.go reads, taskupdate.go changes); subtask logs
// (logs.go); users (user.go) and their access keys (accesskey.go); the audit
// trail (audit.go); agent enrollment: join tokens and agent certificates
// (enroll.go); the replicas registry and the fingerprints of the secrets
// every replica shares (replica.go). The schema is versioned by goose migrations, one directory
// per dialect (migrations/), run by schema.go (under migratelock.go's lock
// on MySQL); the frozen migrations of data dirs made before goose are in
// legacy.go. Writes go through one group-commit writer (writer.go),
// statements are kept prepared (stmts.go), and health.go says whether the
// store can be written.
//
// SQLite (pure Go, WAL, one file in the data dir: Open) is the embedded
// default; MySQL, MariaDB and OceanBase's MySQL mode are opened from a
// mysql:// URL (OpenMySQL, mysql.go). The Store's methods are the same on
// both: only the two Open functions know the dialect.
// Statements stay portable to MySQL/OceanBase: `?` placeholders, no
// RETURNING, no upserts, times as BIGINT Unix milliseconds, lists as JSON
// text, `lines` quoted, and every UPDATE whose match is counted changes a
// column (MySQL counts changed rows). Only the schema
// (migrations/<dialect>) is per dialect.
//
// Errors wrap the errs kinds: ErrNotFound for a missing row, ErrConflict for
// a compare-and-swap that lost or a unique key taken, ErrStoreUnavailable
// (an *errs.StoreError) for a read or write the store itself failed, e.g.
// on a full disk or with the MySQL database unreachable (health.go,
// mysqlerr.go).
package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	_ "modernc.org/sqlite" // the "sqlite" database/sql driver

	"agentplane/server/internal/errs"
	"agentplane/server/internal/host"
	"agentplane/server/internal/task"
)

// Store is the SQL store. It is safe for concurrent use.
type Store struct {
	// dialect is the database's: SQLite (Open) or MySQL (OpenMySQL). The
	// statements are the same on both but for the schema and the
	// database's clock (replica.go).
	dialect dialect
	// w serialises writes on one connection (SQLite allows one writer; on
	// MySQL, one transaction at a time on a small pool); r serves reads
	// concurrently (WAL lets them run beside the writer).
	w      *sql.DB
	r      *rdb
	wstmts *stmtCache // the writer's prepared statements (stmts.go)
	// astmts are the prepared statements run autocommitted on w, beside
	// the writer (MySQL's heartbeat: replica.go).
	astmts *stmtCache
	// lock holds an exclusive flock on the data dir (SQLite; nil on
	// MySQL): two servers running the same tasks would each execute them.
	// Holding it, the store knows the registry's other replicas stale
	// (RegisterReplica).
	lock *os.File
	// writes feeds the group-commit writer (writer.go); stop ends it and
	// stopped is closed once it has.
	writes   chan *write
	stop     chan struct{}
	stopOnce sync.Once
	stopped  chan struct{}
	// commits, when set, is told of each group commit (observe.go).
	commits CommitObserver
	// maintained is closed when maintainer has returned.
	maintained chan struct{}
	// health is whether writes commit (health.go).
	health health
	// logLimits bound each subtask's log (logs.go); logBulk, when set (by
	// tests), replaces bulkLogs (logsizes.go).
	logLimits LogLimits
	logBulk   int
	// finishes groups FinishAgentOperation's writes (resource.go),
	// offlines SetHostOffline's (hostoffline.go); states and replicas
	// HostState's and HostReplicas' reads (hostgroup.go).
	finishes grouper[finishReq, struct{}]
	offlines grouper[offlineReq, bool]
	states   grouper[hostStateRead, *host.Host]
	replicas grouper[hostReplicasRead, map[int64]HostStream]
}

// FileName is the database file inside the data dir.
const FileName = "agentplane.db"

// Open opens (creating if needed) the SQLite database in dataDir and brings
// its schema up to date. It fails with ErrConflict when another process has
// the data dir open.
func Open(ctx context.Context, dataDir string, opts ...Option) (s *Store, err error) {
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, fmt.Errorf("creating data dir: %w", err)
	}
	lock, err := lockDir(dataDir)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			lock.Close()
		}
	}()
	path := filepath.Join(dataDir, FileName)
	q := url.Values{}
	q.Add("_pragma", "journal_mode(WAL)")
	q.Add("_pragma", "synchronous(NORMAL)")
	q.Add("_pragma", "busy_timeout(10000)")
	q.Add("_pragma", "foreign_keys(1)")
	// No checkpoint inside a commit: its fsync would stall whichever write
	// crossed the threshold. maintainer runs them beside the writer.
	q.Add("_pragma", "wal_autocheckpoint(0)")
	q.Set("_txlock", "immediate")
	dsn := "file:" + path + "?" + q.Encode()

	w, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("opening %s: %w", path, err)
	}
	w.SetMaxOpenConns(1)
	w.SetConnMaxIdleTime(0)
	s = &Store{w: w, dialect: dialectSQLite, lock: lock, logLimits: defaultLogLimits()}
	for _, o := range opts {
		o(s)
	}
	if err := migrate(ctx, w, dialectSQLite); err != nil {
		w.Close()
		return nil, fmt.Errorf("migrating %s: %w", path, err)
	}
	r, err := sql.Open("sqlite", dsn)
	if err != nil {
		w.Close()
		return nil, fmt.Errorf("opening %s: %w", path, err)
	}
	r.SetMaxOpenConns(4)
	s.r = &rdb{DB: r, c: newStmtCache()}
	s.start()
	return s, nil
}

// start starts the writer and the maintainer of a store whose schema is up
// to date.
func (s *Store) start() {
	s.wstmts, s.astmts = newStmtCache(), newStmtCache()
	s.writes, s.stop, s.stopped = make(chan *write), make(chan struct{}), make(chan struct{})
	s.maintained = make(chan struct{})
	s.health.lastOK = time.Now() // the migration committed
	go s.writer()
	go s.maintainer()
}

// Close closes the database and releases the data dir (SQLite).
func (s *Store) Close() error {
	s.stopOnce.Do(func() { close(s.stop) })
	<-s.stopped
	<-s.maintained
	s.wstmts.close()
	s.astmts.close()
	s.r.c.close()
	err := errors.Join(s.r.Close(), s.w.Close())
	if s.lock != nil {
		err = errors.Join(err, s.lock.Close())
	}
	return err
}

// lockDir takes an exclusive, non-blocking flock on dataDir/lock; the kernel
// releases it when the process ends, however it ends.
func lockDir(dataDir string) (*os.File, error) {
	path := filepath.Join(dataDir, "lock")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening %s: %w", path, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("data dir %s is in use by another agentplane-server: %w", dataDir, errs.ErrConflict)
		}
		return nil, fmt.Errorf("locking %s: %w", path, err)
	}
	return f, nil
}

// querier runs the statements of a transaction: a wtx, or an *sql.Tx.
type querier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

func ms(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMilli()
}

func fromMS(v int64) time.Time {
	if v == 0 {
		return time.Time{}
	}
	return time.UnixMilli(v)
}

func toJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("store: marshal %T: %v", v, err)) // only our own plain types reach here
	}
	return string(b)
}

func fromJSON(s string, v any) error {
	if s == "" {
		return nil
	}
	if err := json.Unmarshal([]byte(s), v); err != nil {
		return fmt.Errorf("decoding stored %T: %w", v, err)
	}
	return nil
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// isUniqueViolation reports whether err is a unique-key violation, of
// SQLite or of MySQL (1062, ER_DUP_ENTRY).
func isUniqueViolation(err error) bool {
	if err == nil {
		return false
	}
	if mysqlErrorIs(err, erDupEntry) {
		return true
	}
	return strings.Contains(err.Error(), "UNIQUE constraint failed")
}

// bumpUpdateTime sets update_time to now (its two arguments: now, now),
// or one millisecond past the stored value when that is not older: the
// UPDATE always changes the row, so that MySQL, which counts changed rows,
// reports the match (expectOne) as SQLite does.
const bumpUpdateTime = `update_time = CASE WHEN update_time < ? THEN ? ELSE update_time + 1 END`

// expectOne turns an UPDATE that matched no row into a conflict.
func expectOne(res sql.Result, what string) error {
	n, err := res.RowsAffected()
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if n != 1 {
		return fmt.Errorf("%s: %w", what, task.ErrChanged)
	}
	return nil
}

func secs(n int) time.Duration { return time.Duration(n) * time.Second }

func nowMS() int64 { return time.Now().UnixMilli() }
