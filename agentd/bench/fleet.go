package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	hostv1 "agentplane/gen/agentplane/host/v1"
	taskv1 "agentplane/gen/agentplane/task/v1"
)

// fleet: agentplane-sim opens N agent streams, each a distinct enrolled host
// on its own TLS connection speaking the real protocol, against one server.
// For N in 1,000, 5,000 and 10,000 (short mode: 1,000) it measures
//
//   - the server's RSS per connected host: the server just started (for
//     the first N, the bench's fresh server; for the next, restarted on the
//     same data dir, where the hosts of the smaller N stay enrolled) and
//     idle with no agent, then with N hosts ONLINE, (RSS_N - RSS_0) / N.
//     The hosts not enrolled yet (all of the first N) enroll in between:
//     their enrollments' garbage is in the reading too;
//   - a batch stop of all N hosts, from the BatchStopAgents request to the
//     final task seen through WatchTask;
//   - the reconnect storm after a server restart: with N hosts connected and
//     a batch stop in flight (each simulated stop takes fleetStopDelay), the
//     server is stopped with SIGTERM and started again at once; from the new
//     process's start to all N connected again (the simulator's stats), the
//     peak accept rate (welcomes in any 1 s window) and the welcomes per
//     second (s00, s01, ... in Extra: the reconnect backoff's jitter
//     spreads them), then the batch task must end SUCCESSFUL: a restart
//     fails no task by itself (fleet.Fleet.Expect). Its final status leads
//     the row's note; any other status is an error of the scenario.
//
// Each simulated host holds a socket and a state-dir lock, the server a
// socket per host; the simulator's hosts are split over as many processes
// as the open-file limit needs.
func init() { register(Scenario{Order: 30, Name: "fleet", Run: runFleet}) }

// Targets of issue 5 for the fleet.
const (
	fleetRSSPerHostTarget = 50 << 10 // bytes of server RSS per connected host
	fleetBatchTarget      = 15 * time.Second
	fleetReconnectTarget  = 30 * time.Second
	fleetTargetN          = 10000 // the batch and reconnect targets are for this N
)

const (
	fleetPrefix     = "bench"          // simulated host names: bench-00000, ...
	fleetStopDelay  = 3 * time.Second  // how long each simulated stop takes in the reconnect storm
	fleetSettle     = 12 * time.Second // connected and idle before the RSS reading: longer than a heartbeat interval (10 s)
	fleetStatsEvery = 100 * time.Millisecond
	fleetHistMax    = 60 // seconds of the welcome histogram
	fleetMaxRecvMsg = 1 << 30
)

func runFleet(ctx context.Context, env *Env) ([]Row, error) {
	sizes := []int{1000, 5000, 10000}
	if env.Short {
		sizes = []int{1000}
	}
	maxN := slices.Max(sizes)
	// The server holds a socket per host; each simulator process a socket and
	// a state-dir lock per host.
	limit := FileLimit()
	if limit < uint64(maxN)+1000 {
		return nil, fmt.Errorf("open-file limit %d: the server needs %d for %d hosts (RaiseFileLimit could not go higher; raise the hard limit, ulimit -Hn)",
			limit, maxN+1000, maxN)
	}
	perSim := int((limit - 1000) / 2)
	if perSim < 1 {
		return nil, fmt.Errorf("open-file limit %d is too low for the simulator", limit)
	}

	stateDir, err := fleetStateDir(env)
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(stateDir)

	prof := newFleetProf(ctx)
	srv, err := env.StartServer(ctx, "server", prof.args()...)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err := prof.wait(); err != nil {
			env.Logf("fleet: profiles: %v", err)
		}
	}()
	conn, err := srv.Dial()
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	f := &fleetRun{env: env, srv: srv, hosts: hostv1.NewHostServiceClient(conn), tasks: taskv1.NewTaskServiceClient(conn),
		stateDir: stateDir, perSim: perSim, prof: prof}
	var rows []Row
	for i, n := range sizes {
		if i > 0 { // a fresh server for each N
			if err := srv.Stop(); err != nil {
				return rows, err
			}
			if err := srv.Launch(ctx); err != nil {
				return rows, err
			}
		}
		r, err := f.step(ctx, n)
		rows = append(rows, r...)
		if err != nil {
			return rows, fmt.Errorf("with N=%d: %w", n, err)
		}
	}
	return rows, nil
}

// fleetStateDir is the root of the simulated hosts' state dirs: on tmpfs
// when there is one (their journals fsync), else in the work dir.
func fleetStateDir(env *Env) (string, error) {
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		if d, err := os.MkdirTemp("/dev/shm", "agentplane-bench-fleet-"); err == nil {
			return d, nil
		}
	}
	d := filepath.Join(env.Work, "sim-state")
	return d, os.MkdirAll(d, 0o700)
}

