package store

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"

	"agentplane/internal/mariadbtest"
	"agentplane/server/internal/audit"
	"agentplane/server/internal/auth"
	"agentplane/server/internal/errs"
)

func TestParseMySQLURL(t *testing.T) {
	c, err := parseMySQLURL("mysql://ap:s3cr%40t@db.example:3307/agentplane?tls=skip-verify&readTimeout=3s&collation=utf8mb4_bin")
	if err != nil {
		t.Fatal(err)
	}
	if c.User != "ap" || c.Passwd != "s3cr@t" || c.Net != "tcp" || c.Addr != "db.example:3307" || c.DBName != "agentplane" ||
		c.TLSConfig != "skip-verify" || c.ReadTimeout != 3*time.Second || c.WriteTimeout != mysqlIOTimeout ||
		c.Timeout != mysqlDialTimeout || c.Collation != "utf8mb4_bin" || !c.RejectReadOnly || c.ClientFoundRows ||
		c.Loc != time.UTC || c.MultiStatements || c.InterpolateParams {
		t.Fatalf("config %+v", c)
	}
	if c, err := parseMySQLURL("mysql://ap@[::1]/db"); err != nil || c.Addr != "[::1]:3306" || c.Passwd != "" {
		t.Fatalf("default port, no password: %+v %v", c, err)
	}
	for _, bad := range []string{
		"mysql://ap:hunter2@db:3306/",                          // no database
		"mysql://ap:hunter2@db:3306/a/b",                       // two
		"mysql://:hunter2@db:3306/db",                          // no user
		"mysql://ap:hunter2@:3306/db",                          // no host
		"mysql://ap:hunter2@db:99999/db",                       // port
		"postgres://ap:hunter2@db/db",                          // scheme
		"mysql://ap:hunter2@db/db?clientFoundRows=true",        // relied on being off
		"mysql://ap:hunter2@db/db?multiStatements=true",        // likewise
		"mysql://ap:hunter2@db/db?sql_mode=%27%27",             // session variables are the store's
		"mysql://ap:hunter2@db/db?readTimeout=soon",            // a bad value
		"mysql://ap:hunter2@db/db?tls=custom",                  // a registered config
		"mysql://ap:hunter2@db/db?timeout=1s&timeout=2s",       // twice
		"mysql://ap:hunter2@db:3306/db#x",                      // fragment
		"mysql://ap:hunter2@db:3306/db\x7f",                    // not a URL
		"mysql://ap:hunter2@db:3306/db?tls=true&%zz=1",         // bad query
		"mysql://ap:hunter2@db:3306/db?allowNativePasswords=x", // a bad bool
	} {
		_, err := parseMySQLURL(bad)
		if err == nil {
			t.Errorf("%q accepted", bad)
			continue
		}
		if strings.Contains(err.Error(), "hunter2") {
			t.Errorf("%q: the error shows the password: %v", bad, err)
		}
	}
	if got := RedactURL("mysql://ap:hunter2@db:3306/db"); strings.Contains(got, "hunter2") || !strings.Contains(got, "ap:xxxxx@db:3306/db") {
		t.Errorf("RedactURL: %q", got)
	}
}

func TestClassifyMySQL(t *testing.T) {
	my := func(n uint16) error { return fmt.Errorf("inserting: %w", &mysql.MySQLError{Number: n, Message: "m"}) }
	for _, tt := range []struct {
		err          error
		store, retry bool
	}{
		{my(erDupEntry), false, false},
		{my(1054), false, false}, // unknown column: the statement's fault
		{my(erLockDeadlock), true, true},
		{my(erLockWaitTimeout), true, true},
		{my(1053), true, false},
		{my(1290), true, false},
		{my(1927), true, false},
		{fmt.Errorf("begin: %w", driver.ErrBadConn), true, false},
		{fmt.Errorf("query: %w", mysql.ErrInvalidConn), true, false},
		{&net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}, true, false},
		{fmt.Errorf("dial: %w", &net.OpError{Op: "dial", Net: "tcp", Err: context.DeadlineExceeded}), true, false},
		{context.DeadlineExceeded, false, false}, // the caller's deadline
		{context.Canceled, false, false},
		{sql.ErrNoRows, false, false},
	} {
		got := classify(tt.err)
		if errors.Is(got, errs.ErrStoreUnavailable) != tt.store || retryable(tt.err) != tt.retry {
			t.Errorf("%v: classified %v (retryable %v); want store %v, retryable %v", tt.err, got, retryable(tt.err), tt.store, tt.retry)
		}
	}
	if !isUniqueViolation(my(erDupEntry)) || isUniqueViolation(my(1054)) {
		t.Error("isUniqueViolation and 1062")
	}
	var se *errs.StoreError
	if !errors.As(classify(my(1021)), &se) || !se.Full {
		t.Error("ER_DISK_FULL is not a full store")
	}
}

