package proc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
)

// Start timing. Polls scan /proc, which costs about a millisecond.
const (
	startPoll      = 100 * time.Millisecond // between scans while waiting for processes to appear
	supervisorWait = 5 * time.Second        // for ocp_agentd to start the others
	verifyWait     = 30 * time.Second       // for every base process to run, after starting, when Stopper.StartWait is 0
	ctlWaitDelay   = 2 * time.Second        // for ocp_agentctl's output to close after it exits or is killed
	maxOutputLine  = 4096                   // longer output lines are cut
)

// ctlName is the OCP Agent's control script, in <install home>/bin.
const ctlName = "ocp_agentctl"

// StartAll makes the OCP Agent's base processes run and returns how many of
// them were not running when it began.
//
// With an executable <InstallHome>/bin/ocp_agentctl it runs
// "ocp_agentctl start", each output line an EventOutput; a non-zero exit is
// an error naming the exit status and the last output line. Otherwise it
// starts processes from specs (recorded by ReadStartSpec; specs whose Exe
// is not under InstallHome are ignored): ocp_agentd first when it is not
// running, then, after up to 5s for ocp_agentd to start the others, each
// recorded base process still missing. Processes run in a session of their
// own, as the recorded user (when it is not agentd's), with their recorded
// argv, environment and working directory and /dev/null for stdin, stdout
// and stderr; they outlive the call, and agentd reaps them when they exit.
// Without the script and without specs it returns an error and starts
// nothing.
//
// When every wanted process (the recorded base names, or all of BaseNames
// when nothing is recorded) already runs, it does nothing. Otherwise it then
// waits, up to StartWait (default 30s), until every wanted process runs, and
// returns an error naming those that do not. It returns an error wrapping
// ctx.Err() as soon as ctx is done and starts nothing after that.
//
// emit, when not nil, gets an EventStarted for each wanted process, started
// or found running; calls are serialized.
func (s *Stopper) StartAll(ctx context.Context, specs []StartSpec, emit func(Event)) (n int, err error) {
	defer s.observeCommand("start", time.Now(), &err)
	homes, err := installHomes(s.InstallHome)
	if err != nil {
		return 0, fmt.Errorf("starting ocp agent processes: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("starting ocp agent processes: %w", err)
	}
	r := &run{s: s, emit: emit}
	st := &starter{run: r, specs: map[string]StartSpec{}, reported: map[int32]bool{}, started: map[string]bool{}}
	for _, sp := range specs {
		if _, dup := st.specs[sp.Name]; !dup && isBaseName(sp.Name) && underHome(homes, cleanExe(sp.Exe)) {
			st.specs[sp.Name] = sp
		}
	}
	ctl := filepath.Join(homes[0], "bin", ctlName)
	useCtl := isExecutable(ctl)
	for _, name := range BaseNames {
		if _, ok := st.specs[name]; ok || (useCtl && len(st.specs) == 0) {
			st.want = append(st.want, name)
		}
	}
	if len(st.want) == 0 {
		return 0, fmt.Errorf("starting ocp agent processes: no bin/%s and no recorded command line for %s under %s",
			ctlName, strings.Join(BaseNames, ", "), s.InstallHome)
	}

	running, err := st.scan(ctx)
	if err != nil {
		return 0, err
	}
	st.report(running, "already running")
	missing := st.missing(running)
	if len(missing) == 0 {
		return 0, nil
	}
	if useCtl {
		if err := st.runCtl(ctx, ctl); err != nil {
			return 0, err
		}
	} else if err := st.fromSpecs(ctx, running); err != nil {
		return 0, err
	}
	if err := st.verify(ctx); err != nil {
		return 0, err
	}
	return len(missing), nil
}

// starter is the state of one StartAll call.
type starter struct {
	*run
	specs    map[string]StartSpec // usable specs by base name
	want     []string             // base names that must run, in BaseNames order
	reported map[int32]bool       // PIDs with an EventStarted
	started  map[string]bool      // base names this call started
}

// scan returns the base processes under the install home, by name.
func (st *starter) scan(ctx context.Context) (map[string][]Target, error) {
	in, _, err := st.s.scan(ctx)
	if err != nil {
		return nil, fmt.Errorf("starting ocp agent processes: %w", err)
	}
	m := map[string][]Target{}
	for _, t := range in {
		m[t.Name] = append(m[t.Name], t)
	}
	return m, nil
}

// missing returns the wanted names not running.
func (st *starter) missing(running map[string][]Target) []string {
	var out []string
	for _, name := range st.want {
		if len(running[name]) == 0 {
			out = append(out, name)
		}
	}
	return out
}

// report emits an EventStarted, once per PID, for each running wanted process.
func (st *starter) report(running map[string][]Target, how string) {
	for _, name := range st.want {
		for _, t := range running[name] {
			if !st.reported[t.PID] {
				st.reported[t.PID] = true
				st.event(EventStarted, t, fmt.Sprintf("%s pid %d %s", t.Name, t.PID, how))
			}
		}
	}
}

// fromSpecs starts ocp_agentd when recorded and not running, gives it time
// to start the others, then starts the recorded processes still missing.
func (st *starter) fromSpecs(ctx context.Context, running map[string][]Target) error {
	sup, recorded := st.specs[Supervisor]
	if recorded && len(running[Supervisor]) == 0 {
		if err := st.startOne(ctx, sup); err != nil {
			return err
		}
	}
	if st.started[Supervisor] || len(running[Supervisor]) > 0 {
		var err error
		if running, err = st.waitRunning(ctx, time.Now().Add(supervisorWait)); err != nil {
			return err
		}
		st.report(running, "started by "+Supervisor)
	}
	for _, name := range st.missing(running) {
		if st.started[name] {
			continue // started, but gone again: verify names it
		}
		if err := st.startOne(ctx, st.specs[name]); err != nil {
			return err
		}
	}
	return nil
}

// waitRunning rescans every startPoll until every wanted process runs or
// deadline passes, and returns the last scan. The error wraps ctx.Err()
// when ctx is done first.
func (st *starter) waitRunning(ctx context.Context, deadline time.Time) (map[string][]Target, error) {
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("starting ocp agent processes: %w", ctx.Err())
		case <-timer.C:
		}
		running, err := st.scan(ctx)
		if err != nil {
			return nil, err
		}
		rem := time.Until(deadline)
		if len(st.missing(running)) == 0 || rem <= 0 {
			return running, nil
		}
		timer.Reset(min(startPoll, rem))
	}
}

