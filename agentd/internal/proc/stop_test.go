package proc

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/shirou/gopsutil/v4/process"
	"golang.org/x/sys/unix"
)

func testLogger(t *testing.T) zerolog.Logger {
	return zerolog.New(zerolog.NewTestWriter(t))
}

func TestClassify(t *testing.T) {
	homes := []string{"/home/admin/ocp_agent"}
	tests := []struct {
		name, comm, exe string
		wantExe         string
		base, inHome    bool
	}{
		{"under home", "ocp_mgragent", "/home/admin/ocp_agent/bin/ocp_mgragent", "/home/admin/ocp_agent/bin/ocp_mgragent", true, true},
		{"agentd under home", "ocp_agentd", "/home/admin/ocp_agent/bin/ocp_agentd", "/home/admin/ocp_agent/bin/ocp_agentd", true, true},
		{"deep under home", "ocp_monagent", "/home/admin/ocp_agent/a/b/ocp_monagent", "/home/admin/ocp_agent/a/b/ocp_monagent", true, true},
		{"deleted after upgrade", "ocp_monagent", "/home/admin/ocp_agent/bin/ocp_monagent (deleted)", "/home/admin/ocp_agent/bin/ocp_monagent", true, true},
		{"unclean path", "ocp_monagent", "/home/admin/ocp_agent/bin/../bin//ocp_monagent", "/home/admin/ocp_agent/bin/ocp_monagent", true, true},
		{"prefix trick", "ocp_mgragent", "/home/admin/ocp_agent2/bin/ocp_mgragent", "/home/admin/ocp_agent2/bin/ocp_mgragent", true, false},
		{"prefix trick deleted", "ocp_mgragent", "/home/admin/ocp_agent2/bin/ocp_mgragent (deleted)", "/home/admin/ocp_agent2/bin/ocp_mgragent", true, false},
		{"escape with dotdot", "ocp_mgragent", "/home/admin/ocp_agent/../x/ocp_mgragent", "/home/admin/x/ocp_mgragent", true, false},
		{"home itself", "ocp_agentd", "/home/admin/ocp_agent", "/home/admin/ocp_agent", true, false},
		{"outside home", "ocp_agentd", "/opt/other/bin/ocp_agentd", "/opt/other/bin/ocp_agentd", true, false},
		{"empty exe", "ocp_agentd", "", "", true, false},
		{"wrong name under home", "ocp_agentctl", "/home/admin/ocp_agent/bin/ocp_agentctl", "", false, false},
		{"ob agent name", "ob_mgragent", "/home/admin/ocp_agent/bin/ob_mgragent", "", false, false},
		{"name prefix", "ocp_agentd2", "/home/admin/ocp_agent/bin/ocp_agentd2", "", false, false},
		{"sleep", "sleep", "/usr/bin/sleep", "", false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			exe, base, inHome := classify(homes, tt.comm, tt.exe)
			if exe != tt.wantExe || base != tt.base || inHome != tt.inHome {
				t.Errorf("classify(%q, %q) = %q, %v, %v; want %q, %v, %v",
					tt.comm, tt.exe, exe, base, inHome, tt.wantExe, tt.base, tt.inHome)
			}
		})
	}
}

func TestInstallHomes(t *testing.T) {
	for _, home := range []string{"", "ocp_agent", "./home/admin"} {
		if _, err := installHomes(home); err == nil {
			t.Errorf("installHomes(%q) = nil error, want one", home)
		}
	}
	dir := t.TempDir()
	real := filepath.Join(dir, "real")
	if err := os.Mkdir(real, 0o755); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	homes, err := installHomes(link + "/")
	if err != nil {
		t.Fatal(err)
	}
	if !underHome(homes, filepath.Join(real, "bin", "ocp_agentd")) {
		t.Errorf("homes %v: exe under the symlink's target not matched", homes)
	}
	if underHome(homes, real+"2/bin/ocp_agentd") {
		t.Errorf("homes %v: prefix trick matched", homes)
	}
}

