package integration_test

import (
	"bytes"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The demo script (.ci/run-local, as `make demo` runs it): it stops, reaping
// everything it started, on SIGINT or SIGTERM to its own pid; it outlives
// its agentd, which SIGUSR1 starts again; a busy port or a server that ends
// before it answers fails it at once.

// demo is a run of .ci/run-local in a directory of its own whose bin/ holds
// the suite's binaries.
type demo struct {
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
	err  error
	dir  string // RUN_DIR
}

// syncBuffer is the script's output, written by its process and read by the
// test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startDemo runs the script with DEMO=1 and the given addresses; extra is
// more environment.
func startDemo(t *testing.T, grpcAddr, httpAddr string, extra ...string) *demo {
	t.Helper()
	root := tempDir(t)
	bin := filepath.Join(root, "bin")
	runDir := filepath.Join(root, ".run")
	fake := filepath.Join(runDir, "ocp_agent", "bin")
	for _, d := range []string{bin, fake} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for link, target := range map[string]string{"agentplane-server": serverBin, "agentplane-agentd": agentdBin} {
		if err := os.Symlink(target, filepath.Join(bin, link)); err != nil {
			t.Fatal(err)
		}
	}
	b, err := os.ReadFile(fakeBin)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(fake, "ocp_agentd"), b, 0o755); err != nil {
		t.Fatal(err)
	}
	d := &demo{out: &syncBuffer{}, done: make(chan struct{}), dir: runDir}
	d.cmd = exec.Command("bash", filepath.Join(moduleRoot, ".ci", "run-local"))
	d.cmd.Dir = root
	d.cmd.Env = append(append(os.Environ(), "GORACE=atexit_sleep_ms=0", "RUN_DIR="+runDir, "GRPC_ADDR="+grpcAddr,
		"HTTP_ADDR="+httpAddr, "DEMO=1", "AGENTPLANE_ADMIN_PASSWORD="+adminPassword), extra...)
	d.cmd.Stdout, d.cmd.Stderr = d.out, d.out
	procMu.Lock()
	err = d.cmd.Start()
	if err == nil {
		started[d.cmd.Process.Pid] = true
	}
	procMu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		d.err = d.cmd.Wait()
		procMu.Lock()
		delete(started, d.cmd.Process.Pid)
		procMu.Unlock()
		close(d.done)
	}()
	t.Cleanup(func() {
		if !d.ended() {
			_ = d.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-d.done:
			case <-time.After(30 * time.Second):
				_ = d.cmd.Process.Kill()
				<-d.done
			}
		}
		killUnder(t, filepath.Join(runDir, "ocp_agent"))
		if t.Failed() {
			t.Logf("run-local output:\n%s", d.out.String())
		}
	})
	return d
}

func (d *demo) ended() bool {
	select {
	case <-d.done:
		return true
	default:
		return false
	}
}

// waitOutput waits until the script's output contains s.
func (d *demo) waitOutput(t *testing.T, timeout time.Duration, s string) {
	t.Helper()
	waitFor(t, timeout, "the demo to print "+s, func() bool { return strings.Contains(d.out.String(), s) })
}

// waitEnd waits until the script ends and returns how long that took.
func (d *demo) waitEnd(t *testing.T, timeout time.Duration, what string) {
	t.Helper()
	select {
	case <-d.done:
	case <-time.After(timeout):
		t.Fatalf("the demo did not end within %s after %s", timeout, what)
	}
}

// descendants returns the running processes below root.
func descendants(root int) []int {
	parent := map[int]int{}
	eachPID(func(pid int) {
		if st, err := readStat(pid); err == nil && st.state != 'Z' {
			parent[pid] = st.ppid
		}
	})
	var out []int
	for pid := range parent {
		for p := parent[pid]; p > 1; p = parent[p] {
			if p == root {
				out = append(out, pid)
				break
			}
		}
	}
	return out
}

// childNamed returns the pid of the demo's descendant whose executable is
// exe; 0 if none.
func (d *demo) childNamed(exe string) int {
	for _, pid := range descendants(d.cmd.Process.Pid) {
		if got, err := exeOf(pid); err == nil && got == exe {
			return pid
		}
	}
	return 0
}

func TestDemoScriptStopsOnSignals(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM} {
		t.Run(sig.String(), func(t *testing.T) {
			t.Parallel()
			d := startDemo(t, freeAddr(t), freeAddr(t))
			d.waitOutput(t, 90*time.Second, "Ctrl-C (or kill")
			// Up: the server, agentd, the fake ocp_agentd and its two children.
			var kids []int
			waitFor(t, 30*time.Second, "the fake OCP Agent's processes", func() bool {
				kids = descendants(d.cmd.Process.Pid)
				return len(procsUnder(filepath.Join(d.dir, "ocp_agent"))) == 3 && len(kids) >= 5
			})

			// agentd's end does not end the demo; SIGUSR1 starts it again.
			d.waitOutput(t, 60*time.Second, "connected to server")
			agentd := d.childNamed(agentdBin)
			if agentd == 0 {
				t.Fatal("no agentd below the demo")
			}
			_ = syscall.Kill(agentd, syscall.SIGKILL)
			d.waitOutput(t, 30*time.Second, "the server keeps running")
			if d.ended() {
				t.Fatal("the demo ended with its agentd")
			}
			_ = d.cmd.Process.Signal(syscall.SIGUSR1)
			d.waitOutput(t, 30*time.Second, "agentd started again")
			waitFor(t, 60*time.Second, "the new agentd to connect", func() bool {
				return strings.Count(d.out.String(), "connected to server") == 2
			})
			kids = append(kids, descendants(d.cmd.Process.Pid)...)

			_ = d.cmd.Process.Signal(sig)
			d.waitEnd(t, 60*time.Second, sig.String())
			if left := procsUnder(filepath.Join(d.dir, "ocp_agent")); len(left) != 0 {
				t.Errorf("fake OCP Agent processes left after %s: %v", sig, left)
			}
			for _, pid := range kids {
				if running(pid) {
					exe, _ := exeOf(pid)
					t.Errorf("pid %d (%s) still runs after the demo ended on %s", pid, exe, sig)
				}
			}
			reapOrphans()
		})
	}
}

// A port held by a listener that accepts and never answers fails the demo
// at once, naming the address.
func TestDemoScriptBusyPort(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close() // never accepts: connections complete in its backlog, and hang
	start := time.Now()
	d := startDemo(t, freeAddr(t), l.Addr().String())
	d.waitEnd(t, 10*time.Second, "a busy port")
	if d.err == nil || !strings.Contains(d.out.String(), l.Addr().String()+" is already in use") {
		t.Fatalf("demo ended (%v) after %s with:\n%s\nwant a failure naming %s", d.err, time.Since(start), d.out.String(), l.Addr())
	}
}

// A server that ends before it answers (here: on a port it refuses; a bind
// error the check of busy ports misses takes the same path) fails the demo
// at once with the server's error, not after READY_TIMEOUT.
func TestDemoScriptServerEndsEarly(t *testing.T) {
	t.Parallel()
	d := startDemo(t, "127.0.0.1:99999", freeAddr(t), "READY_TIMEOUT=300")
	d.waitEnd(t, 60*time.Second, "the server failed")
	out := d.out.String()
	if d.err == nil || !strings.Contains(out, `"server failed"`) || !strings.Contains(out, "agentplane-server ended with status 1 before it answered") {
		t.Fatalf("demo ended (%v) with:\n%s\nwant the server's error and its end", d.err, out)
	}
}