// verify waits until every wanted process runs, up to Stopper.StartWait.
func (st *starter) verify(ctx context.Context) error {
	wait := st.s.StartWait
	if wait <= 0 {
		wait = verifyWait
	}
	running, err := st.waitRunning(ctx, time.Now().Add(wait))
	if err != nil {
		return err
	}
	st.report(running, "running")
	if missing := st.missing(running); len(missing) > 0 {
		return fmt.Errorf("starting ocp agent processes: %s not running under %s after %s",
			strings.Join(missing, ", "), st.s.InstallHome, wait)
	}
	return nil
}

// startOne starts sp's process and reaps it, in a goroutine, when it exits.
func (st *starter) startOne(ctx context.Context, sp StartSpec) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("starting ocp agent processes: %w", err)
	}
	cmd := specCmd(sp, st.s.InstallHome)
	t := Target{Name: sp.Name, Exe: sp.Exe, Cmdline: strings.Join(cmd.Args, " "), User: sp.User, Cwd: cmd.Dir}
	if err := cmd.Start(); err != nil {
		st.event(EventError, t, fmt.Sprintf("starting %s: %v", sp.Name, err))
		return fmt.Errorf("starting %s: %w", sp.Name, err)
	}
	t.PID = int32(cmd.Process.Pid)
	st.started[sp.Name] = true
	st.reported[t.PID] = true
	st.event(EventStarted, t, fmt.Sprintf("started %s pid %d as %s: %s", t.Name, t.PID, t.User, t.Cmdline))
	log := st.s.Log
	go func() {
		err := cmd.Wait()
		log.Info().Int32("pid", t.PID).Str("name", t.Name).AnErr("status", err).Msg("started ocp agent process exited")
	}()
	return nil
}

// specCmd returns the command that starts sp: its executable, argv,
// environment (empty when it was unreadable) and working directory (home
// when unknown), in a new session, as sp's user and groups when they are not
// this process's.
func specCmd(sp StartSpec, home string) *exec.Cmd {
	args := sp.Args
	if len(args) == 0 {
		args = []string{sp.Exe}
	}
	env := sp.Env
	if env == nil {
		env = []string{}
	}
	dir := sp.Dir
	if dir == "" {
		dir = home
	}
	attr := &syscall.SysProcAttr{Setsid: true}
	if int(sp.UID) != os.Getuid() || int(sp.GID) != os.Getgid() {
		attr.Credential = &syscall.Credential{Uid: sp.UID, Gid: sp.GID, Groups: sp.Groups}
	}
	return &exec.Cmd{Path: sp.Exe, Args: slices.Clone(args), Env: env, Dir: dir, SysProcAttr: attr}
}

// runCtl runs "ocp_agentctl start" in the install home.
func (st *starter) runCtl(ctx context.Context, ctl string) error {
	out := &lineWriter{emit: func(line string) {
		st.event(EventOutput, Target{}, ctlName+": "+line)
	}}
	cmd := exec.CommandContext(ctx, ctl, "start")
	cmd.Dir = st.s.InstallHome
	cmd.Stdout, cmd.Stderr = out, out // one pipe: lines keep their order
	cmd.WaitDelay = ctlWaitDelay
	err := cmd.Run()
	out.flush()
	if ctx.Err() != nil {
		return fmt.Errorf("starting ocp agent processes: bin/%s start: %w", ctlName, ctx.Err())
	}
	if errors.Is(err, exec.ErrWaitDelay) {
		// It exited 0, but something it started kept its output open.
		err = nil
	}
	if err != nil {
		msg := fmt.Sprintf("starting ocp agent processes: bin/%s start: %v", ctlName, err)
		if out.last != "" {
			msg += ": " + out.last
		}
		return errors.New(msg)
	}
	return nil
}

// lineWriter calls emit for each line written to it and keeps the last
// non-empty one. exec calls Write from one goroutine at a time.
type lineWriter struct {
	emit func(string)
	buf  []byte
	last string
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			break
		}
		w.line(w.buf[:i])
		w.buf = w.buf[i+1:]
	}
	if len(w.buf) > maxOutputLine {
		w.line(w.buf)
		w.buf = w.buf[:0]
	}
	return len(p), nil
}

// flush emits an unterminated last line.
func (w *lineWriter) flush() {
	if len(w.buf) > 0 {
		w.line(w.buf)
		w.buf = nil
	}
}

func (w *lineWriter) line(b []byte) {
	if len(b) > maxOutputLine {
		b = b[:maxOutputLine]
	}
	s := strings.TrimRight(string(b), "\r \t")
	if s == "" {
		return
	}
	w.last = s
	w.emit(s)
}

// isExecutable reports whether path is a regular file with an execute bit.
func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}
