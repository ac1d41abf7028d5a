package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	hostv1 "agentplane/gen/agentplane/host/v1"
	taskv1 "agentplane/gen/agentplane/task/v1"
)

// fleet: agentplane-sim opens N agent streams, each a distinct enrolled host
// on its own TLS connection speaking the real protocol, against one server.
// For N in 1,000, 5,000 and 10,000 (short mode: 1,000) it measures
//
//   - the server's RSS per connected host: the server restarted fresh (same
//     data dir: the hosts stay enrolled) and idle with no agent, then with N
//     hosts ONLINE, (RSS_N - RSS_0) / N;
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

// ---- batch stop ----

type fleetBatch struct {
	took, accept time.Duration
	final        []*taskv1.Task
	note         string
}

func (b fleetBatch) ok() bool {
	for _, t := range b.final {
		if t.GetStatus() != taskv1.TaskStatus_TASK_STATUS_SUCCESSFUL {
			return false
		}
	}
	return len(b.final) > 0
}

// summary names the tasks' final states, with the first failed subtask's
// message.
func (b fleetBatch) summary() string {
	var parts []string
	for _, t := range b.final {
		failed := 0
		var first string
		for _, st := range t.GetSubtasks() {
			if st.GetStatus() == taskv1.SubtaskStatus_SUBTASK_STATUS_FAILED {
				if failed == 0 {
					first = fmt.Sprintf("%s: %s", st.GetName(), st.GetMessage())
				}
				failed++
			}
		}
		s := fmt.Sprintf("task %d %s", t.GetId(), strings.TrimPrefix(t.GetStatus().String(), "TASK_STATUS_"))
		if failed > 0 {
			s += fmt.Sprintf(" (%d subtasks failed, first %q)", failed, first)
		}
		parts = append(parts, s)
	}
	if len(parts) > 3 {
		parts = append(parts[:3], fmt.Sprintf("and %d more", len(parts)-3))
	}
	return strings.Join(parts, ", ") + ";"
}

// batchStop stops ids in one batch task (or in chunks when the server
// refuses the size) and waits for the final status through WatchTask.
func (f *fleetRun) batchStop(ctx context.Context, ids []int64) (fleetBatch, error) {
	began := time.Now()
	created, note, err := f.createBatches(ctx, ids)
	if err != nil {
		return fleetBatch{}, err
	}
	accept := time.Since(began)
	final, err := f.watchAll(ctx, created)
	if err != nil {
		return fleetBatch{}, err
	}
	last := began
	for _, t := range final {
		if t.seen.After(last) {
			last = t.seen
		}
	}
	b := fleetBatch{took: last.Sub(began), accept: accept, note: note}
	for _, t := range final {
		b.final = append(b.final, t.task)
	}
	return b, nil
}

// fleetMaxBatch finds the server's batch bound in its refusal ("...: 10000
// hosts, must be 1..2000").
var fleetMaxBatch = regexp.MustCompile(`hosts, must be 1\.\.(\d+)`)

// createBatches creates one batch stop task for ids; when the server
// refuses that many hosts (InvalidArgument naming its bound), it creates a
// task per chunk of the bound instead and says so in note.
func (f *fleetRun) createBatches(ctx context.Context, ids []int64) (created []int64, note string, err error) {
	resp, err := f.hosts.BatchStopAgents(ctx, &hostv1.BatchStopAgentsRequest{HostIds: ids}, grpc.WaitForReady(true), grpc.MaxCallRecvMsgSize(fleetMaxRecvMsg))
	if err == nil {
		return []int64{resp.GetTask().GetId()}, "", nil
	}
	st := status.Convert(err)
	m := fleetMaxBatch.FindStringSubmatch(st.Message())
	if st.Code() != codes.InvalidArgument || m == nil {
		return nil, "", fmt.Errorf("BatchStopAgents of %d hosts: %w", len(ids), err)
	}
	size, _ := strconv.Atoi(m[1])
	if size < 1 || size >= len(ids) {
		return nil, "", fmt.Errorf("BatchStopAgents of %d hosts: %w", len(ids), err)
	}
	for chunk := range slices.Chunk(ids, size) {
		resp, err := f.hosts.BatchStopAgents(ctx, &hostv1.BatchStopAgentsRequest{HostIds: chunk}, grpc.WaitForReady(true), grpc.MaxCallRecvMsgSize(fleetMaxRecvMsg))
		if err != nil {
			return created, "", fmt.Errorf("BatchStopAgents of %d hosts (a chunk): %w", len(chunk), err)
		}
		created = append(created, resp.GetTask().GetId())
	}
	note = fmt.Sprintf("SPLIT: the server refused one batch of %d hosts (%s), so %d batch tasks of at most %d ran at once.",
		len(ids), st.Message(), len(created), size)
	return created, note, nil
}

