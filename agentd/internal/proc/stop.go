package proc

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"
)

// DefaultGrace is the time between SIGTERM and SIGKILL when neither StopAll's
// grace nor Stopper.Grace is set.
const DefaultGrace = 30 * time.Second

// DefaultMaxRounds bounds the stop-and-rescan rounds when Stopper.MaxRounds is 0.
const DefaultMaxRounds = 3

// killWait is how long a process gets to disappear after SIGKILL.
const killWait = 5 * time.Second

// ErrStillRunning is wrapped by the error StopAll returns when base processes
// remain after the last round.
var ErrStillRunning = errors.New("base processes still running")

// StillRunningError names the base processes found on the final rescan.
type StillRunningError struct {
	Survivors []Target
	Rounds    int
}

func (e *StillRunningError) Error() string {
	names := make([]string, len(e.Survivors))
	for i, t := range e.Survivors {
		names[i] = fmt.Sprintf("%s (pid %d)", t.Name, t.PID)
	}
	return fmt.Sprintf("%s still running after %d rounds", strings.Join(names, ", "), e.Rounds)
}

// Unwrap makes errors.Is(err, ErrStillRunning) hold.
func (e *StillRunningError) Unwrap() error { return ErrStillRunning }

// StopAll stops every base process under InstallHome: ocp_agentd first (it
// restarts the others), then all the rest that still run, in parallel. Each
// gets SIGTERM, up to grace to exit (0 means Stopper.Grace, then
// DefaultGrace), then SIGKILL. A process's identity (PID, create time, exe)
// is checked before every signal, so a reused PID is never signalled; this
// process and its ancestors are never signalled.
//
// After each round it rescans; processes that came back (a child that
// ocp_agentd restarted as it was stopped, say) are stopped again, up to
// MaxRounds. It returns nil when a rescan finds nothing (so nothing to
// stop is success), a *StillRunningError (wrapping ErrStillRunning) naming
// the survivors after the last round, and an error wrapping ctx.Err() as soon
// as ctx is done; it sends no signal after that and returns only once every
// goroutine it started has finished.
//
// emit, when not nil, is called for each Event; calls are serialized.
func (s *Stopper) StopAll(ctx context.Context, grace time.Duration, emit func(Event)) error {
	_, err := s.StopAllObserved(ctx, grace, emit, nil)
	return err
}

// StopAllObserved is StopAll sharing its scans with a caller that records
// and reports the base processes, so that the caller needs no scan of its
// own before or after the stop:
//
//   - observe, when not nil, is called once with what StopAll's first scan
//     found (every base process under InstallHome, as Scan returns them,
//     this process and its ancestors included), before any signal is sent;
//   - it returns what its last scan found, in the same form: after a
//     success, only the base processes left alone as this process or its
//     ancestors (usually none); with a *StillRunningError, the survivors and
//     those. It returns nil processes with any other error (ctx done, a scan
//     failed), when there is no last scan to trust.
//
// A scan reads every /proc/<pid>/comm, so a stop scans only before it
// starts and after each round, to verify: a stop whose processes all exit
// costs two scans. Between stopping ocp_agentd and the others it re-checks
// only the others it found (their pids, create times and executables), not
// all of /proc: a child that ocp_agentd restarted in between is not among
// them, and the verifying scan finds it for the next round.
func (s *Stopper) StopAllObserved(ctx context.Context, grace time.Duration, emit func(Event),
	observe func([]Target)) (left []Target, err error) {
	defer s.observeCommand("stop", time.Now(), &err)
	if grace <= 0 {
		grace = s.Grace
	}
	if grace <= 0 {
		grace = DefaultGrace
	}
	rounds := s.MaxRounds
	if rounds <= 0 {
		rounds = DefaultMaxRounds
	}
	r := &run{s: s, emit: emit, excluded: ancestors(), skipped: map[int32]bool{}}

	found, targets, err := r.scan(ctx)
	if err != nil {
		return nil, err
	}
	if observe != nil {
		observe(found)
	}
	for round := 1; ; round++ {
		if len(targets) == 0 {
			return found, nil
		}
		if round > rounds {
			return found, &StillRunningError{Survivors: targets, Rounds: rounds}
		}
		var sups, others []Target
		for _, t := range targets {
			if t.Name == Supervisor {
				sups = append(sups, t)
			} else {
				others = append(others, t)
			}
		}
		if len(sups) > 0 {
			if err := r.stopBatch(ctx, sups, grace); err != nil {
				return nil, err
			}
			targets = stillRunning(ctx, others)
		}
		if err := r.stopBatch(ctx, targets, grace); err != nil {
			return nil, err
		}
		if found, targets, err = r.scan(ctx); err != nil {
			return nil, err
		}
	}
}

// stillRunning returns the targets that have not exited: those whose
// identity still holds, and those it cannot check (stopping them reports
// why).
func stillRunning(ctx context.Context, ts []Target) []Target {
	out := ts[:0]
	for _, t := range ts {
		if err := checkIdentity(ctx, t); !errors.Is(err, errGone) {
			out = append(out, t)
		}
	}
	return out
}

// Running reports whether every one of ts, from an earlier Scan, still runs
// as the process Scan found: its PID alive and not a zombie, with the same
// create time and executable. It reads /proc/<pid>/stat and /proc/<pid>/exe
// of those processes only, not the whole of /proc, so its cost does not grow
// with the number of processes on the host; in exchange it cannot see base
// processes started since the scan. An error other than a process being
// gone or its PID reused is returned with false.
func (s *Stopper) Running(ctx context.Context, ts []Target) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	for _, t := range ts {
		err := checkIdentity(ctx, t)
		switch {
		case err == nil:
		case errors.Is(err, errGone):
			return false, nil
		default:
			return false, fmt.Errorf("checking %s pid %d: %w", t.Name, t.PID, err)
		}
	}
	return true, nil
}

