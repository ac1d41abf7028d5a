package proc

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/shirou/gopsutil/v4/process"
	"golang.org/x/sys/unix"
)

// pollSlice bounds each blocking wait so a cancelled context is noticed
// within this time.
const pollSlice = 20 * time.Millisecond

// checkIdentity reports whether t still names a live process: nil when the
// PID is alive, not a zombie, and has t's create time and executable;
// errGone when it exited; errReused when the PID names another process.
func checkIdentity(ctx context.Context, t Target) error {
	st, err := readStat(t.PID)
	if err != nil {
		return err
	}
	if st.zombie() {
		return errGone
	}
	p := &process.Process{Pid: t.PID}
	ct, err := p.CreateTimeWithContext(ctx)
	if err != nil {
		return goneOr(err)
	}
	if ct != t.CreateTime.UnixMilli() {
		return errReused
	}
	exe, err := p.ExeWithContext(ctx)
	if err != nil {
		return goneOr(err)
	}
	if cleanExe(exe) != t.Exe {
		return errReused
	}
	return nil
}

// handle is an open reference to one target process. With a pidfd the
// reference cannot be redirected to a reused PID; without one (old kernels)
// every signal is preceded by an identity check against /proc.
type handle struct {
	t  Target
	fd int // pidfd, or -1 when the kernel has none
}

// openHandle opens a pidfd for t and then verifies t's identity, so the pidfd
// is known to refer to t's process. It returns errGone or errReused when t's
// process no longer exists.
func openHandle(ctx context.Context, t Target) (*handle, error) {
	h := &handle{t: t, fd: -1}
	fd, err := unix.PidfdOpen(int(t.PID), 0)
	switch {
	case err == nil:
		h.fd = fd
	case errors.Is(err, unix.ESRCH):
		return nil, errGone
	case errors.Is(err, unix.ENOSYS):
		// No pidfd: fall back to kill(2) after an identity check.
	default:
		return nil, fmt.Errorf("pidfd_open %d: %w", t.PID, err)
	}
	if err := checkIdentity(ctx, t); err != nil {
		h.close()
		return nil, err
	}
	return h, nil
}

func (h *handle) close() {
	if h.fd >= 0 {
		unix.Close(h.fd)
		h.fd = -1
	}
}

// signal checks the identity again and sends sig. It returns errGone or
// errReused when the process is no longer there, so nothing was sent.
func (h *handle) signal(ctx context.Context, sig unix.Signal) error {
	if err := checkIdentity(ctx, h.t); err != nil {
		return err
	}
	var err error
	if h.fd >= 0 {
		err = unix.PidfdSendSignal(h.fd, sig, nil, 0)
	} else {
		err = unix.Kill(int(h.t.PID), sig)
	}
	if errors.Is(err, unix.ESRCH) {
		return errGone
	}
	if err != nil {
		return fmt.Errorf("sending %s to pid %d: %w", unix.SignalName(sig), h.t.PID, err)
	}
	return nil
}

// wait waits up to d for the process to exit (become a zombie or vanish).
// It reports whether it exited; the error is ctx's when ctx is done first.
func (h *handle) wait(ctx context.Context, d time.Duration) (bool, error) {
	deadline := time.Now().Add(d)
	if h.fd >= 0 {
		return h.waitPidfd(ctx, deadline)
	}
	return h.waitProc(ctx, deadline)
}

// waitPidfd polls the pidfd, which becomes readable when the process exits.
func (h *handle) waitPidfd(ctx context.Context, deadline time.Time) (bool, error) {
	fds := []unix.PollFd{{Fd: int32(h.fd), Events: unix.POLLIN}}
	for {
		if err := ctx.Err(); err != nil {
			return false, err
		}
		rem := time.Until(deadline)
		slice := min(max(rem, 0), pollSlice)
		ms := int((slice + time.Millisecond - 1) / time.Millisecond)
		fds[0].Revents = 0
		n, err := unix.Poll(fds, ms)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return h.waitProc(ctx, deadline)
		}
		if n > 0 && fds[0].Revents&(unix.POLLIN|unix.POLLHUP|unix.POLLERR) != 0 {
			return true, nil
		}
		if rem <= 0 {
			return false, nil
		}
	}
}

// waitProc polls /proc with a short, growing interval.
func (h *handle) waitProc(ctx context.Context, deadline time.Time) (bool, error) {
	interval := time.Millisecond
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		err := checkIdentity(ctx, h.t)
		if errors.Is(err, errGone) {
			return true, nil
		}
		rem := time.Until(deadline)
		if rem <= 0 {
			return false, nil
		}
		timer.Reset(min(interval, rem))
		select {
		case <-ctx.Done():
			return false, ctx.Err()
		case <-timer.C:
		}
		interval = min(interval*2, pollSlice)
	}
}

// signalTarget opens t, checks its identity and sends sig; errGone or
// errReused when t's process is no longer there, in which case nothing is
// sent.
func signalTarget(ctx context.Context, t Target, sig unix.Signal) error {
	h, err := openHandle(ctx, t)
	if err != nil {
		return err
	}
	defer h.close()
	return h.signal(ctx, sig)
}