type fleetRun struct {
	env      *Env
	srv      *Server
	servers  string // the simulators' --server; default srv's gRPC address
	hosts    hostv1.HostServiceClient
	tasks    taskv1.TaskServiceClient
	stateDir string
	perSim   int // hosts per simulator process
	starts   int // simulator starts so far, for unique log names
	prof     *fleetProf
}

// step measures one N on a server just started: RSS, batch stop, reconnect
// storm.
func (f *fleetRun) step(ctx context.Context, n int) ([]Row, error) {
	env, srv := f.env, f.srv
	if err := sleepCtx(ctx, 2*time.Second); err != nil {
		return nil, err
	}
	rss0, err := srv.RSS()
	if err != nil {
		return nil, err
	}

	// 1. RSS per connected host.
	began := time.Now()
	sims, err := f.startSims(ctx, n, 0)
	if err != nil {
		return nil, err
	}
	defer func() { _ = sims.stop() }() // after the checked stop below, a no-op; on an early return, cleanup
	ids, err := f.waitConnected(ctx, sims, n, 60*time.Second+time.Duration(n)*20*time.Millisecond)
	if err != nil {
		return nil, err
	}
	connectTook := time.Since(began)
	cpu0, _ := CPUTime(srv.Proc.PID())
	if err := sleepCtx(ctx, fleetSettle); err != nil {
		return nil, err
	}
	cpu1, _ := CPUTime(srv.Proc.PID())
	rssN, err := srv.RSS()
	if err != nil {
		return nil, err
	}
	perHost := (rssN - rss0) / int64(n)
	f.prof.fetch(ctx, fmt.Sprintf("fleet-n%d-heap", n), "heap")
	rssRow := Row{Bench: "fleet", Case: fmt.Sprintf("server RSS, %d hosts", n), N: n, MemBytes: perHost,
		MemWhat: "per connected host", Extra: map[string]float64{
			"rss_idle_mb":         float64(rss0) / (1 << 20),
			"rss_total_mb":        float64(rssN) / (1 << 20),
			"connect_s":           connectTook.Seconds(),
			"server_cpu_pct_idle": 100 * float64(cpu1-cpu0) / float64(fleetSettle),
			"sim_rss_mb":          float64(sims.rss()) / (1 << 20),
			"sim_procs":           float64(len(sims.procs)),
		}}
	rssRow.Check("≤ 50 KB/host", perHost <= fleetRSSPerHostTarget)
	// The baseline: a bare grpc-go server holding as many streams (bare.go).
	idDir := filepath.Join(f.stateDir, fmt.Sprintf("%s-%05d", fleetPrefix, 0))
	if bare, err := bareRSSPerHost(ctx, env, srv.DataDir, idDir, n, fleetSettle); err != nil {
		env.Logf("fleet: bare grpc-go baseline failed: %v", err)
		rssRow.Note = "bare grpc-go baseline failed: " + err.Error()
	} else if bare > 0 {
		rssRow.Baseline, rssRow.Ratio = "bare grpc-go TLS stream per host", float64(perHost)/float64(bare)
		rssRow.Extra["bare_grpc_kb_per_host"] = float64(bare) / 1024
	}
	rows := []Row{rssRow}
	env.Logf("fleet: %d hosts connected in %s; server RSS %.1f MB idle, %.1f MB connected: %.1f KB/host",
		n, connectTook.Round(time.Millisecond), float64(rss0)/(1<<20), float64(rssN)/(1<<20), float64(perHost)/1024)

	// 2. Batch stop of all N.
	f.prof.fetch(ctx, fmt.Sprintf("fleet-n%d-batch-cpu", n), "profile?seconds=15")
	batch, err := f.batchStop(ctx, ids)
	if err != nil {
		return rows, fmt.Errorf("batch stop: %w", err)
	}
	batchRow := Row{Bench: "fleet", Case: fmt.Sprintf("batch stop, %d hosts", n), N: n,
		P50Ms: Ms(batch.took), PerSec: float64(n) / batch.took.Seconds(),
		Extra: map[string]float64{"accept_ms": Ms(batch.accept), "tasks": float64(len(batch.final))},
		Note:  strings.TrimSpace(fmt.Sprintf("one sample: request to final task seen through WatchTask; %s %s", batch.summary(), batch.note))}
	if n == fleetTargetN {
		batchRow.Check("final ≤ 15 s", batch.ok() && batch.took <= fleetBatchTarget)
	}
	rows = append(rows, batchRow)
	env.Logf("fleet: batch stop of %d hosts final after %s (%s)", n, batch.took.Round(time.Millisecond), batch.summary())
	if err := sims.stop(); err != nil {
		return rows, err
	}

	// 3. Reconnect storm with a batch stop in flight.
	storm, err := f.storm(ctx, n, ids)
	if storm != nil {
		rows = append(rows, *storm)
	}
	return rows, err
}

