package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/go-sql-driver/mysql"
)

// A MySQL store (MySQL, MariaDB, OceanBase's MySQL mode) is opened from a
// URL, mysql://user:password@host:port/db?param=value. Its sessions run in
// UTC, READ COMMITTED, with a strict sql_mode; the group-commit writer
// (writer.go) runs its transactions on a small pool (two connections: the
// migration lock renews its lease beside the migration), the reads on
// another. A writer session silent for mysqlTxIdleTimeout is closed by the
// database, so that a server frozen inside a transaction does not hold its
// row locks until it thaws. The data dir's flock and the WAL checkpoints
// are SQLite's alone; the health probe (health.go) runs on both, and is how
// a store whose database went away turns writable again by itself. Its
// errors are classified in mysqlerr.go.

// MySQL connection settings.
const (
	mysqlDialTimeout = 5 * time.Second
	// mysqlIOTimeout bounds a read or write on a connection: how long a
	// statement waits on a database that stopped answering (frozen, or cut
	// off without a reset) before it fails as unavailable.
	mysqlIOTimeout = 10 * time.Second
	// mysqlTxIdleTimeout is the writer sessions' wait_timeout: the
	// database closes a writer session silent this long, and rolls back its
	// transaction. A server frozen (SIGSTOP, a paused VM) or cut off in the
	// middle of a write transaction would otherwise hold its row locks for
	// as long as the database keeps its session (wait_timeout, 8 hours by
	// default): a replica adopting its tasks, and any server writing those
	// rows (a task, a log's counters), would wait on them, fail after
	// mysqlIOTimeout, and wait again, until it thawed. It is shorter than
	// mysqlIOTimeout, so a statement queued behind such a lock gets it,
	// and than the replica lease (6 s), so a replica seen dead holds no
	// lock for long. A working server is never silent that long inside a
	// transaction (its writes run back to back, see writer.go); its writer
	// connections idle between writes are closed by the pool first
	// (SetConnMaxIdleTime), and one the database closed is replaced on
	// use (the driver checks a connection's liveness first).
	mysqlTxIdleTimeout = 5 * time.Second
	mysqlWriteConns    = 2
	mysqlReadConns     = 8
	// mysqlSQLMode: strict (a value that does not fit is an error, not
	// truncated), no silent engine substitution.
	mysqlSQLMode = "STRICT_ALL_TABLES,ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION"
	// migrateTimeout bounds the migrations at open: longer than the
	// migration lock's lease, so that a lock left by a dead server is
	// waited out.
	migrateTimeout = 2*defaultLease + 30*time.Second
)

// mysqlParams are the query parameters a store URL may carry: the
// driver's own, in its spelling, except those the store's statements rely
// on being off (clientFoundRows, multiStatements, interpolateParams,
// parseTime, loc) or that name files or registered configs.
var mysqlParams = map[string]func(c *mysql.Config, v string) error{
	"tls": func(c *mysql.Config, v string) error {
		switch strings.ToLower(v) {
		case "true", "false", "skip-verify", "preferred":
			c.TLSConfig = strings.ToLower(v)
			return nil
		}
		return errors.New("want true, false, skip-verify or preferred")
	},
	"timeout":      durationParam(func(c *mysql.Config) *time.Duration { return &c.Timeout }),
	"readTimeout":  durationParam(func(c *mysql.Config) *time.Duration { return &c.ReadTimeout }),
	"writeTimeout": durationParam(func(c *mysql.Config) *time.Duration { return &c.WriteTimeout }),
	"collation":    func(c *mysql.Config, v string) error { c.Collation = v; return nil },
	"maxAllowedPacket": func(c *mysql.Config, v string) (err error) {
		c.MaxAllowedPacket, err = strconv.Atoi(v)
		return err
	},
	"allowCleartextPasswords": boolParam(func(c *mysql.Config) *bool { return &c.AllowCleartextPasswords }),
	"allowNativePasswords":    boolParam(func(c *mysql.Config) *bool { return &c.AllowNativePasswords }),
	"connectionAttributes":    func(c *mysql.Config, v string) error { c.ConnectionAttributes = v; return nil },
}

func durationParam(f func(*mysql.Config) *time.Duration) func(*mysql.Config, string) error {
	return func(c *mysql.Config, v string) (err error) {
		d, err := time.ParseDuration(v)
		if err == nil && d <= 0 {
			err = errors.New("want a positive duration")
		}
		*f(c) = d
		return err
	}
}

func boolParam(f func(*mysql.Config) *bool) func(*mysql.Config, string) error {
	return func(c *mysql.Config, v string) (err error) {
		*f(c), err = strconv.ParseBool(v)
		return err
	}
}

// IsMySQLURL reports whether spec names a MySQL store (mysql://...).
func IsMySQLURL(spec string) bool { return strings.HasPrefix(spec, "mysql://") }

// RedactURL is a store URL fit for a log: its password replaced by xxxxx.
// A URL that does not parse is not shown at all.
func RedactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable store URL)"
	}
	return u.Redacted()
}

