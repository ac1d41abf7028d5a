package store

import (
	"database/sql"
	"fmt"
	"io/fs"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// legacyDataDir makes dir's database as a server before goose did: the
// legacy migrations only, counted in schema_version.
func legacyDataDir(t *testing.T, dir string) {
	t.Helper()
	db := openSQLite(t, filepath.Join(dir, FileName))
	tx, err := db.BeginTx(t.Context(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback() }()
	if err := migrateLegacy(t.Context(), tx); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
}

func openSQLite(t *testing.T, path string) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=foreign_keys(1)")
	if err != nil {
		t.Fatal(err)
	}
	db.SetMaxOpenConns(1)
	t.Cleanup(func() { db.Close() })
	return db
}

// gooseVersions are the versions recorded in goose's table, in order of
// recording.
func gooseVersions(t *testing.T, db *sql.DB) []int64 {
	t.Helper()
	rows, err := db.QueryContext(t.Context(), `SELECT version_id FROM `+versionTable+` ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var vs []int64
	for rows.Next() {
		var v int64
		if err := rows.Scan(&v); err != nil {
			t.Fatal(err)
		}
		vs = append(vs, v)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return vs
}

// migrationVersions lists d's migration files, in order.
func migrationVersions(t *testing.T, d dialect) []string {
	t.Helper()
	fsys, err := d.migrationsFS()
	if err != nil {
		t.Fatal(err)
	}
	names, err := fs.Glob(fsys, "*.sql")
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(names)
	return names
}

// TestDialectsHaveTheSameMigrations: every migration exists in both
// dialects, with the same version and name, so that no change reaches one
// dialect only.
func TestDialectsHaveTheSameMigrations(t *testing.T) {
	lite, my := migrationVersions(t, dialectSQLite), migrationVersions(t, dialectMySQL)
	if len(lite) == 0 || !slices.Equal(lite, my) {
		t.Fatalf("sqlite migrations %v, mysql migrations %v", lite, my)
	}
	if lite[0] != fmt.Sprintf("%05d_baseline.sql", baselineVersion) {
		t.Fatalf("first migration %s, want the baseline at version %d", lite[0], baselineVersion)
	}
	for i, n := range lite {
		var v int
		if _, err := fmt.Sscanf(n, "%05d_", &v); err != nil || v != i+1 {
			t.Fatalf("migration %s: want version %05d (consecutive, NNNNN_name.sql)", n, i+1)
		}
	}
}

// TestMigrateFreshSQLite: a new database gets the goose migrations (and no
// schema_version); migrating again changes nothing.
func TestMigrateFreshSQLite(t *testing.T) {
	SkipOnMySQL(t, "SQLite's migrations (MariaDB's: TestMigrateMariaDB)")
	db := openSQLite(t, filepath.Join(t.TempDir(), FileName))
	migrateTwice(t, db, dialectSQLite, describeSQLite)
	if legacy, err := sqliteHasTable(t.Context(), db, "schema_version"); err != nil || legacy {
		t.Fatalf("schema_version in a new database: %v, %v", legacy, err)
	}
}

// allVersions are the versions goose records in a database migrated by
// this server: 0 (goose's own), then each migration's.
func allVersions(t *testing.T, d dialect) []int64 {
	t.Helper()
	want := []int64{0}
	for i := range migrationVersions(t, d) {
		want = append(want, int64(i+1))
	}
	return want
}

// migrateTwice migrates the new database db, checks that every version is
// recorded once, then migrates it again and checks that nothing changed.
func migrateTwice(t *testing.T, db *sql.DB, d dialect, describe func(*testing.T, *sql.DB) map[string][]string) {
	t.Helper()
	want := allVersions(t, d)
	if err := migrate(t.Context(), db, d); err != nil {
		t.Fatal(err)
	}
	if got := gooseVersions(t, db); !slices.Equal(got, want) {
		t.Fatalf("versions %v, want %v", got, want)
	}
	before := describe(t, db)
	if err := migrate(t.Context(), db, d); err != nil {
		t.Fatal(err)
	}
	if got := gooseVersions(t, db); !slices.Equal(got, want) {
		t.Fatalf("versions after a second migration %v, want %v", got, want)
	}
	if after := describe(t, db); !reflect.DeepEqual(before, after) {
		t.Fatalf("the second migration changed the schema:\n%v\n%v", before, after)
	}
}

// TestBaselineIsTheLegacySchema: a legacy database adopted at the baseline
// and a new one have the same tables, columns, indexes, foreign keys and
// seeded rows, and the same goose versions.
func TestBaselineIsTheLegacySchema(t *testing.T) {
	SkipOnMySQL(t, "a legacy SQLite data dir")
	dir := t.TempDir()
	legacyDataDir(t, dir)
	old := openSQLite(t, filepath.Join(dir, FileName))
	if err := migrate(t.Context(), old, dialectSQLite); err != nil {
		t.Fatal(err)
	}
	fresh := openSQLite(t, filepath.Join(t.TempDir(), FileName))
	if err := migrate(t.Context(), fresh, dialectSQLite); err != nil {
		t.Fatal(err)
	}
	sameSchema(t, "legacy", describeSQLite(t, old), "baseline", describeSQLite(t, fresh))
	if av, bv := gooseVersions(t, old), gooseVersions(t, fresh); !slices.Equal(av, bv) {
		t.Fatalf("goose versions: legacy %v, new %v", av, bv)
	}
	// Adopting again records nothing more.
	if err := migrate(t.Context(), old, dialectSQLite); err != nil {
		t.Fatal(err)
	}
	if av, bv := gooseVersions(t, old), gooseVersions(t, fresh); !slices.Equal(av, bv) {
		t.Fatalf("goose versions after a second start: legacy %v, new %v", av, bv)
	}
}

// TestNewerDatabaseRefused: a database migrated by a newer server is not
// opened by an older one.
func TestNewerDatabaseRefused(t *testing.T) {
	SkipOnMySQL(t, "SQLite's migrations")
	db := openSQLite(t, filepath.Join(t.TempDir(), FileName))
	if err := migrate(t.Context(), db, dialectSQLite); err != nil {
		t.Fatal(err)
	}
	if _, err := db.ExecContext(t.Context(), `INSERT INTO `+versionTable+` (version_id, is_applied) VALUES (99999, 1)`); err != nil {
		t.Fatal(err)
	}
	if err := migrate(t.Context(), db, dialectSQLite); err == nil || !strings.Contains(err.Error(), "newer than this server") {
		t.Fatalf("migrating a newer database: %v", err)
	}
}

// sameSchema reports each difference between two schema descriptions.
func sameSchema(t *testing.T, aName string, a map[string][]string, bName string, b map[string][]string) {
	t.Helper()
	for k := range a {
		if !reflect.DeepEqual(a[k], b[k]) {
			t.Errorf("%s:\n %-8s %q\n %-8s %q", k, aName, a[k], bName, b[k])
		}
	}
	for k := range b {
		if _, ok := a[k]; !ok {
			t.Errorf("%s only in %s: %q", k, bName, b[k])
		}
	}
}

// describeSQLite describes the application's schema: per table, its
// columns, indexes and foreign keys, and the rows of the seeded tables.
func describeSQLite(t *testing.T, db *sql.DB) map[string][]string {
	t.Helper()
	skip := map[string]bool{"sqlite_sequence": true, "schema_version": true, versionTable: true}
	tables := queryRows(t, db, `SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name`)
	out := map[string][]string{}
	for _, tb := range tables {
		if skip[tb] {
			continue
		}
		out[tb+" columns"] = queryRows(t, db, `SELECT name, type, "notnull", COALESCE(dflt_value, 'NULL'), pk FROM pragma_table_info(?)`, tb)
		out[tb+" foreign keys"] = queryRows(t, db, `SELECT "from", "table", "to" FROM pragma_foreign_key_list(?)`, tb)
		var idx []string
		for _, r := range queryRows(t, db, `SELECT name, "unique", origin FROM pragma_index_list(?)`, tb) {
			name := strings.Fields(r)[0]
			idx = append(idx, r+" on "+strings.Join(queryRows(t, db, `SELECT name FROM pragma_index_info(?) ORDER BY seqno`, name), ","))
		}
		slices.Sort(idx)
		out[tb+" indexes"] = idx
	}
	for _, tb := range []string{"id_sequences", "store_probe"} {
		out[tb+" rows"] = queryRows(t, db, `SELECT * FROM `+tb+` ORDER BY 1`)
	}
	return out
}

// queryRows returns each row of q as its columns joined by spaces (a
// NULL as the empty string).
func queryRows(t *testing.T, db *sql.DB, q string, args ...any) []string {
	t.Helper()
	rows, err := db.QueryContext(t.Context(), q, args...)
	if err != nil {
		t.Fatal(q, err)
	}
	defer rows.Close()
	cols, err := rows.Columns()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for rows.Next() {
		vals := make([]sql.NullString, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			t.Fatal(err)
		}
		parts := make([]string, len(vals))
		for i, v := range vals {
			parts[i] = v.String
		}
		out = append(out, strings.Join(parts, " "))
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}
