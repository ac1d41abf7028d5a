package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"agentplane/agentd/internal/proc"
)

// agentdScan times agentd's discovery scan (proc.Stopper.Scan, as on every
// heartbeat, the fake OCP Agent under home running) and a raw read of
// /proc/*/comm, interleaved, in this process, while the unrelated processes
// run.
func agentdScan(ctx context.Context, env *Env, home string) ([]Row, error) {
	iters := 400
	if env.Short {
		iters = 150
	}
	env.Logf("agentd scan: %d scans and raw reads, interleaved", iters)
	s := &proc.Stopper{InstallHome: home, Log: zerolog.Nop()}
	var buf [64]byte
	var raw, scan Latencies
	var procs, found int
	once := func(i int) error {
		rawOnce := func() error {
			t0 := time.Now()
			n, err := agentdRawComm(buf[:])
			if i >= 0 {
				raw.Add(time.Since(t0))
			}
			procs = n
			return err
		}
		scanOnce := func() error {
			t0 := time.Now()
			ts, err := s.Scan(ctx)
			if i >= 0 {
				scan.Add(time.Since(t0))
			}
			if err == nil && len(ts) != len(proc.BaseNames) {
				err = fmt.Errorf("the scan found %d base processes under %s, want %d", len(ts), home, len(proc.BaseNames))
			}
			found = len(ts)
			return err
		}
		if i%2 == 0 { // alternate the order, so neither always runs on a warm cache
			return errors.Join(rawOnce(), scanOnce())
		}
		return errors.Join(scanOnce(), rawOnce())
	}
	for i := -10; i < iters; i++ { // 10 rounds of warm-up
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if err := once(i); err != nil {
			return nil, err
		}
	}
	if procs < agentdUnrelated {
		return nil, fmt.Errorf("the raw read saw %d processes, want at least %d", procs, agentdUnrelated)
	}

	baseRow := Row{Bench: "agentd", Case: "raw /proc/*/comm read", Note: fmt.Sprintf(
		"baseline: list /proc, then open, read, close each comm; %d processes", procs)}
	raw.Fill(&baseRow)
	row := Row{Bench: "agentd", Case: fmt.Sprintf("scan, %d procs", agentdUnrelated), Baseline: "raw /proc/*/comm read p50"}
	scan.Fill(&row)
	row.Ratio = row.P50Ms / baseRow.P50Ms
	row.Extra = map[string]float64{"p99_ratio": row.P99Ms / baseRow.P99Ms, "procs": float64(procs), "base_processes": float64(found)}
	row.Note = fmt.Sprintf("proc.Stopper.Scan with the fake OCP Agent's 3 processes found among %d", procs)
	row.Check("≤ 2× raw read (p50)", row.Ratio <= agentdScanTarget)
	env.Logf("agentd scan: p50 %.3f ms vs raw %.3f ms (%.2fx), p99 %.3f vs %.3f ms", row.P50Ms, baseRow.P50Ms, row.Ratio, row.P99Ms, baseRow.P99Ms)
	return []Row{baseRow, row}, nil
}

// agentdRawComm reads /proc/*/comm as plainly as it can be done, and
// returns how many processes it read.
func agentdRawComm(buf []byte) (int, error) {
	d, err := os.Open("/proc")
	if err != nil {
		return 0, err
	}
	names, err := d.Readdirnames(-1)
	d.Close()
	if err != nil {
		return 0, err
	}
	n := 0
	for _, name := range names {
		if name[0] < '0' || name[0] > '9' {
			continue
		}
		fd, err := unix.Open("/proc/"+name+"/comm", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			continue
		}
		if k, err := unix.Read(fd, buf); err == nil && k > 0 {
			n++
		}
		unix.Close(fd)
	}
	return n, nil
}

// agentdSleeps are the unrelated processes, in one process group.
type agentdSleeps struct {
	cmds []*exec.Cmd
	pgid int
}

// agentdStartSleeps starts n `sleep 3600` in one new process group, each
// killed if this process dies. On error, the ones started are returned too,
// for kill.
func agentdStartSleeps(ctx context.Context, n int) (*agentdSleeps, error) {
	s := &agentdSleeps{}
	path, err := exec.LookPath("sleep")
	if err != nil {
		return s, err
	}
	for range n {
		// Not ended by ctx: kill ends the whole group.
		cmd := exec.CommandContext(context.WithoutCancel(ctx), path, "3600")
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pgid: s.pgid, Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			return s, fmt.Errorf("starting unrelated process %d of %d: %w", len(s.cmds)+1, n, err)
		}
		if s.pgid == 0 {
			s.pgid = cmd.Process.Pid
		}
		s.cmds = append(s.cmds, cmd)
	}
	return s, nil
}

// kill SIGKILLs every process started and waits for each.
func (s *agentdSleeps) kill() error {
	if s.pgid != 0 {
		_ = syscall.Kill(-s.pgid, syscall.SIGKILL)
	}
	var errs []error
	for _, c := range s.cmds {
		_ = c.Process.Kill() // in case it left the group
		if err := c.Wait(); err != nil {
			var ee *exec.ExitError
			if !errors.As(err, &ee) {
				errs = append(errs, err)
			}
		}
	}
	s.cmds = nil
	return errors.Join(errs...)
}