// storm runs the reconnect storm of n hosts (ids) and returns its row.
func (f *fleetRun) storm(ctx context.Context, n int, ids []int64) (*Row, error) {
	env, srv := f.env, f.srv
	sims, err := f.startSims(ctx, n, fleetStopDelay)
	if err != nil {
		return nil, err
	}
	defer func() { _ = sims.stop() }() // after the checked stop below, a no-op; on an early return, cleanup
	if _, err := f.waitConnected(ctx, sims, n, 60*time.Second+time.Duration(n)*10*time.Millisecond); err != nil {
		return nil, err
	}
	// Stable connections: agentd resets its backoff after 10 s up.
	if err := sleepCtx(ctx, 11*time.Second); err != nil {
		return nil, err
	}
	base := sims.total()
	created, note, err := f.createBatches(ctx, ids)
	if err != nil {
		return nil, err
	}
	// Restart once half of the hosts have their command: some branches are
	// then waiting for a result, others have not been dispatched.
	inflight := Poll(ctx, 60*time.Second, 20*time.Millisecond, "stop commands to reach half of the hosts", func() (bool, error) {
		return sims.total().Commands-base.Commands >= int64(n/2), sims.err()
	})
	if inflight != nil {
		env.Logf("fleet: %v; restarting the server anyway", inflight)
	}
	atStop := sims.total()
	stopBegan := time.Now()
	if err := srv.Stop(); err != nil {
		return nil, err
	}
	stopTook := time.Since(stopBegan)
	if err := Poll(ctx, 30*time.Second, 20*time.Millisecond, "the simulator to see every stream end", func() (bool, error) {
		return sims.total().Connected == 0, sims.err()
	}); err != nil {
		return nil, err
	}
	t0 := time.Now()
	if err := srv.Launch(ctx); err != nil {
		return nil, err
	}
	readyTook := time.Since(t0)
	f.prof.fetch(ctx, fmt.Sprintf("fleet-n%d-storm-cpu", n), "profile?seconds=30")
	var back time.Time
	if err := Poll(ctx, 5*time.Minute, 50*time.Millisecond, fmt.Sprintf("all %d hosts to reconnect", n), func() (bool, error) {
		var ok bool
		back, ok = sims.allConnectedSince(t0, n)
		return ok, sims.err()
	}); err != nil {
		return nil, err
	}
	took := back.Sub(t0)
	peak, hist := sims.welcomeRate(t0, back)

	final, err := f.watchAll(ctx, created)
	if err != nil {
		return nil, fmt.Errorf("the batch stop across the restart: %w", err)
	}
	var b fleetBatch
	for _, t := range final {
		b.final = append(b.final, t.task)
	}
	r := Row{Bench: "fleet", Case: fmt.Sprintf("reconnect storm, %d hosts", n), N: n, P50Ms: Ms(took), PerSec: peak,
		Extra: map[string]float64{
			"server_stop_ms":  Ms(stopTook),
			"server_ready_ms": Ms(readyTook),
			"cmds_at_restart": float64(atStop.Commands - base.Commands),
			"done_at_restart": float64(atStop.Results - base.Results),
		},
		Note: strings.TrimSpace(fmt.Sprintf("batch stop across the restart: %s p50 = new server start to all %d connected; rate = peak welcomes in 1 s; the batch stop (%s per host) was in flight at the restart %s",
			b.summary(), n, fleetStopDelay, note))}
	r.Extra["batch_successful"] = 0
	if b.ok() {
		r.Extra["batch_successful"] = 1
	}
	for s, c := range hist {
		r.Extra[fmt.Sprintf("s%02d", s)] = c
	}
	if n == fleetTargetN {
		r.Check("all back ≤ 30 s", took <= fleetReconnectTarget)
	}
	env.Logf("fleet: %d hosts back %s after the new server started (peak %.0f/s); batch task %s", n,
		took.Round(time.Millisecond), peak, b.summary())
	err = sims.stop()
	// A restart must fail no task by itself: every simulated agent was alive.
	if !b.ok() {
		err = errors.Join(fmt.Errorf("reconnect storm, %d hosts: the batch stop across the server restart did not end SUCCESSFUL: %s", n, b.summary()), err)
	}
	return &r, err
}
