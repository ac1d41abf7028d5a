// Package sim is a fleet simulator: many agentd hosts in one process, each
// with its own state dir, mTLS identity, TCP connection and conn.Client (the
// real reconnect loop, handshake, heartbeats, journal and outbox), whose OCP
// Agent is simulated by a Runner: three base processes with fake pids that a
// stop command ends at once or after a delay, failing a given fraction of
// the stops.
package sim

import (
	"context"
	"fmt"
	"math"
	"path"
	"sync"
	"sync/atomic"
	"time"

	"agentplane/agentd/internal/conn"
	"agentplane/agentd/internal/proc"
	"agentplane/internal/simplan"
)

// InstallHome is the simulated OCP Agent's install home.
const InstallHome = "/home/admin/ocp_agent"

// firstPID is the fake pid of the first base process a Runner starts with;
// the others follow. Every host starts with the same pids, as hosts do.
const firstPID = 1001

// bootTime is the create time of the processes a Runner starts with: the
// same in every run, so a restarted simulator's processes match the start
// specs agentd recorded in the state dir and nothing is rewritten.
var bootTime = time.Unix(1_700_000_000, 0).UTC()

// RunnerConfig configures a Runner.
type RunnerConfig struct {
	Host       int           // the host's index in the fleet; with the stop's sequence number, it decides failures
	StopDelay  time.Duration // how long a stop takes, split between stopping ocp_agentd and the others
	StartDelay time.Duration // how long a start takes
	FailRate   float64       // fraction of stops that fail (0..1), see Fails
}

// RunnerStats counts a Runner's commands; its fields are updated atomically
// and may be shared by many Runners.
type RunnerStats struct {
	Commands atomic.Int64 // StopAll and StartAll calls
	Results  atomic.Int64 // StopAll and StartAll calls that returned
	Failed   atomic.Int64 // ... with an error (a simulated failure, or canceled)
}

// Runner is a conn.Runner for one simulated host. Its methods are safe for
// concurrent use.
type Runner struct {
	cfg   RunnerConfig
	stats *RunnerStats

	mu      sync.Mutex
	procs   []proc.Target // running, in BaseNames order
	nextPID int32
	stops   uint64 // StopAll calls so far
}

var _ conn.Runner = (*Runner)(nil)

// NewRunner returns a Runner whose three base processes run. stats may be
// nil.
func NewRunner(cfg RunnerConfig, stats *RunnerStats) *Runner {
	if stats == nil {
		stats = &RunnerStats{}
	}
	r := &Runner{cfg: cfg, stats: stats, nextPID: firstPID}
	for _, name := range proc.BaseNames {
		r.procs = append(r.procs, r.newTarget(name, bootTime))
	}
	return r
}

// newTarget is a base process with the next fake pid. r.mu is held or r is
// not shared yet.
func (r *Runner) newTarget(name string, created time.Time) proc.Target {
	pid := r.nextPID
	r.nextPID++
	exe := path.Join(InstallHome, "bin", name)
	return proc.Target{PID: pid, Name: name, Exe: exe, CreateTime: created, Cmdline: exe, User: "admin", Cwd: InstallHome}
}

// Scan returns the simulated base processes that run.
func (r *Runner) Scan(ctx context.Context) ([]proc.Target, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("scanning processes: %w", err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]proc.Target(nil), r.procs...), nil
}

// ReadStartSpec returns how t was started, as a real agentd would read it
// from /proc.
func (r *Runner) ReadStartSpec(ctx context.Context, t proc.Target) (proc.StartSpec, error) {
	if err := ctx.Err(); err != nil {
		return proc.StartSpec{}, err
	}
	return proc.StartSpec{Name: t.Name, PID: t.PID, CreateTime: t.CreateTime, Exe: t.Exe, Args: []string{t.Exe},
		Env: []string{"HOME=/home/admin"}, Dir: InstallHome, UID: 1000, GID: 1000, User: t.User}, nil
}