// parseMySQLURL turns mysql://user:password@host[:port]/db?params into the
// driver's config with the store's settings. Its errors never hold the
// password.
func parseMySQLURL(raw string) (*mysql.Config, error) {
	u, err := url.Parse(raw)
	if err != nil {
		// url's errors quote the URL, password included.
		return nil, errors.New("store URL: not a URL (want mysql://user:password@host:port/db)")
	}
	if u.Scheme != "mysql" {
		return nil, fmt.Errorf("store URL: scheme %q, want mysql://user:password@host:port/db", u.Scheme)
	}
	c := mysql.NewConfig()
	if u.User == nil || u.User.Username() == "" {
		return nil, errors.New("store URL: no user (want mysql://user:password@host:port/db)")
	}
	c.User = u.User.Username()
	c.Passwd, _ = u.User.Password()
	if u.Hostname() == "" {
		return nil, errors.New("store URL: no host (want mysql://user:password@host:port/db)")
	}
	port := u.Port()
	if port == "" {
		port = "3306"
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return nil, fmt.Errorf("store URL: bad port %q", port)
	}
	c.Net, c.Addr = "tcp", net.JoinHostPort(u.Hostname(), port)
	c.DBName = strings.TrimPrefix(u.Path, "/")
	if c.DBName == "" || strings.Contains(c.DBName, "/") {
		return nil, fmt.Errorf("store URL: database name %q: want exactly one, mysql://user:password@host:port/db", c.DBName)
	}
	if u.Fragment != "" || u.Opaque != "" {
		return nil, errors.New("store URL: unexpected fragment or opaque part")
	}
	c.Timeout, c.ReadTimeout, c.WriteTimeout = mysqlDialTimeout, mysqlIOTimeout, mysqlIOTimeout
	c.Loc = time.UTC
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return nil, fmt.Errorf("store URL: query: %w", err)
	}
	for k, vs := range q {
		set, ok := mysqlParams[k]
		if !ok {
			return nil, fmt.Errorf("store URL: parameter %q is not supported", k)
		}
		if len(vs) != 1 {
			return nil, fmt.Errorf("store URL: parameter %q given %d times", k, len(vs))
		}
		if err := set(c, vs[0]); err != nil {
			return nil, fmt.Errorf("store URL: parameter %s=%q: %w", k, vs[0], err)
		}
	}
	c.RejectReadOnly = true
	c.ClientFoundRows = false                           // every UPDATE that must match changes a column
	c.Logger = mysql.Logger(log.New(io.Discard, "", 0)) // its errors are returned, and logged by the server
	return c, nil
}

// OpenMySQL opens the MySQL store at rawURL (mysql://user:password@host:
// port/db) and brings its schema up to date, under the migration lock
// (migratelock.go). The database must exist; its tables are created.
func OpenMySQL(ctx context.Context, rawURL string, opts ...Option) (s *Store, err error) {
	cfg, err := parseMySQLURL(rawURL)
	if err != nil {
		return nil, err
	}
	where := cfg.Addr + "/" + cfg.DBName
	iso, err := isolationVariable(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connecting to %s: %w", where, classify(err))
	}
	cfg.Params = map[string]string{
		"time_zone": "'+00:00'",
		iso:         "'READ-COMMITTED'",
		"sql_mode":  "'" + mysqlSQLMode + "'",
	}
	conn, err := mysql.NewConnector(cfg)
	if err != nil {
		return nil, fmt.Errorf("store URL: %w", err)
	}
	wcfg := cfg.Clone()
	wcfg.Params["wait_timeout"] = strconv.Itoa(int(mysqlTxIdleTimeout / time.Second))
	wconn, err := mysql.NewConnector(wcfg)
	if err != nil {
		return nil, fmt.Errorf("store URL: %w", err)
	}
	w := sql.OpenDB(wconn)
	w.SetMaxOpenConns(mysqlWriteConns)
	w.SetMaxIdleConns(mysqlWriteConns)
	w.SetConnMaxIdleTime(mysqlTxIdleTimeout / 2)
	s = &Store{w: w, dialect: dialectMySQL, logLimits: defaultLogLimits()}
	for _, o := range opts {
		o(s)
	}
	mctx, cancel := context.WithTimeout(ctx, migrateTimeout)
	defer cancel()
	if err := migrate(mctx, w, dialectMySQL); err != nil {
		w.Close()
		return nil, fmt.Errorf("migrating %s: %w", where, classify(err))
	}
	r := sql.OpenDB(conn)
	r.SetMaxOpenConns(mysqlReadConns)
	r.SetMaxIdleConns(mysqlReadConns)
	r.SetConnMaxIdleTime(5 * time.Minute)
	s.r = &rdb{DB: r, c: newStmtCache()}
	s.start()
	return s, nil
}

// isolationVariable names the session variable of the isolation level:
// transaction_isolation (MySQL 8, MariaDB 11.1, OceanBase), else the older
// tx_isolation (MariaDB before 11.1, MySQL 5.7 has both).
func isolationVariable(ctx context.Context, cfg *mysql.Config) (string, error) {
	conn, err := mysql.NewConnector(cfg)
	if err != nil {
		return "", err
	}
	db := sql.OpenDB(conn)
	defer db.Close()
	ctx, cancel := context.WithTimeout(ctx, mysqlDialTimeout+mysqlIOTimeout)
	defer cancel()
	var v string
	err = db.QueryRowContext(ctx, `SELECT @@SESSION.transaction_isolation`).Scan(&v)
	if err == nil {
		return "transaction_isolation", nil
	}
	var me *mysql.MySQLError
	if errors.As(err, &me) && me.Number == erUnknownSystemVariable {
		return "tx_isolation", nil
	}
	return "", err
}