type fleetFinal struct {
	task *taskv1.Task
	seen time.Time
}

// watchAll follows each task through WatchTask until it is final, watching
// again when the stream breaks (a server restart).
func (f *fleetRun) watchAll(ctx context.Context, ids []int64) ([]fleetFinal, error) {
	out := make([]fleetFinal, len(ids))
	errs := make([]error, len(ids))
	var wg sync.WaitGroup
	for i, id := range ids {
		wg.Go(func() { out[i], errs[i] = f.watch(ctx, id) })
	}
	wg.Wait()
	return out, errors.Join(errs...)
}

func (f *fleetRun) watch(ctx context.Context, id int64) (fleetFinal, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	var last error
	for try := 0; try < 20; try++ {
		if try > 0 {
			if err := sleepCtx(ctx, 500*time.Millisecond); err != nil {
				return fleetFinal{}, fmt.Errorf("watching task %d: %w (last: %w)", id, err, last)
			}
		}
		w, err := f.tasks.WatchTask(ctx, &taskv1.WatchTaskRequest{Id: id}, grpc.WaitForReady(true), grpc.MaxCallRecvMsgSize(fleetMaxRecvMsg))
		if err != nil {
			last = err
			continue
		}
		for {
			resp, err := w.Recv()
			if err != nil {
				last = err
				break
			}
			t := resp.GetTask()
			if s := t.GetStatus(); s == taskv1.TaskStatus_TASK_STATUS_SUCCESSFUL || s == taskv1.TaskStatus_TASK_STATUS_FAILED {
				return fleetFinal{task: t, seen: time.Now()}, nil
			}
		}
		if ctx.Err() != nil {
			break
		}
	}
	return fleetFinal{}, fmt.Errorf("watching task %d: %w", id, last)
}

// waitConnected waits until the simulators report n hosts connected and the
// server lists the n hosts ONLINE, and returns their ids by host index.
func (f *fleetRun) waitConnected(ctx context.Context, sims *fleetSims, n int, timeout time.Duration) ([]int64, error) {
	if err := Poll(ctx, timeout, 100*time.Millisecond, fmt.Sprintf("the simulators to connect %d hosts", n), func() (bool, error) {
		connected := sims.total().Connected
		return sims.ready() && connected == int64(n), sims.err()
	}); err != nil {
		return nil, fmt.Errorf("%w (now %+v)", err, sims.total())
	}
	var ids []int64
	err := Poll(ctx, 60*time.Second, 250*time.Millisecond, fmt.Sprintf("the server to list %d hosts ONLINE", n), func() (bool, error) {
		var err error
		ids, err = f.onlineIDs(ctx, n)
		return err == nil && ids != nil, nil
	})
	return ids, err
}

// onlineIDs returns the ids of hosts bench-00000..n-1 when all of them are
// ONLINE, nil when some are not.
func (f *fleetRun) onlineIDs(ctx context.Context, n int) ([]int64, error) {
	byName := map[string]*hostv1.Host{}
	const size = 2000
	for page := int32(1); ; page++ {
		resp, err := f.hosts.ListHosts(ctx, &hostv1.ListHostsRequest{Page: page, Size: size}, grpc.MaxCallRecvMsgSize(fleetMaxRecvMsg))
		if err != nil {
			return nil, err
		}
		for _, h := range resp.GetHosts() {
			byName[h.GetName()] = h
		}
		if len(resp.GetHosts()) < size {
			break
		}
	}
	ids := make([]int64, n)
	for i := range n {
		h := byName[fmt.Sprintf("%s-%05d", fleetPrefix, i)]
		if h == nil || h.GetStatus() != hostv1.HostStatus_HOST_STATUS_ONLINE {
			return nil, nil
		}
		ids[i] = h.GetId()
	}
	return ids, nil
}

// ---- the simulator processes ----

