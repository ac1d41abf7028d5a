package proc

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// fakeBin is the fake OCP Agent built once for this test binary.
var fakeBin string

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	// Orphaned fake children (ocp_agentd exits without stopping them) are
	// reparented to this process instead of init, so cleanup can reap them.
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		fmt.Fprintln(os.Stderr, "PR_SET_CHILD_SUBREAPER:", err)
	}
	dir, err := os.MkdirTemp("", "fakeocpagent")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	fakeBin = filepath.Join(dir, "ocp_agentd")
	build := exec.Command("go", "build", "-o", fakeBin, "../../../testdata/fakeocpagent")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building the fake OCP Agent:", err)
		return 1
	}
	return m.Run()
}

// installFake creates <home>/bin/{ocp_agentd,ocp_mgragent,ocp_monagent} and
// registers a cleanup that kills every process running from home.
func installFake(t *testing.T, home string) {
	t.Helper()
	bin := filepath.Join(home, "bin")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, name := range BaseNames {
		dst := filepath.Join(bin, name)
		if err := os.Link(fakeBin, dst); err != nil {
			copyFile(t, fakeBin, dst)
		}
	}
	t.Cleanup(func() { killUnder(t, home) })
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o755); err != nil {
		t.Fatal(err)
	}
}

// started holds the PIDs of processes started with exec.Cmd, which their own
// Wait reaps; reapOrphans leaves them alone.
var started sync.Map

// proc is a process started by a test.
type proc struct {
	cmd  *exec.Cmd
	done chan struct{} // closed once reaped
}

// start runs argv with extra environment; it is killed and reaped on
// cleanup. With reap false, nothing waits for it until cleanup, so it stays a
// zombie after it exits.
func start(t *testing.T, reap bool, env []string, argv ...string) *proc {
	t.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	started.Store(cmd.Process.Pid, true)
	p := &proc{cmd: cmd, done: make(chan struct{})}
	wait := func() {
		_ = cmd.Wait()
		close(p.done)
	}
	if reap {
		go wait()
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		if !reap {
			wait()
		}
		<-p.done
		started.Delete(cmd.Process.Pid)
	})
	return p
}

// running reports whether pid exists and is not a zombie.
func running(pid int) bool {
	st, err := readStat(int32(pid))
	return err == nil && !st.zombie()
}

// killUnder SIGKILLs every process whose executable lies under home, until
// none is left, then reaps orphans.
func killUnder(t *testing.T, home string) {
	t.Helper()
	homes, _ := installHomes(home)
	waitFor(t, 10*time.Second, "processes under "+home+" to die", func() bool {
		left := 0
		eachPID(func(pid int32) {
			st, err := readStat(pid)
			if err != nil || st.zombie() {
				return
			}
			exe, err := os.Readlink(procRoot + "/" + strconv.Itoa(int(pid)) + "/exe")
			if err != nil || !underHome(homes, cleanExe(exe)) {
				return
			}
			left++
			_ = unix.Kill(int(pid), unix.SIGKILL)
		})
		return left == 0
	})
	reapOrphans()
}

// reapOrphans reaps zombie children of this process that no exec.Cmd owns:
// fake children reparented here because this process is a subreaper.
func reapOrphans() {
	self := int32(os.Getpid())
	eachPID(func(pid int32) {
		if _, ok := started.Load(int(pid)); ok {
			return
		}
		st, err := readStat(pid)
		if err != nil || st.ppid != self || !st.zombie() {
			return
		}
		var ws unix.WaitStatus
		_, _ = unix.Wait4(int(pid), &ws, unix.WNOHANG, nil)
	})
}

func eachPID(f func(pid int32)) {
	ents, err := os.ReadDir(procRoot)
	if err != nil {
		return
	}
	for _, e := range ents {
		if pid, err := strconv.ParseInt(e.Name(), 10, 32); err == nil {
			f(int32(pid))
		}
	}
}

// waitFor polls cond until it holds or timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for interval := time.Millisecond; !cond(); interval = min(interval*2, 50*time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(interval)
	}
}

// waitNames waits until Scan finds exactly the given base names (one each),
// each ready (its pid file written, so it handles SIGTERM), and returns them.
func waitNames(t *testing.T, s *Stopper, names ...string) []Target {
	t.Helper()
	var got []Target
	waitFor(t, 10*time.Second, "base processes "+strings.Join(names, ","), func() bool {
		var err error
		got, err = s.Scan(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		var have []string
		for _, tg := range got {
			home := filepath.Dir(filepath.Dir(tg.Exe))
			b, err := os.ReadFile(filepath.Join(home, "run", tg.Name+".pid"))
			if err != nil || string(b) != strconv.Itoa(int(tg.PID))+"\n" {
				return false
			}
			have = append(have, tg.Name)
		}
		slices.Sort(have)
		sorted := slices.Sorted(slices.Values(names))
		return slices.Equal(have, sorted)
	})
	return got
}

// recorder collects events; StopAll serializes calls, the mutex is for
// reads from the test goroutine.
type recorder struct {
	mu     sync.Mutex
	events []Event
	t      *testing.T
}

func (r *recorder) emit(e Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.t.Logf("event %s: %s", e.Kind, e.Message)
	r.events = append(r.events, e)
}

func (r *recorder) all() []Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Event(nil), r.events...)
}

// of returns the events of a kind.
func (r *recorder) of(kind EventKind) []Event {
	var out []Event
	for _, e := range r.all() {
		if e.Kind == kind {
			out = append(out, e)
		}
	}
	return out
}

// hasFor reports whether an event of kind names pid.
func (r *recorder) hasFor(kind EventKind, pid int32) bool {
	for _, e := range r.of(kind) {
		if e.Target.PID == pid {
			return true
		}
	}
	return false
}

// newHome returns <tmp>/ocp_agent with the fake installed.
func newHome(t *testing.T) string {
	home := filepath.Join(t.TempDir(), "ocp_agent")
	installFake(t, home)
	return home
}
