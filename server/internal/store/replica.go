package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"time"

	"agentplane/server/internal/errs"
	"agentplane/server/internal/replica"
)

// The replicas registry (table replicas) and the settings every replica
// shares (cluster_settings): see migrations/*/00002_replicas.sql. Times are
// the database's clock: each dialect's SQL for "now" is dialect.now, the
// only per-dialect part; the statements are otherwise the same on both, in
// functions of a querier so that one code path serves SQLite (through the
// writer) and MySQL.
//
// Several replicas share the store (each task has one owner among them:
// taskowner.go); a replica registers beside the live ones, which must hold
// the same shared secrets. Registrations run one at a time: each first updates the row
// registrationRow of cluster_settings, whose row lock (InnoDB) or the
// write transaction (SQLite, which has one writer) holds the others back
// until it commits. (On InnoDB the registration's later reads are
// consistent reads whose snapshot is taken after that lock is granted, so
// they see the registration that committed before.)

// registrationRow is the cluster_settings row registrations lock.
const registrationRow = "replicas.registration"

// RegisterReplica registers r, taking over r.ID's row if there is one (a
// restart), beside the other replicas. It refuses with a
// *replica.MismatchError (an ErrConflict) when one of r.Shared differs from
// the fingerprint the store records while another replica is live within
// lease (on the database's clock). With no other replica live, r.Shared
// are recorded; replaced names those that differed from the recorded ones.
//
// A store whose process holds it alone (SQLite: the data dir's flock)
// knows the other rows stale, whatever their heartbeats: it removes them,
// and the registry records the one replica.
func (s *Store) RegisterReplica(ctx context.Context, r replica.Registration, lease time.Duration) (replaced []string, err error) {
	err = s.tx(ctx, func(ctx context.Context, tx *wtx) error {
		replaced, err = registerReplica(ctx, tx, s.dialect, r, lease, s.lock != nil)
		return err
	})
	return replaced, err
}

// HeartbeatReplica records a heartbeat of id's incarnation now. It fails
// with ErrNotFound when id's row is gone, and ErrConflict when another
// incarnation took it over. On MySQL it is one autocommitted statement,
// kept prepared, beside the writer (an idle replica's heartbeat is one
// round trip, not a transaction's three); on SQLite it goes through the
// writer, the one connection that writes.
func (s *Store) HeartbeatReplica(ctx context.Context, id, incarnation string) error {
	if s.dialect == dialectMySQL {
		return classify(heartbeatReplica(ctx, autocommit{s.w, s.astmts}, s.dialect, id, incarnation))
	}
	return s.tx(ctx, func(ctx context.Context, tx *wtx) error {
		return heartbeatReplica(ctx, tx, s.dialect, id, incarnation)
	})
}

// autocommit runs each statement by itself on db (MySQL: autocommitted),
// prepared and kept in c.
type autocommit struct {
	db *sql.DB
	c  *stmtCache
}

func (a autocommit) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	if st := a.c.prepared(ctx, a.db, query); st != nil { //nolint:sqlclosecheck // cached; closed by stmtCache.close when the store closes
		return st.ExecContext(ctx, args...)
	}
	return a.db.ExecContext(ctx, query, args...)
}

func (a autocommit) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	if st := a.c.prepared(ctx, a.db, query); st != nil { //nolint:sqlclosecheck // cached; closed by stmtCache.close when the store closes
		return st.QueryContext(ctx, args...)
	}
	return a.db.QueryContext(ctx, query, args...)
}

func (a autocommit) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	if st := a.c.prepared(ctx, a.db, query); st != nil { //nolint:sqlclosecheck // cached; closed by stmtCache.close when the store closes
		return st.QueryRowContext(ctx, args...)
	}
	return a.db.QueryRowContext(ctx, query, args...)
}

// DeregisterReplica removes id's row if incarnation still holds it.
func (s *Store) DeregisterReplica(ctx context.Context, id, incarnation string) error {
	return s.tx(ctx, func(ctx context.Context, tx *wtx) error { return deregisterReplica(ctx, tx, id, incarnation) })
}

// ListReplicas lists the registered replicas by id, each live when its
// last heartbeat is within lease on the database's clock.
func (s *Store) ListReplicas(ctx context.Context, lease time.Duration) ([]replica.Info, error) {
	out, err := listReplicas(ctx, s.r.DB, s.dialect, lease)
	return out, classify(err)
}