func TestParseStat(t *testing.T) {
	tests := []struct {
		in   string
		want stat
	}{
		{"812 (ocp_monagent) S 1 812 812 0 -1", stat{comm: "ocp_monagent", state: 'S', ppid: 1}},
		{"9 (a) b) (c) Z 7 9", stat{comm: "a) b) (c", state: 'Z', ppid: 7}},
	}
	for _, tt := range tests {
		got, err := parseStat([]byte(tt.in))
		if err != nil || got != tt.want {
			t.Errorf("parseStat(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
		}
	}
	for _, bad := range []string{"", "1 (x)", "1 x S 1", "1 (x) S ppid"} {
		if _, err := parseStat([]byte(bad)); err == nil {
			t.Errorf("parseStat(%q) = nil error", bad)
		}
	}
}

func TestAncestors(t *testing.T) {
	a := ancestors()
	for _, pid := range []int{os.Getpid(), os.Getppid(), 1} {
		if !a[int32(pid)] {
			t.Errorf("ancestors() = %v, missing %d", a, pid)
		}
	}
}

func TestStopAllSupervisorGraceful(t *testing.T) {
	home := newHome(t)
	agentd := start(t, true, []string{"FAKE_OCP_MODE=graceful"}, filepath.Join(home, "bin", "ocp_agentd"))
	s := &Stopper{InstallHome: home, Log: testLogger(t)}
	found := waitNames(t, s, BaseNames...)
	for _, tg := range found {
		if tg.Exe != filepath.Join(home, "bin", tg.Name) || tg.CreateTime.IsZero() || tg.User == "" || tg.Cmdline == "" {
			t.Errorf("incomplete target %+v", tg)
		}
	}

	rec := &recorder{t: t}
	begin := time.Now()
	if err := s.StopAll(context.Background(), 10*time.Second, rec.emit); err != nil {
		t.Fatalf("StopAll: %v", err)
	}
	t.Logf("StopAll took %s", time.Since(begin))

	if left, err := s.Scan(context.Background()); err != nil || len(left) != 0 {
		t.Fatalf("after StopAll, Scan = %v, %v", left, err)
	}
	<-agentd.done
	for _, tg := range found {
		for _, kind := range []EventKind{EventFound, EventSigtermSent, EventExited} {
			if !rec.hasFor(kind, tg.PID) {
				t.Errorf("no %s event for %s pid %d", kind, tg.Name, tg.PID)
			}
		}
	}
	if k := rec.of(EventSigkillSent); len(k) != 0 {
		t.Errorf("graceful processes got SIGKILL: %v", k)
	}
	terms := rec.of(EventSigtermSent)
	if len(terms) == 0 || terms[0].Target.Name != Supervisor {
		t.Errorf("first SIGTERM went to %v, want %s", terms, Supervisor)
	}
	want := "found ocp_mgragent pid "
	if !strings.Contains(messages(rec.all()), want) {
		t.Errorf("messages lack %q", want)
	}
}

func messages(events []Event) string {
	var b strings.Builder
	for _, e := range events {
		b.WriteString(e.Message)
		b.WriteByte('\n')
	}
	return b.String()
}

func TestStopAllIgnoreTermEscalates(t *testing.T) {
	home := newHome(t)
	start(t, true, []string{"FAKE_OCP_MODE=ignore-term"}, filepath.Join(home, "bin", "ocp_agentd"))
	s := &Stopper{InstallHome: home, Grace: 200 * time.Millisecond, Log: testLogger(t)}
	found := waitNames(t, s, BaseNames...)

	rec := &recorder{t: t}
	if err := s.StopAll(context.Background(), 0, rec.emit); err != nil {
		t.Fatalf("StopAll: %v", err)
	}
	for _, tg := range found {
		if !rec.hasFor(EventSigtermSent, tg.PID) || !rec.hasFor(EventSigkillSent, tg.PID) || !rec.hasFor(EventExited, tg.PID) {
			t.Errorf("%s pid %d: want SIGTERM, SIGKILL and exited events", tg.Name, tg.PID)
		}
		if running(int(tg.PID)) {
			t.Errorf("%s pid %d still running", tg.Name, tg.PID)
		}
	}
	if !strings.Contains(messages(rec.all()), "after 200ms grace") {
		t.Errorf("SIGKILL message lacks the grace")
	}
}

func TestStopAllSlowWithinGrace(t *testing.T) {
	home := newHome(t)
	start(t, true, []string{"FAKE_OCP_MODE=slow", "FAKE_OCP_SLOW=300ms"}, filepath.Join(home, "bin", "ocp_agentd"))
	s := &Stopper{InstallHome: home, Log: testLogger(t)}
	waitNames(t, s, BaseNames...)
	rec := &recorder{t: t}
	if err := s.StopAll(context.Background(), 10*time.Second, rec.emit); err != nil {
		t.Fatalf("StopAll: %v", err)
	}
	if len(rec.of(EventSigkillSent)) != 0 || len(rec.of(EventExited)) != 3 {
		t.Errorf("want 3 exits and no SIGKILL, got\n%s", messages(rec.all()))
	}
}

func TestStopAllLeavesOthersAlone(t *testing.T) {
	home := newHome(t)
	// ocp_agent2 shares the prefix "ocp_agent" but is another directory.
	other := home + "2"
	installFake(t, other)
	outside := start(t, true, []string{"FAKE_OCP_MODE=graceful"}, filepath.Join(other, "bin", "ocp_monagent"))
	sleep := start(t, true, nil, "sleep", "60")
	start(t, true, []string{"FAKE_OCP_MODE=graceful"}, filepath.Join(home, "bin", "ocp_agentd"))
	s := &Stopper{InstallHome: home, Log: testLogger(t)}
	waitNames(t, s, BaseNames...)
	waitNames(t, &Stopper{InstallHome: other}, "ocp_monagent")

	rec := &recorder{t: t}
	if err := s.StopAll(context.Background(), 5*time.Second, rec.emit); err != nil {
		t.Fatalf("StopAll: %v", err)
	}
	opid := int32(outside.cmd.Process.Pid)
	if !running(int(opid)) {
		t.Errorf("ocp_monagent outside the install home was stopped")
	}
	if !running(sleep.cmd.Process.Pid) {
		t.Errorf("unrelated sleep was stopped")
	}
	if !rec.hasFor(EventSkipped, opid) {
		t.Errorf("no skipped event for pid %d", opid)
	}
	for _, e := range rec.all() {
		if e.Kind != EventSkipped && (e.Target.PID == opid || e.Target.PID == int32(sleep.cmd.Process.Pid)) {
			t.Errorf("unexpected event for a process outside the home: %s", e.Message)
		}
	}
}

func TestStopAllNothingToStop(t *testing.T) {
	for _, home := range []string{t.TempDir(), filepath.Join(t.TempDir(), "missing")} {
		s := &Stopper{InstallHome: home, Log: testLogger(t)}
		rec := &recorder{t: t}
		if err := s.StopAll(context.Background(), time.Second, rec.emit); err != nil {
			t.Errorf("StopAll(%s) = %v", home, err)
		}
		for _, e := range rec.all() {
			if e.Kind != EventSkipped {
				t.Errorf("unexpected event %s", e.Message)
			}
		}
	}
	s := &Stopper{InstallHome: "relative/home"}
	if err := s.StopAll(context.Background(), time.Second, nil); err == nil {
		t.Errorf("StopAll with a relative home = nil")
	}
}

func TestStopAllCancel(t *testing.T) {
	tests := []struct {
		name string
		want error
	}{
		{"cancel", context.Canceled},
		{"deadline", context.DeadlineExceeded},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			home := newHome(t)
			agentd := start(t, true, []string{"FAKE_OCP_MODE=ignore-term"}, filepath.Join(home, "bin", "ocp_agentd"))
			s := &Stopper{InstallHome: home, Log: testLogger(t)}
			waitNames(t, s, BaseNames...)

			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if errors.Is(tt.want, context.DeadlineExceeded) {
				ctx, cancel = context.WithTimeout(ctx, 300*time.Millisecond)
				defer cancel()
			}
			rec := &recorder{t: t}
			emit := func(e Event) {
				rec.emit(e)
				if e.Kind == EventSigtermSent && errors.Is(tt.want, context.Canceled) {
					cancel()
				}
			}
			begin := time.Now()
			err := s.StopAll(ctx, time.Minute, emit)
			took := time.Since(begin)
			if !errors.Is(err, tt.want) {
				t.Fatalf("StopAll = %v, want %v", err, tt.want)
			}
			if took > 5*time.Second {
				t.Errorf("StopAll took %s after cancellation", took)
			}
			t.Logf("StopAll returned after %s: %v", took, err)
			if k := rec.of(EventSigkillSent); len(k) != 0 {
				t.Errorf("SIGKILL sent after cancel: %v", k)
			}
			n := len(rec.all())
			if !running(agentd.cmd.Process.Pid) {
				t.Errorf("ignore-term ocp_agentd died")
			}
			if len(rec.all()) != n {
				t.Errorf("events after StopAll returned")
			}
		})
	}
}

