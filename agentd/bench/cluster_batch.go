package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"
)

// The batch row kills clusterBatchVictim (r2) once half of the stop
// commands have reached their hosts; the batch goes through r1, the
// simulators' hosts (each stop taking fleetStopDelay) spread over the
// three replicas.
const (
	clusterBatchVictim = 1
	clusterBatchTarget = 30 * time.Second
)

// clusterBatchBackBound is how long the batch row waits for all hosts
// back, and then for the batch to end, before it reports a miss: a few
// times the target, less in short mode (bench-short runs in CI).
func clusterBatchBackBound(short bool) time.Duration {
	if short {
		return 45 * time.Second
	}
	return 2 * time.Minute
}

// batchFailover starts n simulated hosts given every replica (each host
// picks its own order, so about a third stream to each), sends a batch stop
// of all n through r1, SIGKILLs r2 mid-batch, and measures the time from
// the kill to all n connected again and the batch's end. r2 is started
// again afterwards.
func (c *clusterRun) batchFailover(ctx context.Context, n int) (Row, error) {
	f, sims, ids, done, err := c.batchFleet(ctx, n)
	defer done()
	if err != nil {
		return Row{}, err
	}
	base := sims.total()
	sent := time.Now()
	created, note, err := f.createBatches(ctx, ids)
	if err != nil {
		return Row{}, err
	}
	if err := Poll(ctx, 60*time.Second, 20*time.Millisecond, "stop commands to reach half of the hosts", func() (bool, error) {
		return sims.total().Commands-base.Commands >= int64(n/2), sims.err()
	}); err != nil {
		return Row{}, err
	}
	atKill := sims.total()
	killed := time.Now()
	c.replicas[clusterBatchVictim].Kill()
	c.env.Logf("cluster: batch: killed r%d %s after the request, %d commands out", clusterBatchVictim+1,
		time.Since(sent).Round(time.Millisecond), atKill.Commands-base.Commands)
	var dropped time.Time
	if err := Poll(ctx, 30*time.Second, 20*time.Millisecond, "the simulators to see streams end", func() (bool, error) {
		dropped = time.Now()
		return sims.total().Connected < int64(n), sims.err()
	}); err != nil {
		return Row{}, err
	}
	lowest := int64(n)
	var back time.Time
	// Not back within the bound is a miss, not an error: the row says how
	// many were (bench-short runs in CI).
	backBound := clusterBatchBackBound(c.env.Short)
	allBack := false
	if err := Poll(ctx, backBound, 50*time.Millisecond, fmt.Sprintf("all %d hosts to reconnect", n), func() (bool, error) {
		lowest = min(lowest, sims.total().Connected)
		back, allBack = sims.allConnectedSince(dropped, n)
		return allBack, sims.err()
	}); err != nil && (!errors.Is(err, context.DeadlineExceeded) || ctx.Err() != nil || sims.err() != nil) {
		return Row{}, err
	}
	connected := sims.total().Connected
	if allBack {
		connected = int64(n)
	} else {
		back = time.Now()
		c.env.Logf("cluster: batch: %d of %d hosts back %s after the kill; the batch is watched %s more", connected, n,
			back.Sub(killed).Round(time.Millisecond), backBound)
	}
	wctx, stopWatch := context.WithTimeout(ctx, backBound)
	final, err := f.watchAll(wctx, created)
	stopWatch()
	if err != nil && (ctx.Err() != nil || sims.err() != nil) {
		return Row{}, fmt.Errorf("the batch stop across the kill: %w", err)
	}
	var b fleetBatch
	end := sent
	unfinished := 0
	for _, t := range final {
		if t.task == nil {
			unfinished++
			continue
		}
		b.final = append(b.final, t.task)
		end = later(end, t.seen)
	}
	if unfinished > 0 {
		end = time.Now()
		c.env.Logf("cluster: batch: %d of %d batch tasks not final %s after the request: %v", unfinished, len(created),
			end.Sub(sent).Round(time.Millisecond), err)
	}
	total := sims.total()
	if err := c.replicas[clusterBatchVictim].Launch(ctx); err != nil {
		return Row{}, fmt.Errorf("starting r%d again: %w", clusterBatchVictim+1, err)
	}
	took := back.Sub(killed)
	r := Row{Bench: "cluster", Case: fmt.Sprintf("replica killed mid-batch, %d hosts", n), N: n, P50Ms: Ms(took),
		Extra: map[string]float64{
			"batch_end_ms":      Ms(end.Sub(sent)),
			"kill_after_ms":     Ms(killed.Sub(sent)),
			"cmds_at_kill":      float64(atKill.Commands - base.Commands),
			"done_at_kill":      float64(atKill.Results - base.Results),
			"streams_lost_min":  float64(int64(n) - lowest),
			"sim_failed":        float64(total.Failed - base.Failed),
			"batch_tasks":       float64(len(b.final)),
			"batch_successful":  0,
			"kill_to_all_con_s": took.Seconds(),
			"hosts_back":        float64(connected),
			"batch_unfinished":  float64(unfinished),
		},
		Note: strings.TrimSpace(fmt.Sprintf("%d agentplane-sim hosts given all %d replicas (--server a,b,c: each its own "+
			"order, so about a third stream to each); a batch stop of all through r1 (each stop taking %s), and r%d "+
			"SIGKILLed once half of the commands are out; p50 = the kill → all %d connected again (the simulators' "+
			"stats; when not all are back within %s, the time to that bound, hosts_back saying how many were); batch_end_ms = the request → the batch final seen on r1; streams_lost_min = the fewest connected "+
			"seen after the kill, below %d (a lower bound of r%d's streams); batch_unfinished = the batch's tasks not "+
			"final within that bound again; %s %s",
			n, len(c.replicas), fleetStopDelay, clusterBatchVictim+1, n, backBound, n, clusterBatchVictim+1, b.summary(), note))}
	ok := b.ok() && unfinished == 0
	if ok {
		r.Extra["batch_successful"] = 1
	}
	r.Check("batch SUCCESSFUL; all back ≤ 30 s", ok && allBack && took <= clusterBatchTarget)
	c.env.Logf("cluster: batch: %d of %d back %s after the kill; batch final %s after the request (%s; %d tasks not final)",
		connected, n, took.Round(time.Millisecond), end.Sub(sent).Round(time.Millisecond), b.summary(), unfinished)
	// A simulator slow to exit on SIGTERM (a starved machine) is killed
	// and reaped; the row stands.
	if err := sims.stop(); err != nil {
		c.env.Logf("cluster: batch: %v", err)
	}
	return r, nil
}