// StopAll stops the simulated processes as proc.Stopper does, with its
// events: ocp_agentd first, then the others, each stage taking half of
// StopDelay. A stop that Fails leaves ocp_monagent running (SIGKILL that
// does not take) and returns a *proc.StillRunningError. It returns an error
// wrapping ctx.Err() as soon as ctx is done, stopping nothing more.
func (r *Runner) StopAll(ctx context.Context, grace time.Duration, emit func(proc.Event)) (err error) {
	r.stats.Commands.Add(1)
	defer func() {
		r.stats.Results.Add(1)
		if err != nil {
			r.stats.Failed.Add(1)
		}
	}()
	r.mu.Lock()
	r.stops++
	fail := simplan.Fails(r.cfg.Host, r.stops, r.cfg.FailRate)
	r.mu.Unlock()
	if emit == nil {
		emit = func(proc.Event) {}
	}
	event := func(kind proc.EventKind, t proc.Target, msg string) {
		emit(proc.Event{Kind: kind, Target: t, Time: time.Now(), Message: msg})
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("stopping ocp agent processes: %w", err)
	}
	var survivors []proc.Target
	for stage, names := range [][]string{{proc.Supervisor}, {"ocp_mgragent", "ocp_monagent"}} {
		targets := r.running(names)
		for _, t := range targets {
			event(proc.EventFound, t, fmt.Sprintf("found %s pid %d exe %s", t.Name, t.PID, t.Exe))
			event(proc.EventSigtermSent, t, fmt.Sprintf("sent SIGTERM to %s pid %d", t.Name, t.PID))
		}
		if d := r.cfg.StopDelay / 2; d > 0 && len(targets) > 0 {
			if stage == 1 {
				d = r.cfg.StopDelay - d
			}
			if err := sleep(ctx, d); err != nil {
				return fmt.Errorf("stopping ocp agent processes: %w", err)
			}
		}
		for _, t := range targets {
			if fail && t.Name == "ocp_monagent" {
				event(proc.EventSigkillSent, t, fmt.Sprintf("sent SIGKILL to %s pid %d after %s grace", t.Name, t.PID, grace))
				event(proc.EventError, t, fmt.Sprintf("%s pid %d still running 5s after SIGKILL (simulated failure)", t.Name, t.PID))
				survivors = append(survivors, t)
				continue
			}
			r.remove(t.PID)
			event(proc.EventExited, t, fmt.Sprintf("%s pid %d exited", t.Name, t.PID))
		}
	}
	if len(survivors) > 0 {
		return &proc.StillRunningError{Survivors: survivors, Rounds: 3}
	}
	return nil
}

// StartAll starts the base processes named by specs that do not run, after
// StartDelay, each with a new fake pid, and returns how many it started.
// Without specs it fails, as proc.Stopper does without bin/ocp_agentctl.
func (r *Runner) StartAll(ctx context.Context, specs []proc.StartSpec, emit func(proc.Event)) (n int, err error) {
	r.stats.Commands.Add(1)
	defer func() {
		r.stats.Results.Add(1)
		if err != nil {
			r.stats.Failed.Add(1)
		}
	}()
	if emit == nil {
		emit = func(proc.Event) {}
	}
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("starting ocp agent processes: %w", err)
	}
	var want []string
	for _, name := range proc.BaseNames {
		for _, sp := range specs {
			if sp.Name == name {
				want = append(want, name)
				break
			}
		}
	}
	if len(want) == 0 {
		return 0, fmt.Errorf("starting ocp agent processes: no bin/ocp_agentctl and no recorded command line under %s", InstallHome)
	}
	for _, t := range r.running(want) {
		emit(proc.Event{Kind: proc.EventStarted, Target: t, Time: time.Now(), Message: fmt.Sprintf("%s pid %d already running", t.Name, t.PID)})
	}
	if err := sleep(ctx, r.cfg.StartDelay); err != nil {
		return 0, fmt.Errorf("starting ocp agent processes: %w", err)
	}
	now := time.Now().UTC().Truncate(time.Millisecond)
	r.mu.Lock()
	var started []proc.Target
	for _, name := range want {
		if !r.has(name) {
			t := r.newTarget(name, now)
			r.procs = append(r.procs, t)
			started = append(started, t)
		}
	}
	r.sortLocked()
	r.mu.Unlock()
	for _, t := range started {
		emit(proc.Event{Kind: proc.EventStarted, Target: t, Time: time.Now(),
			Message: fmt.Sprintf("started %s pid %d as %s: %s", t.Name, t.PID, t.User, t.Cmdline)})
	}
	return len(started), nil
}

// running returns the running processes with the given names.
func (r *Runner) running(names []string) []proc.Target {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []proc.Target
	for _, t := range r.procs {
		for _, n := range names {
			if t.Name == n {
				out = append(out, t)
			}
		}
	}
	return out
}

func (r *Runner) has(name string) bool {
	for _, t := range r.procs {
		if t.Name == name {
			return true
		}
	}
	return false
}

func (r *Runner) remove(pid int32) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, t := range r.procs {
		if t.PID == pid {
			r.procs = append(r.procs[:i:i], r.procs[i+1:]...)
			return
		}
	}
}

// sortLocked keeps procs in BaseNames order.
func (r *Runner) sortLocked() {
	order := map[string]int{}
	for i, n := range proc.BaseNames {
		order[n] = i
	}
	out := make([]proc.Target, 0, len(r.procs))
	for i := range proc.BaseNames {
		for _, t := range r.procs {
			if order[t.Name] == i {
				out = append(out, t)
			}
		}
	}
	r.procs = out
}

// sleep waits d, or returns ctx's error once it is done.
func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// validRate reports whether rate is a fraction.
func validRate(rate float64) bool { return !math.IsNaN(rate) && rate >= 0 && rate <= 1 }