func TestStopAllRestopsRespawned(t *testing.T) {
	home := newHome(t)
	first := start(t, true, []string{"FAKE_OCP_MODE=respawn", "FAKE_OCP_RESPAWN=1"}, filepath.Join(home, "bin", "ocp_monagent"))
	s := &Stopper{InstallHome: home, Log: testLogger(t)}
	waitNames(t, s, "ocp_monagent")
	rec := &recorder{t: t}
	if err := s.StopAll(context.Background(), 5*time.Second, rec.emit); err != nil {
		t.Fatalf("StopAll: %v", err)
	}
	terms := rec.of(EventSigtermSent)
	if len(terms) != 2 || terms[0].Target.PID != int32(first.cmd.Process.Pid) || terms[1].Target.PID == terms[0].Target.PID {
		t.Errorf("want SIGTERM to the first and then the respawned ocp_monagent, got\n%s", messages(rec.all()))
	}
}

func TestStopAllSurvivors(t *testing.T) {
	home := newHome(t)
	start(t, true, []string{"FAKE_OCP_MODE=respawn"}, filepath.Join(home, "bin", "ocp_monagent"))
	s := &Stopper{InstallHome: home, MaxRounds: 2, Log: testLogger(t)}
	waitNames(t, s, "ocp_monagent")
	rec := &recorder{t: t}
	err := s.StopAll(context.Background(), 5*time.Second, rec.emit)
	var sre *StillRunningError
	if !errors.Is(err, ErrStillRunning) || !errors.As(err, &sre) || len(sre.Survivors) != 1 {
		t.Fatalf("StopAll = %v, want a StillRunningError with one survivor", err)
	}
	want := "ocp_monagent (pid " + itoa(sre.Survivors[0].PID) + ") still running after 2 rounds"
	if err.Error() != want {
		t.Errorf("error %q, want %q", err, want)
	}
	if n := len(rec.of(EventSigtermSent)); n != 2 {
		t.Errorf("%d SIGTERMs, want one per round", n)
	}
}

