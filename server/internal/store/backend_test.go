package store

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"agentplane/internal/mariadbtest"
)

// The store's tests are one conformance suite: each opens its store with
// OpenTest, on SQLite by default, or on MariaDB with
// AGENTPLANE_TEST_STORE=mysql (make test-store-mysql). On MariaDB, TestMain
// starts one mariadbd for the package run and each data dir a test names
// gets a database of its own, created at its first open and dropped when
// the test ends; opening the same dir again opens the same database, as it
// would the same SQLite file. Tests about SQLite itself skip on MariaDB
// (SkipOnMySQL).

// BackendEnv selects the store the tests run on: sqlite (default) or mysql.
const BackendEnv = "AGENTPLANE_TEST_STORE"

var testDB struct {
	mysql   bool
	srv     *mariadbtest.Server
	missing string // why there is no mariadbd (mysql only)
	fail    bool   // missing is a failure (mariadbtest.RequireEnv)

	mu  sync.Mutex
	dbs map[string]string // data dir -> database name
}

func TestMain(m *testing.M) { os.Exit(testMain(m)) }

func testMain(m *testing.M) int {
	switch b := os.Getenv(BackendEnv); b {
	case "", "sqlite":
		return m.Run()
	case "mysql":
	default:
		fmt.Fprintf(os.Stderr, "%s=%q: want sqlite or mysql\n", BackendEnv, b)
		return 2
	}
	testDB.mysql, testDB.dbs = true, map[string]string{}
	if testDB.missing, testDB.fail = mariadbtest.Missing(); testDB.missing != "" {
		return m.Run() // each store test skips, or fails, saying why
	}
	dir, err := os.MkdirTemp("", "agentplane-store-mariadb")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	srv, err := mariadbtest.Launch(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	testDB.srv = srv
	code := m.Run()
	if err := srv.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, "stopping mariadbd:", err)
		code = max(code, 1)
	}
	return code
}

// OnMySQLForTest reports whether the suite runs on MariaDB.
func OnMySQLForTest() bool { return testDB.mysql }

// SkipOnMySQL skips a test about SQLite itself when the suite runs on
// MariaDB.
func SkipOnMySQL(t testing.TB, why string) {
	t.Helper()
	if testDB.mysql {
		t.Skip("SQLite only: " + why)
	}
}

// OpenTest opens the store of the test's backend for dataDir: Open's
// SQLite in it, or the MariaDB database that stands for it.
func OpenTest(t testing.TB, dataDir string, opts ...Option) (*Store, error) {
	t.Helper()
	if !testDB.mysql {
		return Open(context.Background(), dataDir, opts...)
	}
	return OpenMySQL(context.Background(), testDB.srv.URL(testDatabase(t, dataDir)), opts...)
}

// RawTestDB opens the test backend's database of dataDir beside the store,
// read-only on SQLite, and closes it when the test ends.
func RawTestDB(t testing.TB, dataDir string) *sql.DB {
	t.Helper()
	var db *sql.DB
	var err error
	if testDB.mysql {
		db, err = sql.Open("mysql", testDB.srv.DSN(testDatabase(t, dataDir)))
	} else {
		db, err = sql.Open("sqlite", "file:"+filepath.Join(dataDir, FileName)+"?mode=ro")
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// testDatabase is the MariaDB database of dataDir, created at its first
// use (and dropped when t ends).
func testDatabase(t testing.TB, dataDir string) string {
	t.Helper()
	if testDB.srv == nil {
		if testDB.fail {
			t.Fatal(testDB.missing)
		}
		t.Skip(testDB.missing)
	}
	testDB.mu.Lock()
	defer testDB.mu.Unlock()
	name, ok := testDB.dbs[dataDir]
	if !ok {
		name = testDB.srv.NewDatabaseName(t)
		testDB.dbs[dataDir] = name
	}
	return name
}