// startSims starts simulator processes for hosts 0..n-1, split evenly over
// as few processes as the open-file limit allows.
func (f *fleetRun) startSims(ctx context.Context, n int, stopDelay time.Duration) (*fleetSims, error) {
	k := (n + f.perSim - 1) / f.perSim
	sims := &fleetSims{}
	first := 0
	f.starts++
	for j := range k {
		hosts := n / k
		if j < n%k {
			hosts++
		}
		argv := []string{f.env.Binary("agentplane-sim"), "--server", f.srv.GRPCAddr, "--ca-file", f.srv.CAFile,
			"--hosts", strconv.Itoa(hosts), "--first", strconv.Itoa(first), "--state-dir", f.stateDir,
			"--name-prefix", fleetPrefix, "--enroll-user", AdminUser, "--enroll-password-env", "AGENTPLANE_ADMIN_PASSWORD",
			"--stop-delay", stopDelay.String(), "--stats-interval", fleetStatsEvery.String(), "--log-level", "warn"}
		p, err := f.env.Start(ctx, fmt.Sprintf("sim-n%d-%d-%d", n, f.starts, j), []string{"AGENTPLANE_ADMIN_PASSWORD=" + AdminPassword}, argv...)
		if err != nil {
			_ = sims.stop() // the start error is the one to report
			return nil, err
		}
		sims.procs = append(sims.procs, &fleetSim{p: p})
		first += hosts
	}
	return sims, ctx.Err()
}

// fleetStats is one stats line of agentplane-sim.
type fleetStats struct {
	Event       string    `json:"event"`
	T           time.Time `json:"t"`
	Enrolled    int64     `json:"enrolled"`
	Connected   int64     `json:"connected"`
	Welcomes    int64     `json:"welcomes"`
	Disconnects int64     `json:"disconnects"`
	Commands    int64     `json:"commands"`
	Results     int64     `json:"results"`
	Failed      int64     `json:"failed"`
}

// fleetSim reads one simulator's stats lines from its log as they come.
type fleetSim struct {
	p       *Process
	off     int64
	partial []byte
	lines   []fleetStats
	ready   bool
}

// read parses the lines appended to the log since the last read.
func (s *fleetSim) read() error {
	fh, err := os.Open(s.p.LogPath)
	if err != nil {
		return err
	}
	defer fh.Close()
	if _, err := fh.Seek(s.off, io.SeekStart); err != nil {
		return err
	}
	b, err := io.ReadAll(fh)
	if err != nil {
		return err
	}
	s.off += int64(len(b))
	b = append(s.partial, b...)
	i := bytes.LastIndexByte(b, '\n')
	if i < 0 {
		s.partial = b
		return nil
	}
	s.partial = slices.Clone(b[i+1:])
	for line := range bytes.SplitSeq(b[:i], []byte("\n")) {
		if !bytes.HasPrefix(line, []byte(`{"t":`)) && !bytes.HasPrefix(line, []byte(`{"event":`)) {
			continue // a log line
		}
		var st fleetStats
		if err := json.Unmarshal(line, &st); err != nil {
			return fmt.Errorf("%s: malformed stats line %q: %w", s.p.Name, line, err)
		}
		if st.Event == "ready" {
			s.ready = true
		}
		s.lines = append(s.lines, st)
	}
	return nil
}

func (s *fleetSim) last() fleetStats {
	if len(s.lines) == 0 {
		return fleetStats{}
	}
	return s.lines[len(s.lines)-1]
}

// fleetSims are the simulator processes of one fleet.
type fleetSims struct {
	mu      sync.Mutex
	procs   []*fleetSim
	stopped bool
}

// err reads new lines and reports a simulator that exited or printed a
// malformed line.
func (fs *fleetSims) err() error {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	for _, s := range fs.procs {
		if err := s.read(); err != nil {
			return err
		}
		if s.p.Exited() {
			return fmt.Errorf("%s exited: %w\n%s", s.p.Name, s.p.err, s.p.Tail(20))
		}
	}
	return nil
}

func (fs *fleetSims) ready() bool {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	for _, s := range fs.procs {
		if !s.ready {
			return false
		}
	}
	return true
}

// total sums the simulators' latest lines (after reading new ones).
func (fs *fleetSims) total() fleetStats {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	var t fleetStats
	for _, s := range fs.procs {
		_ = s.read()
		l := s.last()
		t.Enrolled += l.Enrolled
		t.Connected += l.Connected
		t.Welcomes += l.Welcomes
		t.Disconnects += l.Disconnects
		t.Commands += l.Commands
		t.Results += l.Results
		t.Failed += l.Failed
	}
	return t
}

// allConnectedSince returns the time of the first stats line after t0 at
// which the simulators' connected hosts added up to n.
func (fs *fleetSims) allConnectedSince(t0 time.Time, n int) (time.Time, bool) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	type ev struct {
		t         time.Time
		sim       int
		connected int64
	}
	var evs []ev
	for j, s := range fs.procs {
		_ = s.read()
		for _, l := range s.lines {
			evs = append(evs, ev{l.T, j, l.Connected})
		}
	}
	slices.SortStableFunc(evs, func(a, b ev) int { return a.t.Compare(b.t) })
	cur := make([]int64, len(fs.procs))
	for _, e := range evs {
		cur[e.sim] = e.connected
		var sum int64
		for _, c := range cur {
			sum += c
		}
		if !e.t.Before(t0) && sum == int64(n) {
			return e.t, true
		}
	}
	return time.Time{}, false
}