func itoa(pid int32) string { return strconv.Itoa(int(pid)) }

func TestStopAllZombieCountsAsGone(t *testing.T) {
	home := newHome(t)
	// Nothing reaps it until cleanup, so it stays a zombie after SIGTERM.
	p := start(t, false, []string{"FAKE_OCP_MODE=graceful"}, filepath.Join(home, "bin", "ocp_mgragent"))
	s := &Stopper{InstallHome: home, Log: testLogger(t)}
	waitNames(t, s, "ocp_mgragent")
	rec := &recorder{t: t}
	if err := s.StopAll(context.Background(), 5*time.Second, rec.emit); err != nil {
		t.Fatalf("StopAll: %v", err)
	}
	st, err := readStat(int32(p.cmd.Process.Pid))
	if err != nil || !st.zombie() {
		t.Fatalf("want a zombie, stat = %+v, %v", st, err)
	}
	if !rec.hasFor(EventExited, int32(p.cmd.Process.Pid)) || len(rec.of(EventSigkillSent)) != 0 {
		t.Errorf("want exited without SIGKILL, got\n%s", messages(rec.all()))
	}
}

func TestStopAllDeletedExe(t *testing.T) {
	home := filepath.Join(t.TempDir(), "ocp_agent")
	installFake(t, home)
	exe := filepath.Join(home, "bin", "ocp_monagent")
	// A copy, not a link, so removing it leaves the kernel's " (deleted)".
	os.Remove(exe)
	copyFile(t, fakeBin, exe)
	p := start(t, true, []string{"FAKE_OCP_MODE=graceful"}, exe)
	s := &Stopper{InstallHome: home, Log: testLogger(t)}
	waitNames(t, s, "ocp_monagent")
	if err := os.Remove(exe); err != nil {
		t.Fatal(err)
	}
	raw, err := os.Readlink("/proc/" + strconv.Itoa(p.cmd.Process.Pid) + "/exe")
	if err != nil || !strings.HasSuffix(raw, deletedSuffix) {
		t.Fatalf("exe link %q, %v; want a %q suffix", raw, err, deletedSuffix)
	}
	got := waitNames(t, s, "ocp_monagent")
	if got[0].Exe != exe {
		t.Errorf("Exe = %q, want %q", got[0].Exe, exe)
	}
	if err := s.StopAll(context.Background(), 5*time.Second, nil); err != nil {
		t.Fatalf("StopAll: %v", err)
	}
	<-p.done
}

