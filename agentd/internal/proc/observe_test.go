package proc

import (
	"context"
	"errors"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// A stop of a running OCP Agent whose processes all exit scans twice: once
// before (what observe gets, before any signal) and once to verify (what it
// returns). Between ocp_agentd and the others it re-checks only the others.
func TestStopAllObservedScansTwice(t *testing.T) {
	home := newHome(t)
	agentd := start(t, true, []string{"FAKE_OCP_MODE=graceful"}, filepath.Join(home, "bin", "ocp_agentd"))
	s := &Stopper{InstallHome: home, Log: testLogger(t)}
	found := waitNames(t, s, BaseNames...)

	rec := &recorder{t: t}
	var observed []Target
	var eventsBefore int
	calls := 0
	before := s.scans.Load()
	left, err := s.StopAllObserved(context.Background(), 10*time.Second, rec.emit, func(ts []Target) {
		calls++
		observed = slices.Clone(ts)
		eventsBefore = len(rec.of(EventSigtermSent))
	})
	if err != nil {
		t.Fatalf("StopAllObserved: %v", err)
	}
	<-agentd.done
	if n := s.scans.Load() - before; n != 2 {
		t.Errorf("the stop scanned %d times, want 2", n)
	}
	if calls != 1 || eventsBefore != 0 || !slices.EqualFunc(observed, found, func(a, b Target) bool { return a.PID == b.PID }) {
		t.Errorf("observe called %d times with %v after %d SIGTERMs; want once with %v before any", calls, observed, eventsBefore, found)
	}
	if len(left) != 0 {
		t.Errorf("StopAllObserved returned %v, want nothing left", left)
	}
	for _, tg := range found {
		if !rec.hasFor(EventSigtermSent, tg.PID) || !rec.hasFor(EventExited, tg.PID) {
			t.Errorf("%s pid %d not stopped:\n%s", tg.Name, tg.PID, messages(rec.all()))
		}
	}
	if terms := rec.of(EventSigtermSent); len(terms) != 3 || terms[0].Target.Name != Supervisor {
		t.Errorf("SIGTERMs %v, want 3, %s first", terms, Supervisor)
	}
}

// A process that comes back after the first round (here a respawning
// ocp_mgragent; a child that ocp_agentd restarted as it was stopped is the
// same case) is found by the verifying scan and stopped in the next round.
func TestStopAllObservedNextRound(t *testing.T) {
	home := newHome(t)
	start(t, true, []string{"FAKE_OCP_MODE=graceful", "FAKE_OCP_MODE_ocp_mgragent=respawn", "FAKE_OCP_RESPAWN=1"},
		filepath.Join(home, "bin", "ocp_agentd"))
	s := &Stopper{InstallHome: home, Log: testLogger(t)}
	found := waitNames(t, s, BaseNames...)
	var mgr Target
	for _, tg := range found {
		if tg.Name == "ocp_mgragent" {
			mgr = tg
		}
	}

	rec := &recorder{t: t}
	before := s.scans.Load()
	left, err := s.StopAllObserved(context.Background(), 10*time.Second, rec.emit, nil)
	if err != nil || len(left) != 0 {
		t.Fatalf("StopAllObserved = %v, %v; want nothing left", left, err)
	}
	if n := s.scans.Load() - before; n != 3 {
		t.Errorf("the stop scanned %d times, want 3 (before, after each of two rounds)", n)
	}
	terms := rec.of(EventSigtermSent)
	if len(terms) != 4 || terms[3].Target.Name != "ocp_mgragent" || terms[3].Target.PID == mgr.PID {
		t.Errorf("want SIGTERM to the three, then to the respawned ocp_mgragent, got\n%s", messages(rec.all()))
	}
	if got, err := s.Scan(context.Background()); err != nil || len(got) != 0 {
		t.Errorf("after the stop, Scan = %v, %v", got, err)
	}
}

func TestRunning(t *testing.T) {
	s := &Stopper{InstallHome: "/home/admin/ocp_agent", Log: testLogger(t)}
	ctx := context.Background()
	p, tg := sleepTarget(t)
	_, other := sleepTarget(t)
	before := s.scans.Load()

	if ok, err := s.Running(ctx, nil); !ok || err != nil {
		t.Errorf("Running(nothing) = %v, %v; want true", ok, err)
	}
	if ok, err := s.Running(ctx, []Target{tg, other}); !ok || err != nil {
		t.Errorf("Running(two sleeps) = %v, %v; want true", ok, err)
	}
	reused := tg
	reused.CreateTime = reused.CreateTime.Add(-time.Second)
	if ok, err := s.Running(ctx, []Target{other, reused}); ok || err != nil {
		t.Errorf("Running(a pid with another create time) = %v, %v; want false", ok, err)
	}
	moved := tg
	moved.Exe = "/elsewhere/sleep"
	if ok, err := s.Running(ctx, []Target{moved}); ok || err != nil {
		t.Errorf("Running(a pid with another exe) = %v, %v; want false", ok, err)
	}
	canceled, cancel := context.WithCancel(ctx)
	cancel()
	if ok, err := s.Running(canceled, []Target{tg}); ok || !errors.Is(err, context.Canceled) {
		t.Errorf("Running(ctx done) = %v, %v; want false, context.Canceled", ok, err)
	}

	if err := p.cmd.Process.Signal(unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-p.done
	if ok, err := s.Running(ctx, []Target{other, tg}); ok || err != nil {
		t.Errorf("Running(with a dead one) = %v, %v; want false", ok, err)
	}
	if n := s.scans.Load() - before; n != 0 {
		t.Errorf("Running scanned %d times, want 0", n)
	}
}
