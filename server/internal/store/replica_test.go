package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"agentplane/internal/mariadbtest"
	"agentplane/server/internal/errs"
	"agentplane/server/internal/replica"
)

// registry is the replicas registry of one dialect, as a test drives it:
// the Store's methods on SQLite, the same functions in transactions of a
// bare *sql.DB on MariaDB.
type registry struct {
	d          dialect
	tx         func(ctx context.Context, fn func(ctx context.Context, q querier) error) error
	read       querier
	register   func(ctx context.Context, r replica.Registration, lease time.Duration) ([]string, error)
	heartbeat  func(ctx context.Context, id, inc string) error
	deregister func(ctx context.Context, id, inc string) error
}

func sqliteRegistry(t *testing.T) registry {
	s, err := Open(t.Context(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	r := registry{
		d: s.dialect, read: s.r.DB, heartbeat: s.HeartbeatReplica, deregister: s.DeregisterReplica,
		tx: func(ctx context.Context, fn func(ctx context.Context, q querier) error) error {
			return s.tx(ctx, func(ctx context.Context, tx *wtx) error { return fn(ctx, tx) })
		},
	}
	// The shared registration, as a store that does not hold its database
	// alone runs it (Store.RegisterReplica knows SQLite's its own).
	r.register = func(ctx context.Context, reg replica.Registration, lease time.Duration) (replaced []string, err error) {
		err = r.tx(ctx, func(ctx context.Context, q querier) error {
			replaced, err = registerReplica(ctx, q, s.dialect, reg, lease, false)
			return err
		})
		return replaced, err
	}
	return r
}

func mysqlRegistry(t *testing.T, srv *mariadbtest.Server) registry {
	db, err := sql.Open("mysql", srv.NewDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	if err := migrate(t.Context(), db, dialectMySQL); err != nil {
		t.Fatal(err)
	}
	r := registry{d: dialectMySQL, read: db}
	r.tx = func(ctx context.Context, fn func(ctx context.Context, q querier) error) error {
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		defer func() { _ = tx.Rollback() }() // after a commit, ErrTxDone: nothing to undo
		if err := fn(ctx, tx); err != nil {
			return err
		}
		return tx.Commit()
	}
	r.register = func(ctx context.Context, reg replica.Registration, lease time.Duration) (replaced []string, err error) {
		err = r.tx(ctx, func(ctx context.Context, q querier) error {
			replaced, err = registerReplica(ctx, q, dialectMySQL, reg, lease, false)
			return err
		})
		return replaced, err
	}
	// One autocommitted statement each: no transaction's round trips.
	r.heartbeat = func(ctx context.Context, id, inc string) error {
		return heartbeatReplica(ctx, db, dialectMySQL, id, inc)
	}
	r.deregister = func(ctx context.Context, id, inc string) error { return deregisterReplica(ctx, db, id, inc) }
	return r
}

func (r registry) list(t *testing.T, lease time.Duration) []replica.Info {
	t.Helper()
	out, err := listReplicas(t.Context(), r.read, r.d, lease)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// age sets id's last heartbeat to d ago, on the database's clock.
func (r registry) age(t *testing.T, id string, d time.Duration) {
	t.Helper()
	err := r.tx(t.Context(), func(ctx context.Context, q querier) error {
		_, err := q.ExecContext(ctx, `UPDATE replicas SET heartbeat_at = `+r.d.ago()+` WHERE id = ?`, d.Microseconds(), id)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

func reg(id, inc string, shared ...replica.Shared) replica.Registration {
	return replica.Registration{ID: id, Addr: "10.0.0.1:7070", Version: "v1", Incarnation: inc, Shared: shared}
}

const testLease = time.Minute

func TestReplicaRegistrySQLite(t *testing.T) {
	testRegistry(t, func(t *testing.T) registry { return sqliteRegistry(t) })
}

func TestReplicaRegistryMariaDB(t *testing.T) {
	srv := mariadbtest.Start(t)
	testRegistry(t, func(t *testing.T) registry { return mysqlRegistry(t, srv) })
}

// TestReplicaRegistrySQLiteAlone: the Store holding its SQLite data dir
// alone (the flock) takes over the rows of other ids, live or not, and
// records its secrets' fingerprints whatever they were.
func TestReplicaRegistrySQLiteAlone(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(t.Context(), dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ca := func(fp string) replica.Shared { return replica.Shared{Name: "ca.sha256", Fingerprint: fp} }
	if _, err := s.RegisterReplica(t.Context(), reg("a:7070", "i1", ca("AA")), testLease); err != nil {
		t.Fatal(err)
	}
	// a was killed; the server comes back on another port, with another CA.
	replaced, err := s.RegisterReplica(t.Context(), reg("a:7071", "i2", ca("BB")), testLease)
	if err != nil || len(replaced) != 1 {
		t.Fatalf("registering after a kill, on another port: %v %v", replaced, err)
	}
	l, err := s.ListReplicas(t.Context(), testLease)
	if err != nil || len(l) != 1 || l[0].ID != "a:7071" || !l[0].Live {
		t.Fatalf("registry %+v, %v", l, err)
	}
}

func testRegistry(t *testing.T, newRegistry func(t *testing.T) registry) {
	t.Run("register, heartbeat, deregister", func(t *testing.T) {
		r := newRegistry(t)
		if _, err := r.register(t.Context(), reg("a:7070", "i1"), testLease); err != nil {
			t.Fatal(err)
		}
		l := r.list(t, testLease)
		if len(l) != 1 || l[0].ID != "a:7070" || l[0].Addr != "10.0.0.1:7070" || l[0].Version != "v1" || !l[0].Live ||
			l[0].Started.IsZero() || l[0].Heartbeat.Before(l[0].Started) || l[0].Age < 0 || l[0].Age > 10*time.Second {
			t.Fatalf("after registering: %+v", l)
		}
		if d := time.Since(l[0].Heartbeat); d < -time.Minute || d > time.Minute {
			t.Fatalf("heartbeat %s is not UTC now (%s off)", l[0].Heartbeat, d)
		}
		before := l[0].Heartbeat
		r.age(t, "a:7070", time.Second)
		if err := r.heartbeat(t.Context(), "a:7070", "i1"); err != nil {
			t.Fatal(err)
		}
		if l := r.list(t, testLease); !l[0].Heartbeat.After(l[0].Started) || l[0].Heartbeat.Before(before) {
			t.Fatalf("the heartbeat did not move heartbeat_at: %+v (before %s)", l[0], before)
		}
		if err := r.deregister(t.Context(), "a:7070", "i1"); err != nil {
			t.Fatal(err)
		}
		if l := r.list(t, testLease); len(l) != 0 {
			t.Fatalf("after deregistering: %+v", l)
		}
	})

	t.Run("own id again after a restart", func(t *testing.T) {
		r := newRegistry(t)
		if _, err := r.register(t.Context(), reg("a:7070", "i1"), testLease); err != nil {
			t.Fatal(err)
		}
		// The process died without deregistering; its row is live.
		if _, err := r.register(t.Context(), reg("a:7070", "i2"), testLease); err != nil {
			t.Fatalf("re-registering the own id: %v", err)
		}
		if l := r.list(t, testLease); len(l) != 1 || !l[0].Live {
			t.Fatalf("after the restart: %+v", l)
		}
		// The old incarnation's heartbeat and deregistration find it taken.
		if err := r.heartbeat(t.Context(), "a:7070", "i1"); !errors.Is(err, errs.ErrConflict) {
			t.Fatalf("old incarnation's heartbeat: %v", err)
		}
		if err := r.deregister(t.Context(), "a:7070", "i1"); err != nil {
			t.Fatal(err)
		}
		if err := r.heartbeat(t.Context(), "a:7070", "i2"); err != nil {
			t.Fatalf("the new incarnation's heartbeat: %v", err)
		}
	})

	t.Run("replicas register beside live ones; one past its lease is not live", func(t *testing.T) {
		r := newRegistry(t)
		if _, err := r.register(t.Context(), reg("a:7070", "i1"), testLease); err != nil {
			t.Fatal(err)
		}
		if _, err := r.register(t.Context(), reg("b:7070", "i2"), testLease); err != nil {
			t.Fatalf("registering beside a live replica: %v", err)
		}
		if l := r.list(t, testLease); len(l) != 2 || !l[0].Live || !l[1].Live {
			t.Fatalf("a and b live: %+v", l)
		}
		// Past its lease on the database's clock: not live.
		r.age(t, "a:7070", testLease+time.Second)
		if l := r.list(t, testLease); len(l) != 2 || l[0].Live || l[0].Age < testLease || !l[1].Live {
			t.Fatalf("a dead, b live: %+v", l)
		}
	})

	t.Run("several at once: all register", func(t *testing.T) {
		r := newRegistry(t)
		const n = 6
		results := make([]error, n)
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range n {
			wg.Go(func() {
				<-start
				_, results[i] = r.register(t.Context(), reg(fmt.Sprintf("r%d:7070", i), fmt.Sprint("i", i)), testLease)
			})
		}
		close(start)
		wg.Wait()
		for _, err := range results {
			if err != nil {
				t.Errorf("a registration: %v", err)
			}
		}
		if l := r.list(t, testLease); len(l) != n {
			t.Fatalf("registry %+v: %v", l, results)
		}
	})

	t.Run("heartbeat finds its row gone", func(t *testing.T) {
		r := newRegistry(t)
		if _, err := r.register(t.Context(), reg("a:7070", "i1"), testLease); err != nil {
			t.Fatal(err)
		}
		err := r.tx(t.Context(), func(ctx context.Context, q querier) error {
			_, err := q.ExecContext(ctx, `DELETE FROM replicas`)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := r.heartbeat(t.Context(), "a:7070", "i1"); !errors.Is(err, errs.ErrNotFound) {
			t.Fatalf("heartbeat without a row: %v", err)
		}
	})

	t.Run("shared secrets", func(t *testing.T) {
		r := newRegistry(t)
		ca := func(fp string) replica.Shared {
			return replica.Shared{Name: "ca.sha256", Fingerprint: fp, Source: "the agent CA (--ca-cert x.crt)"}
		}
		if rep, err := r.register(t.Context(), reg("a:7070", "i1", ca("AA")), testLease); err != nil || len(rep) != 0 {
			t.Fatal(rep, err)
		}
		_, err := r.register(t.Context(), reg("b:7070", "i2", ca("BB")), testLease)
		var mm *replica.MismatchError
		if !errors.As(err, &mm) || !errors.Is(err, errs.ErrConflict) || mm.Stored != "AA" ||
			!strings.Contains(err.Error(), "--ca-cert x.crt") || !strings.Contains(err.Error(), `"a:7070"`) {
			t.Fatalf("a different CA beside a live replica: %v", err)
		}
		// The same one: accepted beside a live replica.
		if _, err := r.register(t.Context(), reg("b:7070", "i2", ca("AA")), testLease); err != nil {
			t.Fatalf("the same CA beside a live replica: %v", err)
		}
		// Alone, a replica records its own.
		if err := r.deregister(t.Context(), "a:7070", "i1"); err != nil {
			t.Fatal(err)
		}
		if rep, err := r.register(t.Context(), reg("b:7070", "i2", ca("BB")), testLease); err != nil || len(rep) != 1 || rep[0] != "ca.sha256" {
			t.Fatalf("alone with a new CA: %v %v", rep, err)
		}
		if _, err := r.register(t.Context(), reg("a:7070", "i3", ca("AA")), testLease); !errors.As(err, &mm) || mm.Stored != "BB" {
			t.Fatalf("the old CA beside b: %v", err)
		}
	})
}
