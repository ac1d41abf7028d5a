package proc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"strconv"
	"time"

	"github.com/shirou/gopsutil/v4/process"
	"golang.org/x/sys/unix"
)

func init() {
	// Create times are boot time plus ticks; read boot time once so every
	// identity check computes the same value without rereading /proc/stat.
	process.EnableBootTimeCache(true)
}

// procRoot is where procfs is mounted.
const procRoot = "/proc"

// errGone means the process recorded in a Target no longer exists: it exited
// (a zombie counts) or its PID now belongs to another process.
var errGone = errors.New("process gone")

// errReused is errGone for the case where the PID is alive but names
// another process (different create time or executable).
var errReused = fmt.Errorf("pid reused by another process: %w", errGone)

// Scan returns the base processes whose executable lies under InstallHome,
// sorted by PID. Base processes elsewhere are left out (logged at debug, as
// Scan runs periodically; StopAll warns about them); so are
// zombies and processes that vanish while being read. It reads only
// /proc/<pid>/comm for every process and looks closer only at those whose
// comm is a base name. The error is non-nil when InstallHome is not an
// absolute path, /proc cannot be listed, or ctx is done.
func (s *Stopper) Scan(ctx context.Context) ([]Target, error) {
	in, out, err := s.scan(ctx)
	for _, t := range out {
		s.Log.Debug().Int32("pid", t.PID).Str("name", t.Name).Str("exe", t.Exe).
			Str("install_home", s.InstallHome).Msg("base process outside install home left alone")
	}
	return in, err
}

// scan returns base processes under the install home (in) and those outside
// it (out).
func (s *Stopper) scan(ctx context.Context) (in, out []Target, err error) {
	s.scans.Add(1)
	defer s.observeScan(time.Now(), &err)
	homes, err := installHomes(s.InstallHome)
	if err != nil {
		return nil, nil, fmt.Errorf("scanning processes: %w", err)
	}
	d, err := os.Open(procRoot)
	if err != nil {
		return nil, nil, fmt.Errorf("scanning processes: %w", err)
	}
	names, err := d.Readdirnames(-1)
	d.Close()
	if err != nil {
		return nil, nil, fmt.Errorf("scanning processes: listing %s: %w", procRoot, err)
	}
	var buf [64]byte
	for i, name := range names {
		if i%256 == 0 {
			if err := ctx.Err(); err != nil {
				return nil, nil, fmt.Errorf("scanning processes: %w", err)
			}
		}
		if name == "" || name[0] < '1' || name[0] > '9' {
			continue
		}
		pid, err := strconv.ParseInt(name, 10, 32)
		if err != nil {
			continue
		}
		comm, ok := readComm(name, buf[:])
		if !ok || !isBaseName(string(comm)) {
			continue
		}
		t, err := describe(ctx, int32(pid), homes)
		if err != nil {
			if !errors.Is(err, errGone) {
				s.Log.Debug().Err(err).Int64("pid", pid).Msg("cannot read base process")
			}
			continue
		}
		if t.inHome {
			in = append(in, t.Target)
		} else {
			out = append(out, t.Target)
		}
	}
	byPID := func(a, b Target) int { return int(a.PID) - int(b.PID) }
	slices.SortFunc(in, byPID)
	slices.SortFunc(out, byPID)
	return in, out, nil
}

// readComm reads /proc/<pid>/comm into buf without allocating and returns it
// without the trailing newline.
func readComm(pid string, buf []byte) ([]byte, bool) {
	fd, err := unix.Open(procRoot+"/"+pid+"/comm", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, false
	}
	n, err := unix.Read(fd, buf)
	unix.Close(fd)
	if err != nil || n <= 0 {
		return nil, false
	}
	return bytes.TrimSuffix(buf[:n], []byte("\n")), true
}

type described struct {
	Target
	inHome bool
}

// describe reads a base process's details. It returns errGone when the
// process vanished or is a zombie.
func describe(ctx context.Context, pid int32, homes []string) (described, error) {
	st, err := readStat(pid)
	if err != nil {
		return described{}, err
	}
	if st.zombie() {
		return described{}, errGone
	}
	if !isBaseName(st.comm) {
		return described{}, errGone // exec'd into something else meanwhile
	}
	p := &process.Process{Pid: pid}
	ct, err := p.CreateTimeWithContext(ctx)
	if err != nil {
		return described{}, goneOr(err)
	}
	rawExe, err := p.ExeWithContext(ctx)
	if err != nil {
		return described{}, goneOr(err)
	}
	exe, _, inHome := classify(homes, st.comm, rawExe)
	t := Target{
		PID:        pid,
		Name:       st.comm,
		Exe:        exe,
		CreateTime: time.UnixMilli(ct),
	}
	t.Cmdline, _ = p.CmdlineWithContext(ctx)
	t.Cwd, _ = p.CwdWithContext(ctx)
	if u, err := p.UsernameWithContext(ctx); err == nil {
		t.User = u
	} else if uids, err := p.UidsWithContext(ctx); err == nil && len(uids) > 0 {
		t.User = strconv.FormatUint(uint64(uids[0]), 10)
	}
	return described{Target: t, inHome: inHome}, nil
}

// goneOr maps "no such process" read errors to errGone.
func goneOr(err error) error {
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ESRCH) || errors.Is(err, process.ErrorProcessNotRunning) {
		return errGone
	}
	return err
}

// stat is what we use of /proc/<pid>/stat.
type stat struct {
	comm  string
	state byte
	ppid  int32
}

func (s stat) zombie() bool { return s.state == 'Z' || s.state == 'X' }

// readStat reads /proc/<pid>/stat; errGone when the process does not exist.
func readStat(pid int32) (stat, error) {
	b, err := os.ReadFile(procRoot + "/" + strconv.Itoa(int(pid)) + "/stat")
	if err != nil {
		return stat{}, goneOr(err)
	}
	return parseStat(b)
}

// parseStat parses "pid (comm) S ppid ...". comm may contain spaces and
// parentheses, so it spans from the first '(' to the last ')'.
func parseStat(b []byte) (stat, error) {
	open := bytes.IndexByte(b, '(')
	end := bytes.LastIndexByte(b, ')')
	if open < 0 || end < open {
		return stat{}, fmt.Errorf("malformed stat %q", b)
	}
	fields := bytes.Fields(b[end+1:])
	if len(fields) < 2 || len(fields[0]) != 1 {
		return stat{}, fmt.Errorf("malformed stat %q", b)
	}
	ppid, err := strconv.ParseInt(string(fields[1]), 10, 32)
	if err != nil {
		return stat{}, fmt.Errorf("malformed stat ppid: %w", err)
	}
	return stat{comm: string(b[open+1 : end]), state: fields[0][0], ppid: int32(ppid)}, nil
}
