package integration_test

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
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
	log  string // the script's output, and its children's
	done chan struct{}
	err  error
	dir  string // RUN_DIR
}

// startDemo runs the script with DEMO=1 and the given addresses; extra is
// more environment.
func startDemo(t *testing.T, grpcAddr, httpAddr string, extra ...string) *demo {
	t.Helper()
	root := tempDir(t)
	bin := filepath.Join(root, "bin")
	runDir := filepath.Join(root, ".run")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	for link, target := range map[string]string{"agentplane-server": serverBin, "agentplane-agentd": agentdBin} {
		if err := os.Symlink(target, filepath.Join(bin, link)); err != nil {
			t.Fatal(err)
		}
	}
	installFake(t, filepath.Join(runDir, "ocp_agent"), "ocp_agentd") // its cleanup kills what runs there
	d := &demo{log: filepath.Join(root, "run-local.log"), done: make(chan struct{}), dir: runDir}
	f, err := os.Create(d.log)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	d.cmd = exec.Command("bash", filepath.Join(moduleRoot, ".ci", "run-local"))
	d.cmd.Dir = root
	d.cmd.Env = append(append(os.Environ(), "GORACE=atexit_sleep_ms=0", "RUN_DIR="+runDir, "GRPC_ADDR="+grpcAddr,
		"HTTP_ADDR="+httpAddr, "METRICS_ADDR="+freeAddr(t), "DEMO=1", "AGENTPLANE_ADMIN_PASSWORD="+adminPassword), extra...)
	d.cmd.Stdout, d.cmd.Stderr = f, f
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
		if t.Failed() && !d.ended() {
			t.Logf("run-local (pid %d) still runs; below it: %s", d.cmd.Process.Pid, psOf(descendants(d.cmd.Process.Pid)))
		}
		if !d.ended() {
			_ = d.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-d.done:
			case <-time.After(30 * time.Second):
				_ = d.cmd.Process.Kill()
				<-d.done
			}
		}
		if t.Failed() {
			t.Logf("run-local output:\n%s", d.output())
		}
	})
	return d
}

// output is what the script and its children wrote so far.
func (d *demo) output() string {
	b, _ := os.ReadFile(d.log)
	return string(b)
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
	waitFor(t, timeout, "the demo to print "+s, func() bool { return strings.Contains(d.output(), s) })
}

// waitEnd waits until the script ends, failing the test after timeout.
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

// psOf describes processes for a failure's log: pid, state and command line.
func psOf(pids []int) string {
	var b strings.Builder
	for _, pid := range pids {
		st, _ := readStat(pid)
		cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		fmt.Fprintf(&b, "\n  %d %c %s", pid, st.state, bytes.ReplaceAll(cmd, []byte{0}, []byte{' '}))
	}
	return b.String()
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
				return strings.Count(d.output(), "connected to server") == 2
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
	if d.err == nil || !strings.Contains(d.output(), l.Addr().String()+" is already in use") {
		t.Fatalf("demo ended (%v) after %s with:\n%s\nwant a failure naming %s", d.err, time.Since(start), d.output(), l.Addr())
	}
}

// A server that ends before it answers (here: on a port it refuses; a bind
// error the check of busy ports misses takes the same path) fails the demo
// at once with the server's error, not after READY_TIMEOUT.
func TestDemoScriptServerEndsEarly(t *testing.T) {
	t.Parallel()
	d := startDemo(t, "127.0.0.1:99999", freeAddr(t), "READY_TIMEOUT=300")
	d.waitEnd(t, 60*time.Second, "the server failed")
	out := d.output()
	if d.err == nil || !strings.Contains(out, `"server failed"`) || !strings.Contains(out, "agentplane-server ended with status 1 before it answered") {
		t.Fatalf("demo ended (%v) with:\n%s\nwant the server's error and its end", d.err, out)
	}
}
