package store

import (
	"context"
	"database/sql"
	"errors"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	_ "github.com/go-sql-driver/mysql" // the "mysql" database/sql driver
	"github.com/pressly/goose/v3"

	"agentplane/internal/mariadbtest"
)

// TestMigrateMariaDB: the MySQL migrations on a real MariaDB, under the
// migration lock.
func TestMigrateMariaDB(t *testing.T) {
	srv := mariadbtest.Start(t)
	open := func(t *testing.T, dsn string) *sql.DB {
		db, err := sql.Open("mysql", dsn)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		return db
	}
	want := allVersions(t, dialectMySQL)

	t.Run("fresh, then again", func(t *testing.T) {
		db := open(t, srv.NewDatabase(t))
		migrateTwice(t, db, dialectMySQL, describeMySQL)
		free := queryRows(t, db, `SELECT owner FROM `+lockTable)
		if !slices.Equal(free, []string{""}) {
			t.Fatalf("lock row after the migrations: %q", free)
		}
		// The same tables, columns, types, indexes and foreign keys as SQLite's.
		lite := openSQLite(t, filepath.Join(t.TempDir(), FileName))
		if err := migrate(t.Context(), lite, dialectSQLite); err != nil {
			t.Fatal(err)
		}
		sameSchema(t, "sqlite", describeSQLiteLikeMySQL(t, lite), "mysql", describeMySQL(t, db))
	})

	t.Run("died mid-baseline: the file runs again", func(t *testing.T) {
		// MySQL commits each DDL by itself: a server that died in the
		// baseline left some tables and no version (and nothing of the
		// later migrations, which it never reached).
		db := open(t, srv.NewDatabase(t))
		migrateUpTo(t, db, dialectMySQL, baselineVersion)
		for _, q := range []string{`DROP TABLE agent_certs`, `DELETE FROM store_probe`,
			`DELETE FROM ` + versionTable + ` WHERE version_id >= 1`} {
			if _, err := db.ExecContext(t.Context(), q); err != nil {
				t.Fatal(q, err)
			}
		}
		if err := migrate(t.Context(), db, dialectMySQL); err != nil {
			t.Fatal(err)
		}
		if got := gooseVersions(t, db); !slices.Equal(got, want) {
			t.Fatalf("versions %v, want %v", got, want)
		}
		if ok, err := mysqlHasTable(t.Context(), db, "agent_certs"); err != nil || !ok {
			t.Fatalf("agent_certs after the second run: %v %v", ok, err)
		}
		if got := queryRows(t, db, `SELECT id, at FROM store_probe`); !slices.Equal(got, []string{"1 0"}) {
			t.Fatalf("store_probe after the second run: %q", got)
		}
	})

	t.Run("two servers at once", func(t *testing.T) {
		dsn := srv.NewDatabase(t)
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		defer cancel()
		var wg sync.WaitGroup
		errs := make([]error, 2)
		for i := range errs {
			db := open(t, dsn)
			wg.Go(func() { errs[i] = migrate(ctx, db, dialectMySQL) })
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			t.Fatal(err)
		}
		if got := gooseVersions(t, open(t, dsn)); !slices.Equal(got, want) {
			t.Fatalf("versions %v, want %v (each applied once)", got, want)
		}
		// Each took and freed the lock in turn (a take and a free each bump it).
		var g int64
		if err := open(t, dsn).QueryRowContext(t.Context(), `SELECT generation FROM `+lockTable).Scan(&g); err != nil || g < 4 {
			t.Fatalf("lock generation %d (%v): want both migrators through the lock", g, err)
		}
	})

	t.Run("holder died: its lease expires", func(t *testing.T) {
		db := open(t, srv.NewDatabase(t))
		holdLock(t, db, "dead", "UTC_TIMESTAMP(6) - INTERVAL 1 SECOND")
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		if err := migrate(ctx, db, dialectMySQL); err != nil {
			t.Fatal(err)
		}
		if got := gooseVersions(t, db); !slices.Equal(got, want) {
			t.Fatalf("versions %v, want %v", got, want)
		}
	})

	t.Run("holder alive: wait until ctx ends", func(t *testing.T) {
		db := open(t, srv.NewDatabase(t))
		holdLock(t, db, "alive", "UTC_TIMESTAMP(6) + INTERVAL 1 HOUR")
		ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
		defer cancel()
		err := migrate(ctx, db, dialectMySQL)
		if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "held by alive") {
			t.Fatalf("migrating while another holds the lock: %v", err)
		}
		if ok, err := mysqlHasTable(t.Context(), db, "hosts"); err != nil || ok {
			t.Fatalf("hosts created without the lock: %v %v", ok, err)
		}
	})

	t.Run("renewed while held", func(t *testing.T) {
		db := open(t, srv.NewDatabase(t))
		l := newMigrationLock(lockOptions{lease: 300 * time.Millisecond, onLost: func(err error) { t.Errorf("lost: %v", err) }})
		if err := l.Lock(t.Context(), db); err != nil {
			t.Fatal(err)
		}
		// Four renewals: past the first lease, which only they extended.
		gen := func() (g int64) {
			if err := db.QueryRowContext(t.Context(), `SELECT generation FROM `+lockTable).Scan(&g); err != nil {
				t.Fatal(err)
			}
			return g
		}
		for g0, deadline := gen(), time.Now().Add(10*time.Second); gen() < g0+4; {
			if time.Now().After(deadline) {
				t.Fatal("the lease was not renewed")
			}
			time.Sleep(20 * time.Millisecond) // polling, with the deadline above
		}
		other := newMigrationLock(lockOptions{lease: time.Second})
		ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
		defer cancel()
		if err := other.Lock(ctx, db); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("a second holder while the first renews: %v", err)
		}
		if err := l.Unlock(t.Context(), db); err != nil {
			t.Fatal(err)
		}
		if err := other.Lock(t.Context(), db); err != nil {
			t.Fatal(err)
		}
		if err := other.Unlock(t.Context(), db); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("lost while held", func(t *testing.T) {
		db := open(t, srv.NewDatabase(t))
		lost := make(chan error, 1)
		l := newMigrationLock(lockOptions{lease: 300 * time.Millisecond, onLost: func(err error) { lost <- err }})
		if err := l.Lock(t.Context(), db); err != nil {
			t.Fatal(err)
		}
		if _, err := db.ExecContext(t.Context(), `UPDATE `+lockTable+` SET owner = 'thief', generation = generation + 1`); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-lost:
			if !errors.Is(err, errLockLost) {
				t.Fatalf("lost with %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("the lost lease was not reported")
		}
		if err := l.Unlock(t.Context(), db); !errors.Is(err, errLockLost) {
			t.Fatalf("unlock of a lost lock: %v", err)
		}
	})
}

// holdLock makes the migration lock held by owner until expires (SQL).
func holdLock(t *testing.T, db *sql.DB, owner, expires string) {
	t.Helper()
	if err := ensureLockRow(t.Context(), db); err != nil {
		t.Fatal(err)
	}
	if _, err := db.ExecContext(t.Context(), `UPDATE `+lockTable+` SET owner = ?, generation = generation + 1,
		expires_at = `+expires, owner); err != nil {
		t.Fatal(err)
	}
}

func mysqlHasTable(ctx context.Context, db *sql.DB, name string) (bool, error) {
	var n int
	err := db.QueryRowContext(ctx, `SELECT COUNT(*) FROM information_schema.tables
		WHERE table_schema = DATABASE() AND table_name = ?`, name).Scan(&n)
	return n > 0, err
}

// describeMySQL describes the application's tables as describeSQLiteLikeMySQL
// does: per table, its columns (name, type, nullability, in order), its
// indexes (unique or not, and columns; names differ between the dialects)
// and its foreign keys.
func describeMySQL(t *testing.T, db *sql.DB) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	skip := map[string]bool{lockTable: true, versionTable: true}
	for _, r := range queryRows(t, db, `SELECT table_name, column_name, column_type, is_nullable
		FROM information_schema.columns WHERE table_schema = DATABASE() ORDER BY table_name, ordinal_position`) {
		f := strings.Fields(r)
		if !skip[f[0]] {
			out[f[0]+" columns"] = append(out[f[0]+" columns"], f[1]+" "+normType(f[2])+" "+strings.ToLower(f[3]))
		}
	}
	idx := map[string]string{}
	var keys []string
	for _, r := range queryRows(t, db, `SELECT table_name, index_name, non_unique, column_name
		FROM information_schema.statistics WHERE table_schema = DATABASE() ORDER BY table_name, index_name, seq_in_index`) {
		f := strings.Fields(r)
		k := f[0] + " " + f[1] + " " + f[2]
		if _, ok := idx[k]; !ok {
			keys = append(keys, k)
			idx[k] = f[3]
		} else {
			idx[k] += "," + f[3]
		}
	}
	for _, k := range keys {
		f := strings.Fields(k)
		if !skip[f[0]] {
			out[f[0]+" indexes"] = append(out[f[0]+" indexes"], uniq(f[2] == "0")+idx[k])
		}
	}
	for _, r := range queryRows(t, db, `SELECT table_name, column_name, referenced_table_name, referenced_column_name
		FROM information_schema.key_column_usage WHERE table_schema = DATABASE() AND referenced_table_name IS NOT NULL
		ORDER BY table_name, column_name`) {
		f := strings.Fields(r)
		out[f[0]+" foreign keys"] = append(out[f[0]+" foreign keys"], f[1]+" "+f[2]+" "+f[3])
	}
	for k, v := range out {
		if strings.HasSuffix(k, " indexes") {
			slices.Sort(v)
		}
	}
	return out
}