// registerReplica is RegisterReplica in q's transaction; exclusive: this
// process is the store's only user (see there).
func registerReplica(ctx context.Context, q querier, d dialect, r replica.Registration, lease time.Duration, exclusive bool) ([]string, error) {
	if err := lockRegistrations(ctx, q, r.Incarnation); err != nil {
		return nil, err
	}
	if exclusive {
		if _, err := q.ExecContext(ctx, `DELETE FROM replicas WHERE id <> ?`, r.ID); err != nil {
			return nil, fmt.Errorf("registering replica %q: %w", r.ID, err)
		}
	}
	all, err := listReplicas(ctx, q, d, lease)
	if err != nil {
		return nil, err
	}
	var live []replica.Info
	for _, o := range all {
		if o.Live && o.ID != r.ID {
			live = append(live, o)
		}
	}
	replaced, err := checkShared(ctx, q, r.Shared, live)
	if err != nil {
		return nil, err
	}
	if _, err := q.ExecContext(ctx, `DELETE FROM replicas WHERE id = ?`, r.ID); err != nil {
		return nil, fmt.Errorf("registering replica %q: %w", r.ID, err)
	}
	if _, err := q.ExecContext(ctx, `INSERT INTO replicas (id, advertise_addr, version, incarnation, beats, started_at, heartbeat_at)
		VALUES (?, ?, ?, ?, 0, `+d.now()+`, `+d.now()+`)`, r.ID, r.Addr, r.Version, r.Incarnation); err != nil {
		return nil, fmt.Errorf("registering replica %q: %w", r.ID, err)
	}
	return replaced, nil
}

// lockRegistrations takes registrationRow's lock (changing its value, so
// that the UPDATE matches a changed row), creating the row if missing.
func lockRegistrations(ctx context.Context, q querier, incarnation string) error {
	// A value of its own each time, so that a registration of the same
	// incarnation again (a retry) changes the row too.
	incarnation += "/" + strconv.FormatInt(time.Now().UnixNano(), 36)
	res, err := q.ExecContext(ctx, `UPDATE cluster_settings SET value = ? WHERE name = ?`, incarnation, registrationRow)
	if err != nil {
		return fmt.Errorf("locking the replicas registry: %w", err)
	}
	if n, err := res.RowsAffected(); err != nil || n == 1 {
		return err
	}
	// No row (a store migrated without it): create it, or, when another
	// registration created it meanwhile, lock it by the UPDATE again.
	_, err = q.ExecContext(ctx, `INSERT INTO cluster_settings (name, value) VALUES (?, ?)`, registrationRow, incarnation)
	if err != nil && isUniqueViolation(err) {
		_, err = q.ExecContext(ctx, `UPDATE cluster_settings SET value = ? WHERE name = ?`, incarnation, registrationRow)
	}
	if err != nil {
		return fmt.Errorf("locking the replicas registry: %w", err)
	}
	return nil
}

// checkShared compares each shared secret's fingerprint with the stored
// one: a difference is an error while other replicas are live, else the
// new one is stored (and named in replaced).
func checkShared(ctx context.Context, q querier, shared []replica.Shared, live []replica.Info) (replaced []string, err error) {
	for _, sh := range shared {
		var stored string
		switch err := q.QueryRowContext(ctx, `SELECT value FROM cluster_settings WHERE name = ?`, sh.Name).Scan(&stored); {
		case errors.Is(err, sql.ErrNoRows):
			if _, err := q.ExecContext(ctx, `INSERT INTO cluster_settings (name, value) VALUES (?, ?)`, sh.Name, sh.Fingerprint); err != nil {
				return nil, fmt.Errorf("recording %s: %w", sh.Name, err)
			}
			continue
		case err != nil:
			return nil, fmt.Errorf("reading %s: %w", sh.Name, err)
		}
		if stored == sh.Fingerprint {
			continue
		}
		if len(live) > 0 {
			return nil, fmt.Errorf("%w: %w", &replica.MismatchError{Shared: sh, Stored: stored, Live: live}, errs.ErrConflict)
		}
		if _, err := q.ExecContext(ctx, `UPDATE cluster_settings SET value = ? WHERE name = ?`, sh.Fingerprint, sh.Name); err != nil {
			return nil, fmt.Errorf("recording %s: %w", sh.Name, err)
		}
		replaced = append(replaced, sh.Name)
	}
	return replaced, nil
}

