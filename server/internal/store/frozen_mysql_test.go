package store

import (
	"context"
	"testing"
	"time"

	"agentplane/internal/mariadbtest"
	"agentplane/server/internal/auth"
)

// TestMySQLFrozenWriterReleasesItsLocks: a server frozen (SIGSTOP, a
// paused VM) or cut off in the middle of a write transaction holds that
// transaction's row locks for as long as its session lives. Another server
// on the same database (a replica that adopts the frozen one's tasks)
// writing the same rows gets them once the database has closed the silent
// session (mysqlTxIdleTimeout), well within its own statement's
// mysqlIOTimeout, instead of failing on them until the frozen one thaws;
// and the frozen one's transaction, rolled back with its session, commits
// nothing when it thaws.
func TestMySQLFrozenWriterReleasesItsLocks(t *testing.T) {
	srv := mariadbtest.Start(t)
	ctx := t.Context()
	name := srv.NewDatabaseName(t)
	frozen, err := OpenMySQL(ctx, srv.URL(name))
	if err != nil {
		t.Fatal(err)
	}
	defer frozen.Close()
	other, err := OpenMySQL(ctx, srv.URL(name))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if _, err := frozen.CreateUser(ctx, auth.User{Username: "u", PasswordHash: "before", Roles: []auth.Role{auth.RoleAdmin}}); err != nil {
		t.Fatal(err)
	}

	// The frozen server's write: it updates the row, then is silent in its
	// transaction (its writer goroutine stands for the stopped process)
	// until thawed, then goes on with a second statement and commits.
	locked, thaw := make(chan struct{}), make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- frozen.tx(ctx, func(ctx context.Context, tx *wtx) error {
			if _, err := tx.ExecContext(ctx, `UPDATE users SET password_hash = 'frozen' WHERE username = 'u'`); err != nil {
				return err
			}
			close(locked)
			<-thaw
			_, err := tx.ExecContext(ctx, `UPDATE users SET roles = roles WHERE username = 'u'`)
			return err
		})
	}()
	thawed := false
	defer func() {
		if !thawed {
			close(thaw)
		}
	}()
	select {
	case <-locked:
	case <-time.After(10 * time.Second):
		t.Fatal("the frozen server's write did not take its lock")
	}

	start := time.Now()
	if _, err := other.exec(ctx, `UPDATE users SET password_hash = 'other' WHERE username = 'u'`); err != nil {
		t.Fatalf("a write on the rows of a frozen server's transaction, after %s: %v", time.Since(start).Round(time.Millisecond), err)
	}
	waited := time.Since(start)
	t.Logf("the other server's write waited %s for the frozen server's lock", waited.Round(time.Millisecond))
	if waited > mysqlTxIdleTimeout+2*time.Second {
		t.Errorf("a write waited %s for the locks of a frozen server (its session's idle bound is %s)", waited, mysqlTxIdleTimeout)
	}

	close(thaw)
	thawed = true
	select {
	case err := <-done:
		if err == nil {
			t.Error("the frozen server's transaction committed after its session was closed")
		}
	case <-time.After(2 * mysqlIOTimeout):
		t.Fatal("the thawed server's write did not end")
	}
	u, err := other.UserByName(ctx, "u")
	if err != nil {
		t.Fatal(err)
	}
	if u.PasswordHash != "other" {
		t.Errorf("password_hash %q, want the other server's %q", u.PasswordHash, "other")
	}
	// The thawed server writes again on a fresh session.
	if _, err := frozen.exec(ctx, `UPDATE users SET password_hash = 'thawed' WHERE username = 'u'`); err != nil {
		t.Errorf("a write of the thawed server: %v", err)
	}
}