// batchFleet starts n simulated hosts given every replica (a fleetRun on
// r1) and waits until all are connected and stable; done stops them and
// removes their state (call it even on an error).
func (c *clusterRun) batchFleet(ctx context.Context, n int) (f *fleetRun, sims *fleetSims, ids []int64, done func(), err error) {
	done = func() {}
	limit := FileLimit()
	if limit < uint64(n)+1000 {
		return nil, nil, nil, done, fmt.Errorf("open-file limit %d: the replicas need %d for %d hosts", limit, n+1000, n)
	}
	stateDir, err := fleetStateDir(c.env)
	if err != nil {
		return nil, nil, nil, done, err
	}
	done = func() { os.RemoveAll(stateDir) }
	f = &fleetRun{env: c.env, srv: c.replicas[0], servers: c.serverList(), hosts: c.hosts[0], tasks: c.tasks[0],
		stateDir: stateDir, perSim: int((limit - 1000) / 2)}
	c.env.Logf("cluster: batch: %d simulated hosts over %d replicas", n, len(c.replicas))
	started, err := f.startSims(ctx, n, fleetStopDelay)
	if err != nil {
		return nil, nil, nil, done, err
	}
	// Not the named result, which an error return sets to nil.
	done = func() {
		_ = started.stop()
		os.RemoveAll(stateDir)
	}
	sims = started
	if ids, err = f.waitConnected(ctx, sims, n, 60*time.Second+time.Duration(n)*20*time.Millisecond); err != nil {
		return nil, nil, nil, done, err
	}
	// Stable connections: agentd resets its backoff after 10 s up.
	return f, sims, ids, done, sleepCtx(ctx, 11*time.Second)
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}