func deregisterReplica(ctx context.Context, q querier, id, incarnation string) error {
	_, err := q.ExecContext(ctx, `DELETE FROM replicas WHERE id = ? AND incarnation = ?`, id, incarnation)
	return err
}

// heartbeatReplica is HeartbeatReplica: one UPDATE (it needs no
// transaction of its own: on MySQL, an autocommitted statement, so that an
// idle replica's heartbeat is one round trip); the SELECT that says why it
// matched nothing runs only then.
func heartbeatReplica(ctx context.Context, q querier, d dialect, id, incarnation string) error {
	res, err := q.ExecContext(ctx, `UPDATE replicas SET beats = beats + 1, heartbeat_at = `+d.now()+`
		WHERE id = ? AND incarnation = ?`, id, incarnation)
	if err != nil {
		return err
	}
	if n, err := res.RowsAffected(); err != nil || n == 1 {
		return err
	}
	var holder string
	switch err := q.QueryRowContext(ctx, `SELECT incarnation FROM replicas WHERE id = ?`, id).Scan(&holder); {
	case errors.Is(err, sql.ErrNoRows):
		return fmt.Errorf("replica %q is not in the registry (its row was removed): %w", id, errs.ErrNotFound)
	case err != nil:
		return err
	}
	return fmt.Errorf("replica %q was registered again by another process with the same --replica-id: %w", id, errs.ErrConflict)
}

func listReplicas(ctx context.Context, q querier, d dialect, lease time.Duration) ([]replica.Info, error) {
	rows, err := q.QueryContext(ctx, `SELECT id, advertise_addr, version, `+d.text("started_at")+`, `+d.text("heartbeat_at")+`, `+
		d.text(d.now())+`, CASE WHEN heartbeat_at > `+d.ago()+` THEN 1 ELSE 0 END
		FROM replicas ORDER BY id`, lease.Microseconds())
	if err != nil {
		return nil, fmt.Errorf("listing replicas: %w", err)
	}
	defer rows.Close()
	var out []replica.Info
	for rows.Next() {
		var r replica.Info
		var started, beat, now string
		if err := rows.Scan(&r.ID, &r.Addr, &r.Version, &started, &beat, &now, &r.Live); err != nil {
			return nil, fmt.Errorf("listing replicas: %w", err)
		}
		var t time.Time
		if r.Started, err = parseDBTime(started); err == nil {
			if r.Heartbeat, err = parseDBTime(beat); err == nil {
				t, err = parseDBTime(now)
			}
		}
		if err != nil {
			return nil, fmt.Errorf("listing replicas: %w", err)
		}
		r.Age = t.Sub(r.Heartbeat)
		out = append(out, r)
	}
	return out, rows.Err()
}

// dbTimeLayout is the text of dialect.text: UTC, with up to 6 fractional
// digits.
const dbTimeLayout = "2006-01-02 15:04:05.999999"

func parseDBTime(s string) (time.Time, error) {
	t, err := time.ParseInLocation(dbTimeLayout, s, time.UTC)
	if err != nil {
		return time.Time{}, fmt.Errorf("reading a database time: %w", err)
	}
	return t, nil
}

// now is the SQL for the current time on the database's clock, in UTC, as
// a DATETIME(6) column holds it: on MySQL UTC_TIMESTAMP(6) (NOW follows
// each session's time_zone); on SQLite its own clock (the process's) as
// text, which orders as it compares.
func (d dialect) now() string {
	if d == dialectMySQL {
		return `UTC_TIMESTAMP(6)`
	}
	return `strftime('%Y-%m-%d %H:%M:%f', 'now')`
}

// ago is now() less a `?` argument of microseconds.
func (d dialect) ago() string {
	if d == dialectMySQL {
		return `(UTC_TIMESTAMP(6) - INTERVAL ? MICROSECOND)`
	}
	return `strftime('%Y-%m-%d %H:%M:%f', 'now', printf('-%.6f seconds', ? / 1000000.0))`
}

// text is the SQL of time expression e as dbTimeLayout's text.
func (d dialect) text(e string) string {
	if d == dialectMySQL {
		return `DATE_FORMAT(` + e + `, '%Y-%m-%d %H:%i:%s.%f')`
	}
	return `strftime('%Y-%m-%d %H:%M:%f', ` + e + `)`
}