// run is the state of one StopAll or StartAll call.
type run struct {
	s        *Stopper
	mu       sync.Mutex // serializes emit
	emit     func(Event)
	excluded map[int32]bool // this process and its ancestors
	skipped  map[int32]bool // PIDs already reported as skipped
}

// scan rescans, reports base processes left alone (once per PID) and
// returns every base process under the install home (found, as Scan would)
// and, among them, the ones to stop (targets).
func (r *run) scan(ctx context.Context) (found, targets []Target, err error) {
	in, out, err := r.s.scan(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("stopping ocp agent processes: %w", err)
	}
	for _, t := range out {
		if !r.skipped[t.PID] {
			r.skipped[t.PID] = true
			r.event(EventSkipped, t, fmt.Sprintf("left %s pid %d alone: exe %s is outside install home %s",
				t.Name, t.PID, t.Exe, r.s.InstallHome))
		}
	}
	targets = make([]Target, 0, len(in))
	for _, t := range in {
		if r.excluded[t.PID] {
			if !r.skipped[t.PID] {
				r.skipped[t.PID] = true
				r.event(EventSkipped, t, fmt.Sprintf("left %s pid %d alone: it is this agent or one of its ancestors", t.Name, t.PID))
			}
			continue
		}
		targets = append(targets, t)
	}
	return in, targets, nil
}

// stopBatch stops targets in parallel and waits for all of them.
func (r *run) stopBatch(ctx context.Context, targets []Target, grace time.Duration) error {
	var wg sync.WaitGroup
	for _, t := range targets {
		if ctx.Err() != nil {
			break
		}
		r.event(EventFound, t, fmt.Sprintf("found %s pid %d exe %s", t.Name, t.PID, t.Exe))
		wg.Go(func() { r.stopOne(ctx, t, grace) })
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("stopping ocp agent processes: %w", err)
	}
	return nil
}

// stopOne sends SIGTERM, waits up to grace, sends SIGKILL and verifies the
// exit, reporting each step. It returns early, without signalling, once ctx
// is done.
func (r *run) stopOne(ctx context.Context, t Target, grace time.Duration) {
	h, err := openHandle(ctx, t)
	if err != nil {
		r.gone(t, err)
		return
	}
	defer h.close()

	if ctx.Err() != nil {
		return
	}
	if err := h.signal(ctx, unix.SIGTERM); err != nil {
		r.gone(t, err)
		return
	}
	r.event(EventSigtermSent, t, fmt.Sprintf("sent SIGTERM to %s pid %d", t.Name, t.PID))
	exited, err := h.wait(ctx, grace)
	if err != nil {
		return
	}
	if exited {
		r.event(EventExited, t, fmt.Sprintf("%s pid %d exited", t.Name, t.PID))
		return
	}

	if ctx.Err() != nil {
		return
	}
	if err := h.signal(ctx, unix.SIGKILL); err != nil {
		r.gone(t, err)
		return
	}
	r.event(EventSigkillSent, t, fmt.Sprintf("sent SIGKILL to %s pid %d after %s grace", t.Name, t.PID, grace))
	exited, err = h.wait(ctx, killWait)
	if err != nil {
		return
	}
	if !exited {
		r.event(EventError, t, fmt.Sprintf("%s pid %d still running %s after SIGKILL", t.Name, t.PID, killWait))
		return
	}
	r.event(EventExited, t, fmt.Sprintf("%s pid %d exited", t.Name, t.PID))
}

// gone reports why t was not signalled: it exited, its PID was reused, or
// something else failed.
func (r *run) gone(t Target, err error) {
	switch {
	case errors.Is(err, errReused):
		r.event(EventExited, t, fmt.Sprintf("%s pid %d exited; the pid now belongs to another process, not signalled", t.Name, t.PID))
	case errors.Is(err, errGone):
		r.event(EventExited, t, fmt.Sprintf("%s pid %d exited", t.Name, t.PID))
	default:
		r.event(EventError, t, fmt.Sprintf("stopping %s pid %d: %v", t.Name, t.PID, err))
	}
}

// event logs e and passes it to emit, one call at a time.
func (r *run) event(kind EventKind, t Target, msg string) {
	e := Event{Kind: kind, Target: t, Time: time.Now(), Message: msg}
	log := &r.s.Log
	var ev *zerolog.Event
	switch kind {
	case EventSkipped, EventError:
		ev = log.Warn()
	default:
		ev = log.Info()
	}
	ev.Int32("pid", t.PID).Str("name", t.Name).Str("event", kind.String()).Str("detail", msg).Msg("ocp agent process")
	r.s.observeEvent(kind)
	if r.emit == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.emit(e)
}

// ancestors returns this process's PID and those of all its ancestors up to
// and including PID 1.
func ancestors() map[int32]bool {
	set := map[int32]bool{1: true}
	pid := int32(os.Getpid())
	for i := 0; pid > 1 && i < 4096 && !set[pid]; i++ {
		set[pid] = true
		st, err := readStat(pid)
		if err != nil {
			break
		}
		pid = st.ppid
	}
	return set
}

// String names the kind for logs.
func (k EventKind) String() string {
	switch k {
	case EventFound:
		return "found"
	case EventSigtermSent:
		return "sigterm_sent"
	case EventExited:
		return "exited"
	case EventSigkillSent:
		return "sigkill_sent"
	case EventSkipped:
		return "skipped"
	case EventError:
		return "error"
	case EventStarted:
		return "started"
	case EventOutput:
		return "output"
	}
	return fmt.Sprintf("EventKind(%d)", int(k))
}
