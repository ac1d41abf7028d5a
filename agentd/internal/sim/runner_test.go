package sim

import (
	"context"
	"crypto/x509"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"agentplane/agentd/internal/proc"
	"agentplane/internal/simplan"
)

// events records what a Runner emits.
type events struct {
	mu  sync.Mutex
	evs []proc.Event
}

func (e *events) emit(ev proc.Event) {
	e.mu.Lock()
	e.evs = append(e.evs, ev)
	e.mu.Unlock()
}

// trace is "<kind> <name>" per event.
func (e *events) trace() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []string
	for _, ev := range e.evs {
		out = append(out, ev.Kind.String()+" "+ev.Target.Name)
	}
	return out
}

func names(ts []proc.Target) []string {
	var out []string
	for _, t := range ts {
		out = append(out, t.Name)
	}
	return out
}

func scan(t *testing.T, r *Runner) []proc.Target {
	t.Helper()
	ts, err := r.Scan(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return ts
}

func TestScanStartsWithTheBaseProcesses(t *testing.T) {
	r := NewRunner(RunnerConfig{Host: 3}, nil)
	ts := scan(t, r)
	if !slices.Equal(names(ts), proc.BaseNames) {
		t.Fatalf("scan = %v, want %v", names(ts), proc.BaseNames)
	}
	for i, tg := range ts {
		if tg.PID != firstPID+int32(i) || tg.Exe != InstallHome+"/bin/"+tg.Name || !tg.CreateTime.Equal(bootTime) {
			t.Errorf("target %d = %+v", i, tg)
		}
		sp, err := r.ReadStartSpec(context.Background(), tg)
		if err != nil || sp.Name != tg.Name || sp.PID != tg.PID || !sp.CreateTime.Equal(tg.CreateTime) || sp.Exe != tg.Exe || len(sp.Args) == 0 {
			t.Errorf("spec of %s = %+v, %v", tg.Name, sp, err)
		}
	}
	// Another Runner (a restarted simulator) sees the same processes.
	if other := scan(t, NewRunner(RunnerConfig{Host: 3}, nil)); !slices.Equal(other, ts) {
		t.Errorf("a new runner scans %v, want %v", other, ts)
	}
}

func TestStopAllAtOnce(t *testing.T) {
	var st RunnerStats
	r := NewRunner(RunnerConfig{Host: 1}, &st)
	var ev events
	if err := r.StopAll(context.Background(), time.Second, ev.emit); err != nil {
		t.Fatalf("StopAll: %v", err)
	}
	want := []string{
		"found ocp_agentd", "sigterm_sent ocp_agentd", "exited ocp_agentd",
		"found ocp_mgragent", "sigterm_sent ocp_mgragent", "found ocp_monagent", "sigterm_sent ocp_monagent",
		"exited ocp_mgragent", "exited ocp_monagent",
	}
	if got := ev.trace(); !slices.Equal(got, want) {
		t.Errorf("events = %q, want %q", got, want)
	}
	if ts := scan(t, r); len(ts) != 0 {
		t.Errorf("after a stop, scan = %v", names(ts))
	}
	// Nothing left to stop is success, with no events.
	var again events
	if err := r.StopAll(context.Background(), time.Second, again.emit); err != nil || len(again.trace()) != 0 {
		t.Errorf("second StopAll = %v, events %q", err, again.trace())
	}
	if c, res, f := st.Commands.Load(), st.Results.Load(), st.Failed.Load(); c != 2 || res != 2 || f != 0 {
		t.Errorf("stats = %d commands, %d results, %d failed; want 2 2 0", c, res, f)
	}
}

func TestStopAllFails(t *testing.T) {
	var st RunnerStats
	r := NewRunner(RunnerConfig{Host: 1, FailRate: 1}, &st)
	var ev events
	err := r.StopAll(context.Background(), time.Second, ev.emit)
	var sr *proc.StillRunningError
	if !errors.As(err, &sr) || !errors.Is(err, proc.ErrStillRunning) || !slices.Equal(names(sr.Survivors), []string{"ocp_monagent"}) {
		t.Fatalf("StopAll = %v, want ocp_monagent still running", err)
	}
	if got := names(scan(t, r)); !slices.Equal(got, []string{"ocp_monagent"}) {
		t.Errorf("after a failed stop, scan = %v", got)
	}
	tr := ev.trace()
	if !slices.Contains(tr, "sigkill_sent ocp_monagent") || !slices.Contains(tr, "error ocp_monagent") || slices.Contains(tr, "exited ocp_monagent") {
		t.Errorf("events = %q", tr)
	}
	if st.Failed.Load() != 1 || st.Results.Load() != 1 {
		t.Errorf("stats: %d failed, %d results; want 1 1", st.Failed.Load(), st.Results.Load())
	}
}

func TestFails(t *testing.T) {
	const hosts = 20000
	for _, rate := range []float64{0, 0.05, 0.2, 0.5, 1} {
		n := 0
		for h := range hosts {
			if simplan.Fails(h, 1, rate) {
				n++
			}
			first, second := simplan.Fails(h, 1, rate), simplan.Fails(h, 1, rate)
			if first != second {
				t.Fatalf("simplan.Fails(%d, 1, %v) is not deterministic", h, rate)
			}
		}
		if got := float64(n) / hosts; got < rate-0.015 || got > rate+0.015 {
			t.Errorf("rate %v: %d of %d stops fail (%.3f)", rate, n, hosts, got)
		}
	}
	// The same host's later stops are decided anew.
	differ := 0
	for h := range 1000 {
		if simplan.Fails(h, 1, 0.5) != simplan.Fails(h, 2, 0.5) {
			differ++
		}
	}
	if differ < 400 || differ > 600 {
		t.Errorf("first and second stops of 1000 hosts differ %d times at rate 0.5; want about 500", differ)
	}
	// A Runner follows Fails stop by stop.
	for h := range 50 {
		r := NewRunner(RunnerConfig{Host: h, FailRate: 0.3}, nil)
		for n := uint64(1); n <= 3; n++ {
			r.mu.Lock()
			r.procs = nil
			for _, name := range proc.BaseNames {
				r.procs = append(r.procs, r.newTarget(name, bootTime))
			}
			r.mu.Unlock()
			err := r.StopAll(context.Background(), 0, nil)
			if got, want := err != nil, simplan.Fails(h, n, 0.3); got != want {
				t.Fatalf("host %d stop %d: failed %v, want %v", h, n, got, want)
			}
		}
	}
}

func TestStopAllDelay(t *testing.T) {
	const delay = 200 * time.Millisecond
	r := NewRunner(RunnerConfig{Host: 1, StopDelay: delay}, nil)
	began := time.Now()
	if err := r.StopAll(context.Background(), 0, nil); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(began); took < delay || took > delay+2*time.Second {
		t.Errorf("a stop with a %s delay took %s", delay, took)
	}
}

func TestStopAllCanceled(t *testing.T) {
	var st RunnerStats
	r := NewRunner(RunnerConfig{Host: 1, StopDelay: time.Hour}, &st)
	ctx, cancel := context.WithCancel(context.Background())
	var ev events
	errc := make(chan error, 1)
	go func() { errc <- r.StopAll(ctx, 0, ev.emit) }()
	// Wait until it is inside the first stage.
	deadline := time.Now().Add(5 * time.Second)
	for !slices.Contains(ev.trace(), "sigterm_sent ocp_agentd") {
		if time.Now().After(deadline) {
			t.Fatal("StopAll did not begin")
		}
		time.Sleep(time.Millisecond)
	}
	began := time.Now()
	cancel()
	select {
	case err := <-errc:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("StopAll = %v, want an error wrapping context.Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("StopAll ignored the cancel")
	}
	if took := time.Since(began); took > time.Second {
		t.Errorf("StopAll returned %s after the cancel", took)
	}
	// Nothing exited: the cancel came before the grace ended.
	if got := names(scan(t, r)); !slices.Equal(got, proc.BaseNames) {
		t.Errorf("after a canceled stop, scan = %v", got)
	}
	if slices.ContainsFunc(ev.trace(), func(s string) bool { return s == "exited ocp_agentd" }) {
		t.Errorf("events after cancel = %q", ev.trace())
	}
	if st.Failed.Load() != 1 {
		t.Errorf("a canceled stop counted %d failed, want 1", st.Failed.Load())
	}
	// Already canceled: nothing at all.
	if err := r.StopAll(ctx, 0, nil); !errors.Is(err, context.Canceled) {
		t.Errorf("StopAll with a done ctx = %v", err)
	}
}

func TestStartAll(t *testing.T) {
	const delay = 100 * time.Millisecond
	r := NewRunner(RunnerConfig{Host: 2, StartDelay: delay}, nil)
	var specs []proc.StartSpec
	before := scan(t, r)
	for _, tg := range before {
		sp, err := r.ReadStartSpec(context.Background(), tg)
		if err != nil {
			t.Fatal(err)
		}
		specs = append(specs, sp)
	}
	if _, err := r.StartAll(context.Background(), nil, nil); err == nil {
		t.Error("StartAll without specs succeeded")
	}
	if n, err := r.StartAll(context.Background(), specs, nil); n != 0 || err != nil {
		t.Errorf("StartAll with everything running = %d, %v; want 0, nil", n, err)
	}
	if err := r.StopAll(context.Background(), 0, nil); err != nil {
		t.Fatal(err)
	}
	var ev events
	began := time.Now()
	n, err := r.StartAll(context.Background(), specs, ev.emit)
	if err != nil || n != 3 {
		t.Fatalf("StartAll = %d, %v; want 3, nil", n, err)
	}
	if took := time.Since(began); took < delay {
		t.Errorf("a start with a %s delay took %s", delay, took)
	}
	after := scan(t, r)
	if !slices.Equal(names(after), proc.BaseNames) {
		t.Fatalf("after a start, scan = %v", names(after))
	}
	for i := range after {
		if after[i].PID == before[i].PID || after[i].CreateTime.Equal(before[i].CreateTime) {
			t.Errorf("%s restarted with the old pid or create time: %+v", after[i].Name, after[i])
		}
	}
	if got := ev.trace(); len(got) != 3 || got[0] != "started ocp_agentd" {
		t.Errorf("events = %q", got)
	}

	// Canceled while waiting: an error wrapping ctx's, nothing started.
	if err := r.StopAll(context.Background(), 0, nil); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), delay/4)
	defer cancel()
	if _, err := r.StartAll(ctx, specs, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("StartAll past its deadline = %v", err)
	}
	if ts := scan(t, r); len(ts) != 0 {
		t.Errorf("a canceled start started %v", names(ts))
	}
}

func TestNewChecksConfig(t *testing.T) {
	ok := Config{Server: "127.0.0.1:1", RootCAs: x509.NewCertPool(), Hosts: 1, StateDir: t.TempDir(), NamePrefix: "sim"}
	if _, err := New(ok); err != nil {
		t.Fatalf("New: %v", err)
	}
	noCA := ok
	noCA.RootCAs = nil
	if _, err := New(noCA); err == nil {
		t.Error("New without a CA succeeded")
	}
	for _, rate := range []float64{-0.1, 1.5} {
		c := ok
		c.FailRate = rate
		if _, err := New(c); err == nil {
			t.Errorf("New with fail rate %v succeeded", rate)
		}
	}
	if got := simplan.HostName("sim", 7); got != "sim-00007" {
		t.Errorf("HostName = %q", got)
	}
}
