package bench

import (
	"context"
	"database/sql"
	"fmt"
	"strconv"
	"time"

	_ "github.com/go-sql-driver/mysql" // the database/sql driver of the private MariaDB
)

// idleQueries measures the statements the idle replicas send to MariaDB:
// its global Questions counter (statements sent by clients) read twice, a
// window apart, on one connection as root, with only the idle replicas
// running (no agentd yet). The second read counts itself, so one comes off
// the difference.
func (c *clusterRun) idleQueries(ctx context.Context, window time.Duration) (Row, error) {
	db, err := sql.Open("mysql", c.db.DSN(""))
	if err != nil {
		return Row{}, err
	}
	defer db.Close()
	conn, err := db.Conn(ctx)
	if err != nil {
		return Row{}, err
	}
	defer conn.Close()
	// Let the replicas' start (migrations, registration) pass first.
	if err := sleepCtx(ctx, 3*time.Second); err != nil {
		return Row{}, err
	}
	before, err := questions(ctx, conn)
	if err != nil {
		return Row{}, err
	}
	t0 := time.Now()
	if err := sleepCtx(ctx, window); err != nil {
		return Row{}, err
	}
	after, err := questions(ctx, conn)
	if err != nil {
		return Row{}, err
	}
	rate := idleRate(before, after, time.Since(t0), len(c.replicas))
	c.env.Logf("cluster: idle: %d statements in %s from %d replicas: %.2f per replica per second",
		after-before-1, time.Since(t0).Round(time.Millisecond), len(c.replicas), rate)
	r := Row{Bench: "cluster", Case: "idle replica: database queries", N: len(c.replicas), PerSec: rate,
		Note: fmt.Sprintf("MariaDB's global Questions over %s with only %d idle replicas running, less the measuring query, per replica",
			window, len(c.replicas))}
	r.Check("≤ 2/s per replica", rate <= 2)
	return r, nil
}

// questions reads MariaDB's global Questions counter.
func questions(ctx context.Context, conn *sql.Conn) (int64, error) {
	var name, value string
	if err := conn.QueryRowContext(ctx, "SHOW GLOBAL STATUS LIKE 'Questions'").Scan(&name, &value); err != nil {
		return 0, fmt.Errorf("SHOW GLOBAL STATUS LIKE 'Questions': %w", err)
	}
	return parseStatusCounter(name, value)
}

// parseStatusCounter parses one row of SHOW GLOBAL STATUS holding a
// counter.
func parseStatusCounter(name, value string) (int64, error) {
	n, err := strconv.ParseInt(value, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("status %s: not a counter: %q", name, value)
	}
	return n, nil
}

// idleRate is the statements per replica per second between two reads of
// the Questions counter, less the second read itself.
func idleRate(before, after int64, window time.Duration, replicas int) float64 {
	if window <= 0 || replicas <= 0 {
		return 0
	}
	return float64(max(after-before-1, 0)) / window.Seconds() / float64(replicas)
}
