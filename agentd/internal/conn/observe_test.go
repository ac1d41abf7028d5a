package conn

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"agentplane/agentd/internal/proc"
	"agentplane/agentd/internal/state"
	agentv1 "agentplane/gen/agentplane/agent/v1"
)

// obsRunner is a Runner with *proc.Stopper's optional interfaces
// (ObservingRunner, CheckingRunner) over simulated processes that the test
// changes. Scan counts the full scans agentd asks for; the scans a stop
// makes itself are the Runner's business.
type obsRunner struct {
	mu         sync.Mutex
	procs      []proc.Target
	scans      int // Scan calls
	checks     int // Running calls
	specReads  int // ReadStartSpec calls
	stops      int // StopAllObserved calls
	plainStops int // StopAll calls
	startSpecs []proc.StartSpec

	left          []proc.Target // what StopAllObserved returns
	observed      []proc.Target // what StopAllObserved's observe got
	readsAtSignal int           // specReads when StopAllObserved "signalled"
}

var (
	_ ObservingRunner = (*obsRunner)(nil)
	_ CheckingRunner  = (*obsRunner)(nil)
)

func newObsRunner(ts ...proc.Target) *obsRunner { return &obsRunner{procs: ts} }

// base is a simulated base process.
func base(pid int32, name string) proc.Target {
	exe := "/home/admin/ocp_agent/bin/" + name
	return proc.Target{PID: pid, Name: name, Exe: exe, Cmdline: exe, CreateTime: time.Unix(1700000000+int64(pid), 0)}
}

func (r *obsRunner) Scan(ctx context.Context) ([]proc.Target, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.scans++
	return slices.Clone(r.procs), ctx.Err()
}

func (r *obsRunner) Running(ctx context.Context, ts []proc.Target) (bool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.checks++
	for _, t := range ts {
		if !slices.ContainsFunc(r.procs, func(p proc.Target) bool { return p.PID == t.PID && p.CreateTime.Equal(t.CreateTime) }) {
			return false, nil
		}
	}
	return true, ctx.Err()
}

// ReadStartSpec reads the command line from Target.Cmdline, so that a test
// changes how a process is started by changing its Cmdline.
func (r *obsRunner) ReadStartSpec(_ context.Context, t proc.Target) (proc.StartSpec, error) {
	r.mu.Lock()
	r.specReads++
	r.mu.Unlock()
	return proc.StartSpec{Name: t.Name, PID: t.PID, CreateTime: t.CreateTime, Exe: t.Exe,
		Args: []string{t.Cmdline}, Env: []string{"A=1"}, Dir: "/", User: "admin", UID: 500, GID: 500}, nil
}

func (r *obsRunner) StopAllObserved(_ context.Context, _ time.Duration, emit func(proc.Event),
	observe func([]proc.Target)) ([]proc.Target, error) {
	r.mu.Lock()
	r.stops++
	found := slices.Clone(r.procs)
	r.mu.Unlock()
	observe(found)
	r.mu.Lock()
	r.observed, r.readsAtSignal = found, r.specReads
	r.procs = nil
	left := r.left
	r.mu.Unlock()
	for _, t := range found {
		emit(proc.Event{Kind: proc.EventSigtermSent, Target: t, Time: time.Now(), Message: "sigterm"})
		emit(proc.Event{Kind: proc.EventExited, Target: t, Time: time.Now(), Message: "exited"})
	}
	return left, nil
}

func (r *obsRunner) StopAll(ctx context.Context, grace time.Duration, emit func(proc.Event)) error {
	r.mu.Lock()
	r.plainStops++
	r.mu.Unlock()
	_, err := r.StopAllObserved(ctx, grace, emit, func([]proc.Target) {})
	return err
}

func (r *obsRunner) StartAll(_ context.Context, specs []proc.StartSpec, _ func(proc.Event)) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.startSpecs = specs
	return 0, nil
}

func (r *obsRunner) set(ts ...proc.Target) {
	r.mu.Lock()
	r.procs = ts
	r.mu.Unlock()
}

// counts returns Scan and Running calls.
func (r *obsRunner) counts() (scans, checks int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.scans, r.checks
}

// scanCounter is a plain Runner (no optional interface) that counts the
// Scan calls of the Runner it wraps.
type scanCounter struct {
	Runner
	scans atomic.Int64
}

func (c *scanCounter) Scan(ctx context.Context) ([]proc.Target, error) {
	c.scans.Add(1)
	return c.Runner.Scan(ctx)
}

// heartbeat returns the next heartbeat's processes, skipping other messages.
func (fs *fakeStream) heartbeat(t *testing.T) []*agentv1.Process {
	t.Helper()
	deadline := time.After(waitFor)
	for {
		select {
		case m := <-fs.reqs:
			if hb := m.GetHeartbeat(); hb != nil {
				return hb.GetProcesses()
			}
		case <-deadline:
			t.Fatal("no heartbeat from agentd")
			return nil
		}
	}
}

