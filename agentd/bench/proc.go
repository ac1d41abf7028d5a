package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Env is what every scenario gets: where the binaries are, a work dir of
// its own, and the run's mode.
type Env struct {
	Bin   string // dir with agentplane-server, agentplane-agentd, agentplane-sim, fakeocpagent
	Work  string // scratch dir for this scenario; removed after the run
	Short bool   // the short mode: smaller N, shorter windows
	Logf  func(format string, args ...any)
	// ClusterBatch and ClusterNoKill: see Options.
	ClusterBatch  int
	ClusterNoKill bool

	mu    sync.Mutex
	procs []*Process
}

// Binary is the path of a built binary.
func (e *Env) Binary(name string) string { return filepath.Join(e.Bin, name) }

// Process is a child process whose output goes to a log file. It is reaped
// by a goroutine as soon as it exits.
type Process struct {
	Name    string
	Cmd     *exec.Cmd
	LogPath string
	done    chan struct{}
	err     error
}

// Start starts argv with extra environment, in its own process group, its
// output in Work/name.log. Env.Cleanup kills and reaps whatever is left.
func (e *Env) Start(ctx context.Context, name string, env []string, argv ...string) (*Process, error) {
	return e.start(ctx, name, env, nil, argv...)
}

// StartWithStdout is Start with the process's stdout to out.
func (e *Env) StartWithStdout(ctx context.Context, name string, out *os.File, argv ...string) (*Process, error) {
	return e.start(ctx, name, nil, out, argv...)
}

func (e *Env) start(ctx context.Context, name string, env []string, stdout *os.File, argv ...string) (*Process, error) {
	logPath := filepath.Join(e.Work, name+".log")
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	// Not ended by ctx: a cancel would SIGKILL the leader only; Stop, Kill
	// and Cleanup end the process's whole group.
	cmd := exec.CommandContext(context.WithoutCancel(ctx), argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = f, f
	if stdout != nil {
		cmd.Stdout = stdout
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	p := &Process{Name: name, Cmd: cmd, LogPath: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	e.mu.Lock()
	e.procs = append(e.procs, p)
	e.mu.Unlock()
	return p, nil
}

// Cleanup kills every process the scenario started that is still running,
// and waits until each is reaped.
func (e *Env) Cleanup() {
	e.mu.Lock()
	procs := e.procs
	e.procs = nil
	e.mu.Unlock()
	for _, p := range procs {
		p.Kill()
	}
}

// PID is the process id.
func (p *Process) PID() int { return p.Cmd.Process.Pid }

// Done is closed once the process has exited and been reaped.
func (p *Process) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has exited.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Signal signals the process's group.
func (p *Process) Signal(sig syscall.Signal) {
	_ = syscall.Kill(-p.PID(), sig)
}

// Stop sends SIGTERM and waits up to timeout for the exit, then SIGKILLs.
func (p *Process) Stop(timeout time.Duration) error {
	p.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return nil
	case <-time.After(timeout):
		p.Kill()
		return fmt.Errorf("%s did not exit within %s of SIGTERM; killed", p.Name, timeout)
	}
}

// Kill SIGKILLs the process group and waits for the reap.
func (p *Process) Kill() {
	p.Signal(syscall.SIGKILL)
	<-p.done
}

// Tail returns the last n lines of the process's log.
func (p *Process) Tail(n int) string {
	b, err := os.ReadFile(p.LogPath)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// RSS is a process's resident set size in bytes, from /proc/pid/status.
func RSS(pid int) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb * 1024, err
		}
	}
	return 0, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
}

// CPUTime is the user+system CPU time a process has used, from
// /proc/pid/stat.
func CPUTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// Fields after the command name, which is in parentheses and may hold spaces.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, errors.New("malformed stat")
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, errors.New("short stat")
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, err
	}
	const clkTck = 100 // USER_HZ, 100 on Linux
	return time.Duration(ut+st) * time.Second / clkTck, nil
}

// Poll calls cond every interval until it is true (nil), it fails, or
// timeout or ctx ends.
func Poll(ctx context.Context, timeout, interval time.Duration, what string, cond func() (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		ok, err := cond()
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: not within %s: %w", what, timeout, ctx.Err())
		case <-t.C:
		}
	}
}