// sleepTarget starts sleep and returns it as a Target.
func sleepTarget(t *testing.T) (*proc, Target) {
	t.Helper()
	p := start(t, true, nil, "sleep", "60")
	pid := int32(p.cmd.Process.Pid)
	var tg Target
	waitFor(t, 5*time.Second, "sleep to exec", func() bool {
		st, err := readStat(pid)
		if err != nil || st.comm != "sleep" {
			return false
		}
		gp := &process.Process{Pid: pid}
		ct, err := gp.CreateTime()
		if err != nil {
			return false
		}
		exe, err := gp.Exe()
		if err != nil {
			return false
		}
		tg = Target{PID: pid, Name: "sleep", Exe: cleanExe(exe), CreateTime: time.UnixMilli(ct)}
		return true
	})
	return p, tg
}

func TestSignalTargetChecksIdentity(t *testing.T) {
	p, tg := sleepTarget(t)
	tests := []struct {
		name   string
		mutate func(*Target)
	}{
		{"create time earlier", func(tg *Target) { tg.CreateTime = tg.CreateTime.Add(-time.Second) }},
		{"create time later", func(tg *Target) { tg.CreateTime = tg.CreateTime.Add(10 * time.Millisecond) }},
		{"other exe", func(tg *Target) { tg.Exe = "/home/admin/ocp_agent/bin/ocp_mgragent" }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wrong := tg
			tt.mutate(&wrong)
			if err := signalTarget(context.Background(), wrong, unix.SIGKILL); !errors.Is(err, errReused) {
				t.Errorf("signalTarget = %v, want errReused", err)
			}
			if !running(p.cmd.Process.Pid) {
				t.Fatalf("sleep was signalled")
			}
		})
	}
	if err := signalTarget(context.Background(), tg, unix.SIGKILL); err != nil {
		t.Fatalf("signalTarget with the right identity: %v", err)
	}
	<-p.done
	if err := signalTarget(context.Background(), tg, unix.SIGKILL); !errors.Is(err, errGone) {
		t.Errorf("signalTarget after exit = %v, want errGone", err)
	}
}

func TestWaitNoticesExitPromptly(t *testing.T) {
	p, tg := sleepTarget(t)
	h, err := openHandle(context.Background(), tg)
	if err != nil {
		t.Fatal(err)
	}
	defer h.close()
	if err := h.signal(context.Background(), unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	begin := time.Now()
	exited, err := h.wait(context.Background(), time.Minute)
	if err != nil || !exited {
		t.Fatalf("wait = %v, %v", exited, err)
	}
	t.Logf("exit observed after %s", time.Since(begin))
	<-p.done
}

// BenchmarkScan and BenchmarkReadProcComm compare a Scan with a plain read of
// every /proc/<pid>/comm; their ratio is the cost of Scan's filtering.
func BenchmarkScan(b *testing.B) {
	s := &Stopper{InstallHome: "/home/admin/ocp_agent", Log: zerolog.Nop()}
	ctx := context.Background()
	for b.Loop() {
		if _, err := s.Scan(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkReadProcComm(b *testing.B) {
	for b.Loop() {
		ents, err := os.ReadDir("/proc")
		if err != nil {
			b.Fatal(err)
		}
		for _, e := range ents {
			if _, err := strconv.Atoi(e.Name()); err != nil {
				continue
			}
			_, _ = os.ReadFile("/proc/" + e.Name() + "/comm")
		}
	}
}

func TestStopAllNeverSignalsExcluded(t *testing.T) {
	home := newHome(t)
	p := start(t, true, []string{"FAKE_OCP_MODE=graceful"}, filepath.Join(home, "bin", "ocp_mgragent"))
	s := &Stopper{InstallHome: home, Log: testLogger(t)}
	waitNames(t, s, "ocp_mgragent")
	pid := int32(p.cmd.Process.Pid)
	// Pretend the fake is this agent's ancestor, as StopAll's ancestors() would.
	rec := &recorder{t: t}
	r := &run{s: s, emit: rec.emit, excluded: map[int32]bool{pid: true}, skipped: map[int32]bool{}}
	_, targets, err := r.scan(context.Background())
	if err != nil || len(targets) != 0 {
		t.Fatalf("scan = %v, %v; want nothing to stop", targets, err)
	}
	if !rec.hasFor(EventSkipped, pid) || !running(int(pid)) {
		t.Errorf("want pid %d skipped and running, got\n%s", pid, messages(rec.all()))
	}
}
