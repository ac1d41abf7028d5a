package store

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"

	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/database"
)

// dialect names the SQL a database speaks; each has its own directory of
// migrations (migrations/<dialect>), with the same versions in both.
type dialect string

const (
	dialectSQLite dialect = "sqlite"
	dialectMySQL  dialect = "mysql" // MySQL, MariaDB, OceanBase's MySQL mode
)

// migrationFiles are the goose migrations, NNNNN_name.sql, one directory
// per dialect. 00001_baseline is the whole schema of the legacy migrations
// (legacy.go); each later change is a new file in both directories.
//
//go:embed migrations/sqlite/*.sql migrations/mysql/*.sql
var migrationFiles embed.FS

// baselineVersion is the goose version a legacy database is adopted at.
const baselineVersion = 1

// versionTable is goose's table of applied versions.
const versionTable = goose.DefaultTablename

func (d dialect) goose() (goose.Dialect, error) {
	switch d {
	case dialectSQLite:
		return goose.DialectSQLite3, nil
	case dialectMySQL:
		return goose.DialectMySQL, nil
	}
	return "", fmt.Errorf("unknown store dialect %q", d)
}

// migrationsFS is d's directory of migrations.
func (d dialect) migrationsFS() (fs.FS, error) {
	return fs.Sub(migrationFiles, "migrations/"+string(d))
}

// migrate brings db's schema up to date. A legacy SQLite database (one with
// schema_version) first gets the legacy migrations it lacks and is recorded
// at the baseline version; then goose applies what is pending.
//
// On MySQL all of it runs under migrationLock, a row lease on the
// database's clock, so that servers starting together migrate once: the
// others wait for the lock, then find nothing pending. The lock is held
// around the whole goose run rather than given to goose (WithLocker):
// goose's Up first asks HasPending without its locker, and that first call
// creates goose's version table, unlocked. SQLite needs no lock: the data
// dir's flock (lockDir) makes its process the database's only user.
func migrate(ctx context.Context, db *sql.DB, d dialect) (err error) {
	switch d {
	case dialectSQLite:
		if err := adoptLegacy(ctx, db); err != nil {
			return err
		}
	case dialectMySQL:
		var cancel context.CancelCauseFunc
		ctx, cancel = context.WithCancelCause(ctx)
		defer cancel(nil)
		l := newMigrationLock(lockOptions{onLost: cancel})
		if err := l.Lock(ctx, db); err != nil {
			return err
		}
		defer func() { err = errors.Join(err, l.Unlock(context.WithoutCancel(ctx), db)) }()
	}
	return gooseUp(ctx, db, d)
}

// gooseUp applies d's pending goose migrations to db, and refuses a
// database newer than this server.
func gooseUp(ctx context.Context, db *sql.DB, d dialect) error {
	gd, err := d.goose()
	if err != nil {
		return err
	}
	fsys, err := d.migrationsFS()
	if err != nil {
		return err
	}
	p, err := goose.NewProvider(gd, db, fsys, goose.WithDisableGlobalRegistry(true))
	if err != nil {
		return err
	}
	if _, err := p.Up(ctx); err != nil {
		return fmt.Errorf("migrating the schema: %w", cause(ctx, err))
	}
	current, known, err := p.GetVersions(ctx)
	if err != nil {
		return err
	}
	if current > known {
		return fmt.Errorf("database schema version %d is newer than this server (%d)", current, known)
	}
	return nil
}

// cause is err, or why ctx ended when it did (a lost migration lock).
func cause(ctx context.Context, err error) error {
	if c := context.Cause(ctx); c != nil && !errors.Is(err, c) {
		return fmt.Errorf("%w (%w)", err, c)
	}
	return err
}

// adoptLegacy runs, for a database that has schema_version (made before
// goose), the legacy migrations it lacks and records it in goose's version
// table at the baseline version, all in one transaction. A database without
// schema_version is left to goose. schema_version stays, frozen at the
// last legacy migration.
func adoptLegacy(ctx context.Context, db *sql.DB) error {
	legacy, err := sqliteHasTable(ctx, db, "schema_version")
	if err != nil || !legacy {
		return err
	}
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback() }() // after a commit, ErrTxDone: nothing to undo
	if err := migrateLegacy(ctx, tx); err != nil {
		return err
	}
	vs, err := database.NewStore(database.DialectSQLite3, versionTable)
	if err != nil {
		return err
	}
	adopted, err := sqliteHasTable(ctx, tx, versionTable)
	if err != nil {
		return err
	}
	if !adopted {
		if err := vs.CreateVersionTable(ctx, tx); err != nil {
			return fmt.Errorf("creating %s: %w", versionTable, err)
		}
		if err := vs.Insert(ctx, tx, database.InsertRequest{Version: 0}); err != nil {
			return err
		}
	}
	switch _, err := vs.GetMigration(ctx, tx, baselineVersion); {
	case errors.Is(err, database.ErrVersionNotFound):
		if err := vs.Insert(ctx, tx, database.InsertRequest{Version: baselineVersion}); err != nil {
			return err
		}
	case err != nil:
		return err
	}
	return tx.Commit()
}

func sqliteHasTable(ctx context.Context, q querier, name string) (bool, error) {
	var n int
	err := q.QueryRowContext(ctx, `SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?`, name).Scan(&n)
	return n > 0, err
}