// untilResult returns the processes of the last heartbeat before the next
// result, and the result.
func (fs *fakeStream) untilResult(t *testing.T) ([]*agentv1.Process, bool, *agentv1.CommandResult) {
	t.Helper()
	deadline := time.After(waitFor)
	var last []*agentv1.Process
	var sawHeartbeat bool
	for {
		select {
		case m := <-fs.reqs:
			if hb := m.GetHeartbeat(); hb != nil {
				last, sawHeartbeat = hb.GetProcesses(), true
			}
			if r := m.GetResult(); r != nil {
				return last, sawHeartbeat, r
			}
		case <-deadline:
			t.Fatal("no result from agentd")
			return nil, false, nil
		}
	}
}

func pids(ps []*agentv1.Process) []int32 {
	out := make([]int32, len(ps))
	for i, p := range ps {
		out[i] = p.GetPid()
	}
	return out
}

// With an ObservingRunner a stop asks for no full scan of its own: the
// stop's first scan records how the processes were started (before any
// signal, a process new since the Hello included) and its last scan is the
// report sent right before the result.
func TestStopUsesItsOwnScans(t *testing.T) {
	agentd, mgr, mon := base(101, "ocp_agentd"), base(102, "ocp_mgragent"), base(103, "ocp_monagent")
	r := newObsRunner(agentd, mgr, mon)
	ancestor := base(90, "ocp_agentd") // a base process the stop leaves alone
	r.left = []proc.Target{ancestor}
	// No heartbeat: every scan counted is the Hello's or the stop's.
	h := startWith(t, r, t.TempDir(), time.Hour, time.Hour)
	fs := h.stream()
	if got := pids(fs.hello.GetProcesses()); !slices.Equal(got, []int32{101, 102, 103}) {
		t.Fatalf("hello processes %v", got)
	}
	poll(t, "specs recorded at Hello", func() bool { r.mu.Lock(); defer r.mu.Unlock(); return r.specReads == 3 })

	// ocp_monagent was restarted (same command line, new pid) since the Hello.
	mon2 := base(104, "ocp_monagent")
	r.set(agentd, mgr, mon2)
	scans, _ := r.counts()
	fs.push(t, command(30, 1, time.Minute))
	report, ok, res := fs.untilResult(t)
	if res.GetOutcome() != agentv1.CommandOutcome_COMMAND_OUTCOME_SUCCEEDED || res.GetMessage() != "stopped 3 OCP Agent base processes" {
		t.Fatalf("result %v", res)
	}
	if !ok || !slices.Equal(pids(report), []int32{ancestor.PID}) {
		t.Errorf("report before the result: %v (heartbeat %v), want the stop's last scan %v", pids(report), ok, []int32{ancestor.PID})
	}
	r.mu.Lock()
	stops, plain, readsAtSignal, observed := r.stops, r.plainStops, r.readsAtSignal, r.observed
	r.mu.Unlock()
	if after, _ := r.counts(); after != scans {
		t.Errorf("the stop made %d full scans of agentd's own, want 0", after-scans)
	}
	if stops != 1 || plain != 0 {
		t.Errorf("StopAllObserved %d times, StopAll %d times; want 1, 0", stops, plain)
	}
	if len(observed) != 3 || readsAtSignal != 4 {
		t.Errorf("observe got %d processes, %d specs read before the signals; want 3, 4 (the restarted ocp_monagent's)", len(observed), readsAtSignal)
	}

	// The spec read during the stop is used by the next start, though the
	// state dir was not rewritten for a new pid alone.
	fs.push(t, startCommand(31, 1, time.Minute))
	if _, _, res := fs.untilResult(t); res.GetOutcome() != agentv1.CommandOutcome_COMMAND_OUTCOME_SUCCEEDED {
		t.Fatalf("start result %v", res)
	}
	r.mu.Lock()
	specs := r.startSpecs
	r.mu.Unlock()
	if i := slices.IndexFunc(specs, func(sp proc.StartSpec) bool { return sp.Name == "ocp_monagent" }); i < 0 || specs[i].PID != mon2.PID {
		t.Errorf("StartAll got %+v, want ocp_monagent's spec read from pid %d", specs, mon2.PID)
	}
}

// A Runner without ObservingRunner is scanned twice for a stop: before it
// (to record the start specs) and after it (the report before the result).
func TestStopScansPlainRunner(t *testing.T) {
	r := &scanCounter{Runner: newFakeRunner(false)}
	h := startWith(t, r, t.TempDir(), time.Hour, time.Hour)
	fs := h.stream()
	before := r.scans.Load()
	fs.push(t, command(32, 1, time.Minute))
	report, ok, res := fs.untilResult(t)
	if res.GetOutcome() != agentv1.CommandOutcome_COMMAND_OUTCOME_SUCCEEDED || !ok || len(report) != 1 {
		t.Fatalf("result %v after report %v (%v)", res, report, ok)
	}
	if n := r.scans.Load() - before; n > 2 {
		t.Errorf("a stop made %d full scans, want at most 2", n)
	}
}