// TestMySQLUnavailableThenRecovers runs a MySQL store on a MariaDB of its
// own, and takes that database away: a lock held past the lock wait
// timeout is retried, then fails as unavailable; a killed database fails
// writes and reads as unavailable, quickly, and the store is writable
// again by itself once the database is back, with what it committed.
func TestMySQLUnavailableThenRecovers(t *testing.T) {
	srv := mariadbtest.Start(t)
	ctx := t.Context()
	root, err := sql.Open("mysql", srv.DSN(""))
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	if _, err := root.ExecContext(ctx, `SET GLOBAL innodb_lock_wait_timeout = 1`); err != nil {
		t.Fatal(err)
	}
	name := srv.NewDatabaseName(t)
	s, err := OpenMySQL(ctx, srv.URL(name))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var iso, zone, mode string
	isoVar := "transaction_isolation"
	if _, err := root.ExecContext(ctx, `SELECT @@transaction_isolation`); err != nil {
		isoVar = "tx_isolation" // MariaDB before 11.1
	}
	if err := s.r.QueryRowContext(ctx, `SELECT @@SESSION.`+isoVar+`, @@SESSION.time_zone, @@SESSION.sql_mode`).
		Scan(&iso, &zone, &mode); err != nil {
		t.Fatal(err)
	}
	if iso != "READ-COMMITTED" || zone != "+00:00" || !strings.Contains(mode, "STRICT_ALL_TABLES") {
		t.Fatalf("session: isolation %s, time zone %s, sql_mode %s", iso, zone, mode)
	}
	changes := make(chan error, 16)
	s.OnWritable(func(err error) { changes <- err })
	newUser := func(name string) error {
		_, err := s.CreateUser(ctx, auth.User{Username: name, PasswordHash: "x", Roles: []auth.Role{auth.RoleAdmin}})
		return err
	}
	if err := newUser("before"); err != nil {
		t.Fatal(err)
	}

	// holdUsers holds a lock on users' key range until the returned func.
	other, err := sql.Open("mysql", srv.DSN(name))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	holdUsers := func() func() {
		tx, err := other.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.ExecContext(ctx, `SELECT * FROM users FOR UPDATE`); err != nil {
			t.Fatal(err)
		}
		return func() { _ = tx.Rollback() }
	}

	t.Run("lock wait retried", func(t *testing.T) {
		release := holdUsers()
		timer := time.AfterFunc(1500*time.Millisecond, release)
		defer timer.Stop()
		if err := newUser("waited"); err != nil {
			t.Fatalf("a write that waited past one lock wait timeout: %v", err)
		}
	})

	t.Run("lock wait past the retries", func(t *testing.T) {
		release := holdUsers()
		defer release()
		err := newUser("never")
		if !errors.Is(err, errs.ErrStoreUnavailable) || !mysqlErrorIs(err, erLockWaitTimeout) {
			t.Fatalf("a write locked out for good: %v", err)
		}
		release()
		waitChange(t, s, changes, true)
		waitChange(t, s, changes, false) // the probe commits
	})

	t.Run("database killed, then back", func(t *testing.T) {
		srv.Kill()
		start := time.Now()
		if err := newUser("lost"); !errors.Is(err, errs.ErrStoreUnavailable) {
			t.Fatalf("write with the database down: %v", err)
		}
		if _, err := s.UserByName(ctx, "before"); !errors.Is(err, errs.ErrStoreUnavailable) {
			t.Fatalf("read with the database down: %v", err)
		}
		if _, err := s.ListAuditEvents(ctx, audit.Query{}); !errors.Is(err, errs.ErrStoreUnavailable) {
			t.Fatalf("list with the database down: %v", err)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("failing took %v with the database down", d)
		}
		waitChange(t, s, changes, true)
		if err := s.Writable(); !errors.Is(err, errs.ErrStoreUnavailable) {
			t.Fatalf("Writable() = %v with the database down", err)
		}
		if err := srv.Restart(); err != nil {
			t.Fatal(err)
		}
		waitChange(t, s, changes, false)
		if err := newUser("after"); err != nil {
			t.Fatalf("write once the database is back: %v", err)
		}
		for _, n := range []string{"before", "waited", "after"} {
			if _, err := s.UserByName(ctx, n); err != nil {
				t.Errorf("user %s once the database is back: %v", n, err)
			}
		}
		if _, err := s.UserByName(ctx, "never"); !errors.Is(err, errs.ErrNotFound) {
			t.Errorf("the write that failed was committed: %v", err)
		}
	})

	t.Run("database frozen, then thawed", func(t *testing.T) {
		// A store of its own, whose reads and writes on a connection give
		// up after a second (the default is mysqlIOTimeout).
		fs, err := OpenMySQL(ctx, srv.URL(name)+"?readTimeout=1s&writeTimeout=1s")
		if err != nil {
			t.Fatal(err)
		}
		defer fs.Close()
		fchanges := make(chan error, 16)
		fs.OnWritable(func(err error) { fchanges <- err })
		if err := srv.Signal(syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		thawed := false
		thaw := func() {
			if !thawed {
				thawed = true
				if err := srv.Signal(syscall.SIGCONT); err != nil {
					t.Error(err)
				}
			}
		}
		defer thaw()
		start := time.Now()
		if _, err := fs.CreateUser(ctx, auth.User{Username: "frozen", PasswordHash: "x"}); !errors.Is(err, errs.ErrStoreUnavailable) {
			t.Fatalf("write with the database frozen: %v", err)
		}
		if _, err := fs.UserByName(ctx, "before"); !errors.Is(err, errs.ErrStoreUnavailable) {
			t.Fatalf("read with the database frozen: %v", err)
		}
		if d := time.Since(start); d > 10*time.Second {
			t.Errorf("failing took %v with the database frozen (1s timeouts)", d)
		}
		waitChange(t, fs, fchanges, true)
		thaw()
		waitChange(t, fs, fchanges, false)
		if _, err := fs.UserByName(ctx, "before"); err != nil {
			t.Fatalf("read once thawed: %v", err)
		}
	})
}

// waitChange waits for the store's watcher to say unwritable (or writable).
func waitChange(t *testing.T, s *Store, changes chan error, unwritable bool) {
	t.Helper()
	timeout := time.NewTimer(4 * probeRetry)
	defer timeout.Stop()
	select {
	case err := <-changes:
		if (err != nil) != unwritable {
			t.Fatalf("watcher told %v, want unwritable %v", err, unwritable)
		}
	case <-timeout.C:
		t.Fatalf("watcher not told (want unwritable %v): Writable() = %v", unwritable, s.Writable())
	}
}
