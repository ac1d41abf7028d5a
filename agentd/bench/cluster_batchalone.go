package bench

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
)

// batchAlone (agentplane-bench -cluster-batch N -cluster-no-kill) is the
// batch row without the kill: N simulated hosts given every replica, one
// batch stop of all through r1, and the time to the batch final; beside it
// the statements MariaDB ran meanwhile (its global Com_* counters, read
// before the request and after the batch), per host. With
// AGENTPLANE_BENCH_PPROF set, every replica's CPU profile is taken over the
// batch's first clusterAloneProfile; with AGENTPLANE_BENCH_GENERAL_LOG naming
// a file, MariaDB writes every statement of the batch there (its general
// log: slower, for counting statements by kind).
func (c *clusterRun) batchAlone(ctx context.Context, n int) (Row, error) {
	db, err := sql.Open("mysql", c.db.DSN(""))
	if err != nil {
		return Row{}, err
	}
	defer db.Close()
	f, sims, ids, done, err := c.batchFleet(ctx, n)
	defer done()
	if err != nil {
		return Row{}, err
	}
	before, err := globalStatus(ctx, db)
	if err != nil {
		return Row{}, err
	}
	genlog := os.Getenv("AGENTPLANE_BENCH_GENERAL_LOG")
	if genlog != "" {
		if err := generalLog(ctx, db, genlog, true); err != nil {
			return Row{}, err
		}
	}
	base := sims.total()
	sent := time.Now()
	c.prof.start(ctx, "cluster-batch", clusterAloneProfile)
	created, note, err := f.createBatches(ctx, ids)
	if err != nil {
		return Row{}, err
	}
	accepted := time.Since(sent)
	var half time.Duration
	if err := Poll(ctx, 5*time.Minute, 20*time.Millisecond, "stop commands to reach every host", func() (bool, error) {
		out := sims.total().Commands - base.Commands
		if half == 0 && out >= int64(n/2) {
			half = time.Since(sent)
		}
		return out >= int64(n), sims.err()
	}); err != nil {
		return Row{}, err
	}
	allOut := time.Since(sent)
	wctx, stopWatch := context.WithTimeout(ctx, 5*time.Minute)
	final, err := f.watchAll(wctx, created)
	stopWatch()
	if err != nil {
		return Row{}, fmt.Errorf("the batch stop: %w", err)
	}
	var b fleetBatch
	end := sent
	for _, t := range final {
		b.final = append(b.final, t.task)
		end = later(end, t.seen)
	}
	after, err := globalStatus(ctx, db)
	if err != nil {
		return Row{}, err
	}
	if genlog != "" {
		if err := generalLog(ctx, db, genlog, false); err != nil {
			return Row{}, err
		}
	}
	if err := c.prof.wait(); err != nil {
		c.env.Logf("cluster: batch alone: profiles: %v", err)
	}
	took := end.Sub(sent)
	r := Row{Bench: "cluster", Case: fmt.Sprintf("batch stop, no kill, %d hosts", n), N: n, P50Ms: Ms(took),
		Extra: map[string]float64{
			"accept_ms":   Ms(accepted),
			"half_out_ms": Ms(half),
			"all_out_ms":  Ms(allOut),
			"cmds_per_s":  float64(n) / allOut.Seconds(),
		}}
	var counts []string
	for _, k := range slices.Sorted(func(yield func(string) bool) {
		for k := range after {
			if !yield(k) {
				return
			}
		}
	}) {
		d := after[k] - before[k]
		if d == 0 {
			continue
		}
		r.Extra["db_"+k] = float64(d)
		counts = append(counts, fmt.Sprintf("%s %.2f", k, float64(d)/float64(n)))
	}
	r.Note = strings.TrimSpace(fmt.Sprintf("%d agentplane-sim hosts given all %d replicas; one batch stop of all through r1 "+
		"(each stop taking %s); p50 = the request → the batch final seen on r1; no replica killed; MariaDB's statements "+
		"per host meanwhile: %s; %s %s", n, len(c.replicas), fleetStopDelay, strings.Join(counts, ", "), b.summary(), note))
	r.Check("batch SUCCESSFUL", b.ok())
	c.env.Logf("cluster: batch alone: accepted %s, half out %s, all out %s (%.0f/s), final %s; per host: %s",
		accepted.Round(time.Millisecond), half.Round(time.Millisecond), allOut.Round(time.Millisecond),
		float64(n)/allOut.Seconds(), took.Round(time.Millisecond), strings.Join(counts, ", "))
	if err := sims.stop(); err != nil {
		c.env.Logf("cluster: batch alone: %v", err)
	}
	return r, nil
}

// clusterAloneProfile is how long batchAlone profiles the replicas.
const clusterAloneProfile = 20 * time.Second

// globalStatus reads MariaDB's global statement counters: Questions and
// the Com_* of the statements the store sends (transactions, savepoints,
// prepared statements, DML).
func globalStatus(ctx context.Context, db *sql.DB) (map[string]int64, error) {
	rows, err := db.QueryContext(ctx, `SHOW GLOBAL STATUS WHERE Variable_name IN ('Questions', 'Com_begin', 'Com_commit',
		'Com_rollback', 'Com_savepoint', 'Com_release_savepoint', 'Com_rollback_to_savepoint', 'Com_stmt_prepare',
		'Com_stmt_execute', 'Com_stmt_close', 'Com_select', 'Com_insert', 'Com_update', 'Com_delete', 'Handler_commit')`)
	if err != nil {
		return nil, fmt.Errorf("reading MariaDB's status: %w", err)
	}
	defer rows.Close()
	out := map[string]int64{}
	for rows.Next() {
		var k, v string
		if err := rows.Scan(&k, &v); err != nil {
			return nil, err
		}
		out[k], _ = strconv.ParseInt(v, 10, 64)
	}
	return out, rows.Err()
}

// generalLog turns MariaDB's general log (every statement, to file) on or
// off.
func generalLog(ctx context.Context, db *sql.DB, file string, on bool) error {
	if !on {
		_, err := db.ExecContext(ctx, `SET GLOBAL general_log = 0`)
		return err
	}
	if strings.ContainsAny(file, `'\\`) {
		return fmt.Errorf("general log file %q: no quotes or backslashes, please", file)
	}
	if _, err := db.ExecContext(ctx, "SET GLOBAL general_log_file = '"+file+"'"); err != nil {
		return fmt.Errorf("general log file: %w", err)
	}
	_, err := db.ExecContext(ctx, `SET GLOBAL general_log = 1`)
	return err
}