// Between full scans a heartbeat re-checks the known processes: no scan
// while they run, a scan at once when one dies (the next heartbeat reports
// it gone), and a process started meanwhile outside agentd is not seen
// before the next full scan.
func TestHeartbeatBetweenScans(t *testing.T) {
	agentd, mgr, mon := base(101, "ocp_agentd"), base(102, "ocp_mgragent"), base(103, "ocp_monagent")
	r := newObsRunner(agentd, mgr, mon)
	h := startWith(t, r, t.TempDir(), 0, time.Hour)
	fs := h.stream()
	for range 3 {
		if got := pids(fs.heartbeat(t)); !slices.Equal(got, []int32{101, 102, 103}) {
			t.Fatalf("heartbeat processes %v", got)
		}
	}
	if scans, checks := r.counts(); scans != 1 || checks < 3 {
		t.Fatalf("%d scans, %d checks after 3 heartbeats; want 1 (the Hello's) and at least 3", scans, checks)
	}

	r.set(agentd, mon) // ocp_mgragent died
	// The heartbeat in flight may have been built before; the one after it
	// reports the death.
	var got []int32
	for range 2 {
		if got = pids(fs.heartbeat(t)); slices.Equal(got, []int32{101, 103}) {
			break
		}
	}
	if !slices.Equal(got, []int32{101, 103}) {
		t.Fatalf("heartbeats after ocp_mgragent died report %v, want [101 103]", got)
	}
	if scans, _ := r.counts(); scans != 2 {
		t.Errorf("%d scans after a death, want 2", scans)
	}

	r.set(agentd, mon, base(105, "ocp_mgragent")) // started by hand
	for range 3 {
		if got := pids(fs.heartbeat(t)); !slices.Equal(got, []int32{101, 103}) {
			t.Fatalf("heartbeat processes %v before the next full scan, want [101 103]", got)
		}
	}
	if scans, _ := r.counts(); scans != 2 {
		t.Errorf("%d scans while the known processes ran, want 2", scans)
	}
}

// Every ScanEvery a heartbeat scans in full, and finds a base process that
// started outside agentd.
func TestScanEveryFindsNewProcess(t *testing.T) {
	r := newObsRunner()
	h := startWith(t, r, t.TempDir(), 0, 300*time.Millisecond)
	fs := h.stream()
	if n := len(fs.hello.GetProcesses()); n != 0 {
		t.Fatalf("hello with %d processes", n)
	}
	begin := time.Now()
	r.set(base(101, "ocp_agentd"))
	for len(fs.heartbeat(t)) == 0 {
		if time.Since(begin) > waitFor {
			t.Fatal("a new process never reported")
		}
	}
	if scans, checks := r.counts(); scans < 2 || checks == 0 {
		t.Errorf("%d scans, %d checks; want a periodic scan and checks between", scans, checks)
	}
	t.Logf("reported after %s", time.Since(begin))
}

// The state dir is rewritten when how a process is started changes, not
// when the same command line runs under a new pid.
func TestSpecsSavedWhenStartChanges(t *testing.T) {
	st, err := state.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	r := newObsRunner()
	rec := newRecorder(r, st, zerolog.New(zerolog.NewTestWriter(t)))
	ctx := context.Background()
	saved := func() proc.StartSpec {
		t.Helper()
		specs, err := st.StartSpecs()
		if err != nil || len(specs) != 1 {
			t.Fatalf("stored specs %+v, %v", specs, err)
		}
		return specs[0]
	}

	mgr := base(102, "ocp_mgragent")
	rec.observe(ctx, []proc.Target{mgr})
	if sp := saved(); sp.PID != 102 {
		t.Fatalf("stored spec from pid %d, want 102", sp.PID)
	}

	restarted := base(103, "ocp_mgragent")
	rec.observe(ctx, []proc.Target{restarted})
	if sp := saved(); sp.PID != 102 {
		t.Errorf("stored spec from pid %d after a restart with the same command line, want 102 (not rewritten)", sp.PID)
	}
	if sp := rec.specs(); len(sp) != 1 || sp[0].PID != 103 {
		t.Errorf("recorded specs %+v, want pid 103's", sp)
	}

	changed := base(104, "ocp_mgragent")
	changed.Cmdline += " --new-flag"
	rec.observe(ctx, []proc.Target{changed})
	if sp := saved(); sp.PID != 104 || !slices.Equal(sp.Args, []string{changed.Cmdline}) {
		t.Errorf("stored spec %+v after the command line changed, want pid 104's", sp)
	}
	if r.specReads != 3 {
		t.Errorf("%d spec reads, want one per new process", r.specReads)
	}
}
