package proc

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestSplitNUL(t *testing.T) {
	tests := []struct {
		in   string
		want []string
	}{
		{"", nil},
		{"\x00", nil},
		{"/bin/x\x00", []string{"/bin/x"}},
		{"/bin/x\x00-c\x00a b\x00", []string{"/bin/x", "-c", "a b"}},
		{"/bin/x\x00\x00y\x00", []string{"/bin/x", "", "y"}},
	}
	for _, tt := range tests {
		if got := splitNUL([]byte(tt.in)); !slices.Equal(got, tt.want) {
			t.Errorf("splitNUL(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestParseStatusIDs(t *testing.T) {
	in := "Name:\tocp_agentd\nUid:\t500\t0\t0\t0\nGid:\t501\t501\t501\t501\nGroups:\t10 501 \n"
	ids, err := parseStatusIDs([]byte(in))
	if err != nil || ids.uid != 500 || ids.gid != 501 || !slices.Equal(ids.groups, []uint32{10, 501}) {
		t.Errorf("parseStatusIDs = %+v, %v; want real ids 500/501, groups 10 501", ids, err)
	}
	ids, err = parseStatusIDs([]byte("Uid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nGroups:\t\n"))
	if err != nil || ids.uid != 0 || ids.groups != nil {
		t.Errorf("parseStatusIDs(root) = %+v, %v", ids, err)
	}
	for _, bad := range []string{"", "Uid:\t1\n", "Uid:\tx\nGid:\t1\n", "Uid:\t1\nGid:\t1\nGroups:\ta\n"} {
		if _, err := parseStatusIDs([]byte(bad)); err == nil {
			t.Errorf("parseStatusIDs(%q) = nil error", bad)
		}
	}
}

// record waits for the given base names under s's home and reads their specs.
func record(t *testing.T, s *Stopper, names ...string) []StartSpec {
	t.Helper()
	var specs []StartSpec
	for _, tg := range waitNames(t, s, names...) {
		sp, err := s.ReadStartSpec(context.Background(), tg)
		if err != nil {
			t.Fatalf("ReadStartSpec(%s): %v", tg.Name, err)
		}
		specs = append(specs, sp)
	}
	return specs
}

func TestReadStartSpec(t *testing.T) {
	home := newHome(t)
	agentd := start(t, true, []string{"FAKE_OCP_MODE=graceful"}, filepath.Join(home, "bin", "ocp_agentd"), "--mode", "graceful")
	s := &Stopper{InstallHome: home, Log: testLogger(t)}
	found := waitNames(t, s, BaseNames...)
	wd, _ := os.Getwd()
	for _, tg := range found {
		sp, err := s.ReadStartSpec(context.Background(), tg)
		if err != nil {
			t.Fatalf("ReadStartSpec(%s): %v", tg.Name, err)
		}
		wantArgs := []string{tg.Exe}
		if tg.Name == Supervisor {
			wantArgs = []string{tg.Exe, "--mode", "graceful"}
		}
		if sp.Name != tg.Name || sp.PID != tg.PID || !sp.CreateTime.Equal(tg.CreateTime) || sp.Exe != tg.Exe ||
			!slices.Equal(sp.Args, wantArgs) || sp.Dir != wd || sp.UID != uint32(os.Getuid()) ||
			sp.GID != uint32(os.Getgid()) || sp.User == "" || !slices.Contains(sp.Env, "FAKE_OCP_MODE=graceful") {
			t.Errorf("spec %+v; want args %q, dir %s, our uid and gid, the fake's environment", sp, wantArgs, wd)
		}
	}

	_ = agentd.cmd.Process.Kill()
	<-agentd.done
	for _, tg := range found {
		if tg.Name == Supervisor {
			if _, err := s.ReadStartSpec(context.Background(), tg); !errors.Is(err, errGone) {
				t.Errorf("ReadStartSpec of an exited process = %v, want errGone", err)
			}
		}
	}
}

// ppid returns pid's parent.
func ppid(t *testing.T, pid int32) int32 {
	t.Helper()
	st, err := readStat(pid)
	if err != nil {
		t.Fatalf("stat %d: %v", pid, err)
	}
	return st.ppid
}

// byName maps targets by base name; each name must appear once.
func byName(t *testing.T, ts []Target) map[string]Target {
	t.Helper()
	m := map[string]Target{}
	for _, tg := range ts {
		if _, dup := m[tg.Name]; dup {
			t.Fatalf("two %s processes: %+v", tg.Name, ts)
		}
		m[tg.Name] = tg
	}
	return m
}

// waitReaped waits until pid is gone from /proc: exited and reaped, not a zombie.
func waitReaped(t *testing.T, pid int32) {
	t.Helper()
	waitFor(t, 10*time.Second, "pid "+itoa(pid)+" to be reaped", func() bool {
		_, err := readStat(pid)
		return errors.Is(err, errGone)
	})
}

func TestStartAllFromRecord(t *testing.T) {
	home := newHome(t)
	start(t, true, []string{"FAKE_OCP_MODE=graceful"}, filepath.Join(home, "bin", "ocp_agentd"))
	s := &Stopper{InstallHome: home, Log: testLogger(t)}
	specs := record(t, s, BaseNames...)
	if err := s.StopAll(context.Background(), 5*time.Second, nil); err != nil {
		t.Fatalf("StopAll: %v", err)
	}

	rec := &recorder{t: t}
	n, err := s.StartAll(context.Background(), specs, rec.emit)
	if err != nil || n != 3 {
		t.Fatalf("StartAll = %d, %v; want 3, nil", n, err)
	}
	got := byName(t, waitNames(t, s, BaseNames...))
	sup := got[Supervisor]
	if p := ppid(t, sup.PID); p != int32(os.Getpid()) {
		t.Errorf("ocp_agentd's parent is %d, want this process %d", p, os.Getpid())
	}
	if sid, err := unix.Getsid(int(sup.PID)); err != nil || sid != int(sup.PID) {
		t.Errorf("ocp_agentd session %d, %v; want its own session", sid, err)
	}
	for _, name := range []string{"ocp_mgragent", "ocp_monagent"} {
		if p := ppid(t, got[name].PID); p != sup.PID {
			t.Errorf("%s's parent is %d, want ocp_agentd %d", name, p, sup.PID)
		}
	}
	for _, tg := range got {
		if !rec.hasFor(EventStarted, tg.PID) {
			t.Errorf("no started event for %s pid %d", tg.Name, tg.PID)
		}
	}
	if msgs := messages(rec.all()); !strings.Contains(msgs, "started ocp_agentd pid "+itoa(sup.PID)) ||
		!strings.Contains(msgs, "started by ocp_agentd") {
		t.Errorf("messages:\n%s", msgs)
	}

	// Everything runs: nothing to do.
	again := &recorder{t: t}
	if n, err := s.StartAll(context.Background(), specs, again.emit); err != nil || n != 0 {
		t.Fatalf("second StartAll = %d, %v; want 0, nil", n, err)
	}
	if k := again.of(EventStarted); len(k) != 3 || !strings.Contains(k[0].Message, "already running") {
		t.Errorf("second StartAll events:\n%s", messages(again.all()))
	}

	// The started ocp_agentd does not stay a zombie when it exits.
	if err := unix.Kill(int(sup.PID), unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitReaped(t, sup.PID)
}

func TestStartAllStartsWhatSupervisorDoesNot(t *testing.T) {
	home := newHome(t)
	start(t, true, []string{"FAKE_OCP_MODE=graceful"}, filepath.Join(home, "bin", "ocp_agentd"))
	s := &Stopper{InstallHome: home, Log: testLogger(t)}
	specs := record(t, s, BaseNames...)
	if err := s.StopAll(context.Background(), 5*time.Second, nil); err != nil {
		t.Fatalf("StopAll: %v", err)
	}
	// This ocp_agentd finds no children to start.
	for i := range specs {
		if specs[i].Name == Supervisor {
			specs[i].Env = append(specs[i].Env, "FAKE_OCP_BIN="+t.TempDir())
		}
	}
	rec := &recorder{t: t}
	n, err := s.StartAll(context.Background(), specs, rec.emit)
	if err != nil || n != 3 {
		t.Fatalf("StartAll = %d, %v; want 3, nil", n, err)
	}
	got := byName(t, waitNames(t, s, BaseNames...))
	for _, tg := range got {
		if p := ppid(t, tg.PID); p != int32(os.Getpid()) {
			t.Errorf("%s's parent is %d, want this process %d", tg.Name, p, os.Getpid())
		}
	}
}

// writeCtl writes <home>/bin/ocp_agentctl with the given "start" body.
func writeCtl(t *testing.T, home, start string) {
	t.Helper()
	script := "#!/bin/sh\nbin=$(dirname \"$0\")\ncase \"$1\" in\nstart)\n" + start + "\n;;\n*) echo usage >&2; exit 2;;\nesac\n"
	if err := os.WriteFile(filepath.Join(home, "bin", "ocp_agentctl"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
}

func TestStartAllWithCtl(t *testing.T) {
	tests := []struct {
		name    string
		start   string
		specs   bool // record the processes first
		wantErr string
		wantOut string
	}{
		{"daemonizes", `echo starting ocp_agentd
setsid nohup "$bin/ocp_agentd" >/dev/null 2>&1 &
printf done`, false, "", "ocp_agentctl: done"},
		{"keeps output open", `echo starting ocp_agentd; "$bin/ocp_agentd" &`, false, "", "ocp_agentctl: starting ocp_agentd"},
		{"with record", `setsid "$bin/ocp_agentd" >/dev/null 2>&1 &`, true, "", ""},
		{"fails", `echo starting; echo boom >&2; exit 3`, false, "bin/ocp_agentctl start: exit status 3: boom", "ocp_agentctl: boom"},
		{"starts too little", `echo ok`, false, "ocp_agentd, ocp_mgragent, ocp_monagent not running under", "ocp_agentctl: ok"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			home := newHome(t)
			s := &Stopper{InstallHome: home, StartWait: 10 * time.Second, Log: testLogger(t)}
			if tt.name == "starts too little" {
				s.StartWait = 300 * time.Millisecond
			}
			var specs []StartSpec
			if tt.specs {
				start(t, true, nil, filepath.Join(home, "bin", "ocp_mgragent"))
				specs = record(t, s, "ocp_mgragent")
				if err := s.StopAll(context.Background(), 5*time.Second, nil); err != nil {
					t.Fatal(err)
				}
			}
			writeCtl(t, home, tt.start)
			rec := &recorder{t: t}
			n, err := s.StartAll(context.Background(), specs, rec.emit)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("StartAll = %d, %v; want an error with %q", n, err, tt.wantErr)
				}
			} else {
				want := 3
				if tt.specs {
					want = 1
				}
				if err != nil || n != want {
					t.Fatalf("StartAll = %d, %v; want %d, nil", n, err, want)
				}
				waitNames(t, s, BaseNames...)
				if len(rec.of(EventStarted)) < want {
					t.Errorf("started events:\n%s", messages(rec.all()))
				}
			}
			if tt.wantOut != "" && !strings.Contains(messages(rec.of(EventOutput)), tt.wantOut+"\n") {
				t.Errorf("output events lack %q:\n%s", tt.wantOut, messages(rec.all()))
			}
		})
	}
}

func TestStartAllNothingToStartFrom(t *testing.T) {
	home := newHome(t)
	s := &Stopper{InstallHome: home, Log: testLogger(t)}
	outside := []StartSpec{{Name: Supervisor, Exe: "/opt/elsewhere/bin/ocp_agentd", Args: []string{"/opt/elsewhere/bin/ocp_agentd"}}}
	// Not executable: not the control script.
	if err := os.WriteFile(filepath.Join(home, "bin", "ocp_agentctl"), []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, specs := range [][]StartSpec{nil, outside} {
		n, err := s.StartAll(context.Background(), specs, nil)
		want := "no bin/ocp_agentctl and no recorded command line for ocp_agentd, ocp_mgragent, ocp_monagent under " + home
		if err == nil || !strings.Contains(err.Error(), want) || n != 0 {
			t.Errorf("StartAll(%v) = %d, %v; want an error with %q", specs, n, err, want)
		}
	}
	if _, err := (&Stopper{InstallHome: "relative"}).StartAll(context.Background(), nil, nil); err == nil {
		t.Errorf("StartAll with a relative home = nil")
	}
}

func TestStartAllCancel(t *testing.T) {
	home := newHome(t)
	start(t, true, []string{"FAKE_OCP_MODE=graceful"}, filepath.Join(home, "bin", "ocp_agentd"))
	s := &Stopper{InstallHome: home, Log: testLogger(t)}
	specs := record(t, s, BaseNames...)
	if err := s.StopAll(context.Background(), 5*time.Second, nil); err != nil {
		t.Fatalf("StopAll: %v", err)
	}
	for i := range specs {
		if specs[i].Name == Supervisor { // it starts no children: StartAll would wait for them
			specs[i].Env = append(specs[i].Env, "FAKE_OCP_BIN="+t.TempDir())
		}
	}

	t.Run("before", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		rec := &recorder{t: t}
		if _, err := s.StartAll(ctx, specs, rec.emit); !errors.Is(err, context.Canceled) {
			t.Fatalf("StartAll = %v, want context.Canceled", err)
		}
		if left, err := s.Scan(context.Background()); err != nil || len(left) != 0 || len(rec.all()) != 0 {
			t.Fatalf("after a canceled StartAll: running %v, %v; events\n%s", left, err, messages(rec.all()))
		}
	})

	t.Run("while waiting for ocp_agentd", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		rec := &recorder{t: t}
		emit := func(e Event) {
			rec.emit(e)
			if e.Kind == EventStarted {
				cancel()
			}
		}
		begin := time.Now()
		_, err := s.StartAll(ctx, specs, emit)
		took := time.Since(begin)
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("StartAll = %v, want context.Canceled", err)
		}
		if took > 2*time.Second {
			t.Errorf("StartAll took %s after cancellation", took)
		}
		got := waitNames(t, s, Supervisor) // and nothing else
		if p := ppid(t, got[0].PID); p != int32(os.Getpid()) {
			t.Errorf("ocp_agentd's parent is %d, want this process", p)
		}
		if n := len(rec.of(EventStarted)); n != 1 {
			t.Errorf("%d started events, want 1:\n%s", n, messages(rec.all()))
		}
	})
}

func TestSpecCmd(t *testing.T) {
	cmd := specCmd(StartSpec{Name: "x", Exe: "/bin/sleep", UID: uint32(os.Getuid()), GID: uint32(os.Getgid())}, "/tmp")
	if cmd.Dir != "/tmp" || !slices.Equal(cmd.Args, []string{"/bin/sleep"}) || cmd.Env == nil || len(cmd.Env) != 0 ||
		!cmd.SysProcAttr.Setsid || cmd.SysProcAttr.Credential != nil {
		t.Errorf("specCmd = dir %q args %q env %q attr %+v; want home, [exe], empty env, setsid, no credential",
			cmd.Dir, cmd.Args, cmd.Env, cmd.SysProcAttr)
	}
	if os.Getuid() != 0 {
		t.Skip("starting as another user needs root")
	}
	sp := StartSpec{Name: "sleep", Exe: "/bin/sleep", Args: []string{"sleep", "60"}, Dir: "/", Env: []string{"A=1"},
		UID: 65534, GID: 65534, Groups: []uint32{65534}}
	cmd = specCmd(sp, "/")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(cmd.Process.Pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	ids, err := parseStatusIDs(b) // set before execve
	if err != nil || ids.uid != 65534 || ids.gid != 65534 || !slices.Equal(ids.groups, []uint32{65534}) {
		t.Errorf("started as %+v, %v; want 65534", ids, err)
	}
	// Start returns once execve has begun; its arguments and environment
	// appear a moment later.
	if _, err := readCmdline(context.Background(), int32(cmd.Process.Pid)); err != nil {
		t.Fatal(err)
	}
	env, err := os.ReadFile("/proc/" + strconv.Itoa(cmd.Process.Pid) + "/environ")
	if got := splitNUL(env); err != nil || !slices.Equal(got, []string{"A=1"}) {
		t.Errorf("environment %q, want the recorded one", got)
	}
}