// welcomeRate returns the most welcomes in any 1 s window between t0 and
// end, and the welcomes in each second from t0 (at most fleetHistMax).
func (fs *fleetSims) welcomeRate(t0, end time.Time) (peak float64, hist []float64) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	type delta struct {
		t time.Time
		n int64
	}
	var ds []delta
	for _, s := range fs.procs {
		for i := 1; i < len(s.lines); i++ {
			l := s.lines[i]
			if d := l.Welcomes - s.lines[i-1].Welcomes; d > 0 && !l.T.Before(t0) && !l.T.After(end.Add(time.Second)) {
				ds = append(ds, delta{l.T, d})
			}
		}
	}
	slices.SortFunc(ds, func(a, b delta) int { return a.t.Compare(b.t) })
	var win int64
	j := 0
	for _, d := range ds {
		win += d.n
		for d.t.Sub(ds[j].t) >= time.Second {
			win -= ds[j].n
			j++
		}
		peak = max(peak, float64(win))
	}
	secs := min(int(end.Sub(t0)/time.Second)+1, fleetHistMax)
	hist = make([]float64, secs)
	for _, d := range ds {
		if s := int(d.t.Sub(t0) / time.Second); s < secs {
			hist[s] += float64(d.n)
		}
	}
	return peak, hist
}

// rss is the simulators' total RSS.
func (fs *fleetSims) rss() int64 {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	var sum int64
	for _, s := range fs.procs {
		if r, err := RSS(s.p.PID()); err == nil {
			sum += r
		}
	}
	return sum
}

// stop SIGTERMs every simulator and waits for each to exit (it must within
// 15 s, and with status 0). Stopping again does nothing.
func (fs *fleetSims) stop() error {
	fs.mu.Lock()
	procs := fs.procs
	if fs.stopped {
		procs = nil
	}
	fs.stopped = true
	fs.mu.Unlock()
	for _, s := range procs {
		if !s.p.Exited() {
			_ = s.p.Cmd.Process.Signal(syscall.SIGTERM) // one that exited meanwhile is reaped below
		}
	}
	var errs []error
	for _, s := range procs {
		select {
		case <-s.p.Done():
		case <-time.After(15 * time.Second):
			s.p.Kill()
			errs = append(errs, fmt.Errorf("%s did not exit within 15 s of SIGTERM; killed", s.p.Name))
			continue
		}
		if s.p.err != nil && !errors.Is(s.p.err, os.ErrProcessDone) {
			var ee interface{ ExitCode() int }
			if errors.As(s.p.err, &ee) && ee.ExitCode() != 0 {
				errs = append(errs, fmt.Errorf("%s: %w\n%s", s.p.Name, s.p.err, s.p.Tail(10)))
			}
		}
	}
	return errors.Join(errs...)
}

// fleetProf fetches the server's profiles through --pprof-addr when
// AGENTPLANE_BENCH_PPROF names a directory: <dir>/<name>.pprof. Unset, it
// does nothing (every method is safe on nil).
type fleetProf struct {
	dir  string
	addr string
	wg   sync.WaitGroup
	mu   sync.Mutex
	errs []error
}

func newFleetProf(ctx context.Context) *fleetProf {
	dir := os.Getenv("AGENTPLANE_BENCH_PPROF")
	if dir == "" {
		return nil
	}
	addr, err := freeAddr(ctx)
	if err != nil || os.MkdirAll(dir, 0o755) != nil {
		return nil
	}
	return &fleetProf{dir: dir, addr: addr}
}

// args are the server flags that serve pprof.
func (p *fleetProf) args() []string {
	if p == nil {
		return nil
	}
	return []string{"--pprof-addr", p.addr}
}

// fetch gets /debug/pprof/<what> in the background into <dir>/<name>.pprof.
func (p *fleetProf) fetch(ctx context.Context, name, what string) {
	if p == nil {
		return
	}
	p.wg.Go(func() {
		err := fetchTo(ctx, "http://"+p.addr+"/debug/pprof/"+what, filepath.Join(p.dir, name+".pprof"))
		if err != nil {
			p.mu.Lock()
			p.errs = append(p.errs, fmt.Errorf("%s: %w", name, err))
			p.mu.Unlock()
		}
	})
}

// wait waits for the fetches started so far.
func (p *fleetProf) wait() error {
	if p == nil {
		return nil
	}
	p.wg.Wait()
	return errors.Join(p.errs...)
}

// sleepCtx waits d or until ctx is done.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