// describeSQLiteLikeMySQL describes a SQLite schema in describeMySQL's
// terms: INTEGER keys are BIGINT, a primary key is a unique index, TEXT
// stands for MySQL's TEXT and MEDIUMTEXT.
func describeSQLiteLikeMySQL(t *testing.T, db *sql.DB) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	skip := map[string]bool{"sqlite_sequence": true, "schema_version": true, versionTable: true}
	for _, tb := range queryRows(t, db, `SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name`) {
		if skip[tb] {
			continue
		}
		var pk []string
		for _, r := range queryRows(t, db, `SELECT name, type, "notnull", pk FROM pragma_table_info(?) ORDER BY cid`, tb) {
			f := strings.Fields(r)
			null := "yes"
			if f[2] == "1" || f[3] != "0" {
				null = "no"
			}
			out[tb+" columns"] = append(out[tb+" columns"], f[0]+" "+normType(f[1])+" "+null)
			if f[3] != "0" {
				pk = append(pk, f[0])
			}
		}
		idx := []string{uniq(true) + strings.Join(pk, ",")}
		for _, r := range queryRows(t, db, `SELECT name, "unique", origin FROM pragma_index_list(?)`, tb) {
			f := strings.Fields(r)
			if f[2] == "pk" {
				continue // the primary key, above
			}
			cols := queryRows(t, db, `SELECT name FROM pragma_index_info(?) ORDER BY seqno`, f[0])
			idx = append(idx, uniq(f[1] == "1")+strings.Join(cols, ","))
		}
		slices.Sort(idx)
		out[tb+" indexes"] = idx
		if fks := queryRows(t, db, `SELECT "from", "table", "to" FROM pragma_foreign_key_list(?) ORDER BY "from"`, tb); len(fks) > 0 {
			out[tb+" foreign keys"] = fks
		}
	}
	return out
}

func uniq(u bool) string {
	if u {
		return "unique "
	}
	return ""
}

var intWidth = regexp.MustCompile(`^(bigint|int)\(\d+\)$`)

// normType is a column type in words common to both dialects.
func normType(s string) string {
	s = strings.ToLower(s)
	s = intWidth.ReplaceAllString(s, "$1")
	switch s {
	case "integer":
		return "bigint"
	case "mediumtext":
		return "text"
	}
	return s
}

// migrateUpTo applies d's migrations up to version only, as a server that
// stopped there left the database.
func migrateUpTo(t *testing.T, db *sql.DB, d dialect, version int64) {
	t.Helper()
	gd, err := d.goose()
	if err != nil {
		t.Fatal(err)
	}
	fsys, err := d.migrationsFS()
	if err != nil {
		t.Fatal(err)
	}
	p, err := goose.NewProvider(gd, db, fsys, goose.WithDisableGlobalRegistry(true))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.UpTo(t.Context(), version); err != nil {
		t.Fatal(err)
	}
}
