package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// e2eTermAndWait sends SIGTERM through each pidfd and waits until every one
// of them is readable (its process exited).
func e2eTermAndWait(fds ...int) error {
	for _, fd := range fds {
		if err := unix.PidfdSendSignal(fd, unix.SIGTERM, nil, 0); err != nil {
			return fmt.Errorf("pidfd_send_signal: %w", err)
		}
	}
	pfds := make([]unix.PollFd, len(fds))
	for i, fd := range fds {
		pfds[i] = unix.PollFd{Fd: int32(fd), Events: unix.POLLIN}
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(pfds) > 0 {
		if time.Now().After(deadline) {
			return errors.New("fake processes did not exit within 10s of SIGTERM")
		}
		if _, err := unix.Poll(pfds, 100); err != nil && !errors.Is(err, unix.EINTR) {
			return fmt.Errorf("poll: %w", err)
		}
		left := pfds[:0]
		for _, p := range pfds {
			if p.Revents == 0 {
				left = append(left, p)
			}
		}
		pfds = left
	}
	return nil
}

// e2eStartFake starts home/bin/ocp_agentd (reaped by Env) and waits until it
// and its two children run from home and have written their pid files. It
// returns the supervisor and the pid of each base process. fakeEnv
// (FAKE_OCP_*) sets the fakes' behaviour; none is graceful.
func e2eStartFake(ctx context.Context, env *Env, name, home string, fakeEnv ...string) (*Process, map[string]int, error) {
	for _, n := range e2eBaseNames {
		if err := os.Remove(filepath.Join(home, "run", n+".pid")); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, nil, err
		}
	}
	p, err := env.Start(ctx, name, fakeEnv, filepath.Join(home, "bin", "ocp_agentd"))
	if err != nil {
		return nil, nil, err
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		if pids, ok := fakeReady(home); ok {
			return p, pids, nil
		}
		if p.Exited() {
			return nil, nil, fmt.Errorf("fake ocp_agentd under %s exited: %s", home, p.Tail(5))
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			p.Kill()
			return nil, nil, fmt.Errorf("fake OCP Agent under %s not ready within 15s", home)
		}
		time.Sleep(500 * time.Microsecond)
	}
}

// fakeReady returns the pids of the fake base processes under home when
// each has written its pid file and runs from home/bin.
func fakeReady(home string) (map[string]int, bool) {
	pids := make(map[string]int, len(e2eBaseNames))
	for _, n := range e2eBaseNames {
		b, err := os.ReadFile(filepath.Join(home, "run", n+".pid"))
		if err != nil {
			return nil, false
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil {
			return nil, false
		}
		if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); err != nil || exe != filepath.Join(home, "bin", n) {
			return nil, false
		}
		pids[n] = pid
	}
	return pids, true
}

// e2eReap waits for the supervisor (reaped by Env) and reaps its two
// children, which this process inherited as a subreaper.
func e2eReap(sup *Process, pids map[string]int) error {
	select {
	case <-sup.Done():
	case <-time.After(10 * time.Second):
		return errors.New("fake ocp_agentd still running 10s after it was stopped")
	}
	for _, n := range e2eBaseNames[1:] {
		if err := e2eWaitPID(pids[n], 10*time.Second); err != nil {
			return fmt.Errorf("%s: %w", n, err)
		}
	}
	return nil
}

// e2eWaitPID reaps pid, an exited child of this process, waiting up to
// timeout for it to exit.
func e2eWaitPID(pid int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		var ws unix.WaitStatus
		got, err := unix.Wait4(pid, &ws, unix.WNOHANG, nil)
		switch {
		case got == pid:
			return nil
		case errors.Is(err, unix.EINTR):
			continue
		case err != nil:
			return fmt.Errorf("wait4 %d: %w", pid, err)
		case time.Now().After(deadline):
			return fmt.Errorf("pid %d did not exit within %s", pid, timeout)
		}
		time.Sleep(200 * time.Microsecond)
	}
}

// e2eKillUnder kills every process running from one of the dirs, then reaps
// the zombies this process inherited that no Process owns.
func e2eKillUnder(env *Env, dirs ...string) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		left := 0
		e2eEachPID(func(pid int) {
			exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
			if err != nil {
				return
			}
			for _, d := range dirs {
				if strings.HasPrefix(exe, d+"/") {
					_ = unix.Kill(pid, unix.SIGKILL)
					left++
				}
			}
		})
		e2eReapOrphans(env)
		if left == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d fake processes still running after SIGKILL", left)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// e2eReapOrphans reaps zombie children of this process that no Process owns.
func e2eReapOrphans(env *Env) {
	owned := map[int]bool{}
	env.mu.Lock()
	for _, p := range env.procs {
		owned[p.PID()] = true
	}
	env.mu.Unlock()
	self := os.Getpid()
	e2eEachPID(func(pid int) {
		if owned[pid] {
			return
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return
		}
		i := strings.LastIndexByte(string(b), ')')
		f := strings.Fields(string(b[i+1:]))
		if len(f) < 2 || f[0] != "Z" || f[1] != strconv.Itoa(self) {
			return
		}
		var ws unix.WaitStatus
		_, _ = unix.Wait4(pid, &ws, unix.WNOHANG, nil)
	})
}

func e2eEachPID(f func(pid int)) {
	names, err := os.ReadDir("/proc")
	if err != nil {
		return
	}
	for _, n := range names {
		if pid, err := strconv.Atoi(n.Name()); err == nil {
			f(pid)
		}
	}
}

// e2eInstallFake installs the fake under the three base names in home/bin.
func e2eInstallFake(fake, home string) error {
	bin := filepath.Join(home, "bin")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		return err
	}
	b, err := os.ReadFile(fake)
	if err != nil {
		return fmt.Errorf("the fake OCP Agent: %w", err)
	}
	for _, n := range e2eBaseNames {
		// A copy written and closed before any exec: no ETXTBSY.
		if err := os.WriteFile(filepath.Join(bin, n), b, 0o755); err != nil {
			return err
		}
	}
	return nil
}
