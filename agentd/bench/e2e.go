package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/durationpb"

	hostv1 "agentplane/gen/agentplane/host/v1"
	taskv1 "agentplane/gen/agentplane/task/v1"
)

// stop-e2e: from the StopAgent request to the task SUCCESSFUL, seen through
// TaskService.WatchTask, with a real agentd stopping three graceful fake OCP
// Agent processes (ocp_agentd, which starts ocp_mgragent and ocp_monagent).
//
// Before every stop the bench starts the fake ocp_agentd itself and waits
// until all three have written their pid files (so each handles SIGTERM) and
// run from the install home: agentd discovers processes when the command
// arrives, so they are visible to it then. Only the stop is timed.
//
// The baseline, interleaved with the stops so both see the same noise, is
// the floor of the work itself: the bench stops three fakes of its own the
// way agentd does (SIGTERM ocp_agentd through a pidfd and wait for its exit,
// then SIGTERM the other two and wait for both), without agentd, server or
// store. The ratio is agentplane's overhead on top of it.
func init() {
	register(Scenario{Order: 20, Name: "stop-e2e", Run: runStopE2E})
}

// e2eBaseNames are the OCP Agent's base processes; ocp_agentd starts the
// others.
var e2eBaseNames = []string{"ocp_agentd", "ocp_mgragent", "ocp_monagent"}

// e2eSample is one measured stop.
type e2eSample struct {
	total, accept time.Duration // request → final task seen; request → response
	sent, seen    time.Time     // when the request was sent, when the final task arrived
	task          *taskv1.Task  // the final task
}

// e2eHost is one agentd with an install home of its own.
type e2eHost struct {
	name, home string
	id         int64
	agentd     *Process
	last       time.Time // when its last stop was sent
}

// The stops rotate over e2eHosts agentds, at least e2eHostInterval apart on
// each: one stop of three processes is about a dozen messages on the host's
// agent stream (an event per process found, signalled and exited, a
// heartbeat, the result), and the server ends a stream that sends more than
// 50 a second (--agent-max-msgs-per-sec, burst 200). Stopping one host many
// times a second is no real load; a stop's latency is what is measured here.
const (
	e2eHosts        = 8
	e2eHostInterval = 400 * time.Millisecond
)

func runStopE2E(ctx context.Context, env *Env) (rows []Row, err error) {
	stops, warmup := 500, 2*e2eHosts
	if env.Short {
		stops = 200
	}

	// The fake ocp_agentd's children outlive it (agentd stops it first); as
	// a subreaper this process inherits and reaps them.
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return nil, fmt.Errorf("PR_SET_CHILD_SUBREAPER: %w", err)
	}
	work, err := filepath.EvalSymlinks(env.Work) // agentd compares resolved executable paths
	if err != nil {
		return nil, err
	}
	baseHome := filepath.Join(work, "baseline", "ocp_agent")
	homes := []string{baseHome}
	defer func() {
		err = errors.Join(err, e2eKillUnder(env, homes...))
		_ = unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
	}()
	if err := e2eInstallFake(env.Binary("fakeocpagent"), baseHome); err != nil {
		return nil, err
	}

	prof := newE2EProf()
	srv, err := env.StartServer(ctx, "server", prof.args(ctx, "server")...)
	if err != nil {
		return nil, err
	}
	conn, err := srv.Dial()
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	hosts := hostv1.NewHostServiceClient(conn)
	tasks := taskv1.NewTaskServiceClient(conn)

	fleet := make([]*e2eHost, e2eHosts)
	for k := range fleet {
		h := &e2eHost{name: fmt.Sprintf("bench-e2e-%d", k+1), home: filepath.Join(work, fmt.Sprintf("host%d", k+1), "ocp_agent")}
		homes = append(homes, h.home)
		if err := e2eInstallFake(env.Binary("fakeocpagent"), h.home); err != nil {
			return nil, err
		}
		tok, err := hosts.CreateJoinToken(ctx, &hostv1.CreateJoinTokenRequest{HostName: h.name, Ttl: durationpb.New(time.Hour)})
		if err != nil {
			return nil, fmt.Errorf("creating a join token: %w", err)
		}
		// agentd logs at its default level, info: its "command started" and
		// "command finished" lines split the stop subtask below.
		argv := append([]string{env.Binary("agentplane-agentd"),
			"--server", srv.GRPCAddr, "--ca-file", srv.CAFile, "--state-dir", filepath.Join(filepath.Dir(h.home), "agentd-state"),
			"--host-name", h.name, "--install-home", h.home, "--grace", "30s", "--log-format", "json", "--log-level", "info"},
			prof.args(ctx, fmt.Sprintf("agentd%d", k+1))...)
		if h.agentd, err = env.Start(ctx, fmt.Sprintf("agentd%d", k+1), []string{"AGENTPLANE_JOIN_TOKEN=" + tok.GetToken()}, argv...); err != nil {
			return nil, err
		}
		fleet[k] = h
	}
	for _, h := range fleet {
		if h.id, err = e2eWaitOnline(ctx, hosts, h); err != nil {
			return nil, err
		}
	}

	var samples []e2eSample
	var base Latencies
	env.Logf("stop-e2e: %d agentds online; %d stops (+%d warm-up), each beside a baseline stop", len(fleet), stops, warmup)
	for i := range warmup + stops {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if i == warmup {
			prof.start(ctx, "stop-e2e", time.Duration(stops)*60*time.Millisecond)
		}
		d, err := e2eBaseline(ctx, env, baseHome)
		if err != nil {
			return nil, fmt.Errorf("baseline stop %d: %w", i, err)
		}
		h := fleet[i%len(fleet)]
		s, err := e2eStop(ctx, env, h, hosts, tasks)
		if err != nil {
			return nil, fmt.Errorf("stop %d on %s: %w (agentd log tail:\n%s)", i, h.name, err, h.agentd.Tail(10))
		}
		if i >= warmup {
			base.Add(d)
			samples = append(samples, s)
		}
		if (i+1)%100 == 0 {
			env.Logf("stop-e2e: %d/%d stops", i+1, warmup+stops)
		}
	}
	if err := prof.wait(); err != nil {
		env.Logf("stop-e2e: profiles: %v", err)
	}
	var agentdLogs []string
	for _, h := range fleet {
		agentdLogs = append(agentdLogs, h.agentd.LogPath)
	}
	return e2eRows(samples, &base, agentdLogs), nil
}

// e2eStop starts the fakes under home, waits until they are ready, then stops
// them through the server and follows the task until it is final.
func e2eStop(ctx context.Context, env *Env, h *e2eHost, hosts hostv1.HostServiceClient,
	tasks taskv1.TaskServiceClient) (e2eSample, error) {
	sup, pids, err := e2eStartFake(ctx, env, "fake-"+h.name, h.home)
	if err != nil {
		return e2eSample{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if wait := time.Until(h.last.Add(e2eHostInterval)); wait > 0 {
		time.Sleep(wait)
	}

	s := e2eSample{sent: time.Now()}
	h.last = s.sent
	resp, err := hosts.StopAgent(ctx, &hostv1.StopAgentRequest{HostId: h.id})
	if err != nil {
		return s, fmt.Errorf("StopAgent: %w", err)
	}
	s.accept = time.Since(s.sent)
	w, err := tasks.WatchTask(ctx, &taskv1.WatchTaskRequest{Id: resp.GetTask().GetId()})
	if err != nil {
		return s, fmt.Errorf("WatchTask %d: %w", resp.GetTask().GetId(), err)
	}
	for s.task == nil {
		m, err := w.Recv()
		if err != nil {
			return s, fmt.Errorf("WatchTask %d: %w", resp.GetTask().GetId(), err)
		}
		switch t := m.GetTask(); t.GetStatus() {
		case taskv1.TaskStatus_TASK_STATUS_SUCCESSFUL:
			s.seen, s.task = time.Now(), t
		case taskv1.TaskStatus_TASK_STATUS_FAILED:
			return s, fmt.Errorf("task %d FAILED: %s", t.GetId(), e2eMessages(t))
		}
	}
	s.total = s.seen.Sub(s.sent)
	// Drain the stream (it ends after the final task), then reap: agentd saw
	// every process exit, so all three are zombies by now.
	for {
		if _, err := w.Recv(); err != nil {
			if !errors.Is(err, io.EOF) {
				return s, fmt.Errorf("WatchTask %d after the final task: %w", s.task.GetId(), err)
			}
			break
		}
	}
	return s, e2eReap(sup, pids)
}

// e2eBaseline starts the fakes under home and stops them directly, the way
// agentd does without its checks: ocp_agentd first, then the two others in
// parallel, SIGTERM through a pidfd and poll the pidfd for the exit. It
// returns the time from the first signal to the last exit.
func e2eBaseline(ctx context.Context, env *Env, home string) (time.Duration, error) {
	sup, pids, err := e2eStartFake(ctx, env, "baseline-fake", home)
	if err != nil {
		return 0, err
	}
	fds := map[string]int{}
	defer func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}()
	for name, pid := range pids {
		fd, err := unix.PidfdOpen(pid, 0)
		if err != nil {
			return 0, fmt.Errorf("pidfd_open %s pid %d: %w", name, pid, err)
		}
		fds[name] = fd
	}
	start := time.Now()
	if err := e2eTermAndWait(fds["ocp_agentd"]); err != nil {
		return 0, err
	}
	if err := e2eTermAndWait(fds["ocp_mgragent"], fds["ocp_monagent"]); err != nil {
		return 0, err
	}
	d := time.Since(start)
	return d, e2eReap(sup, pids)
}

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
// returns the supervisor and the pid of each base process.
func e2eStartFake(ctx context.Context, env *Env, name, home string) (*Process, map[string]int, error) {
	for _, n := range e2eBaseNames {
		if err := os.Remove(filepath.Join(home, "run", n+".pid")); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, nil, err
		}
	}
	p, err := env.Start(ctx, name, nil, filepath.Join(home, "bin", "ocp_agentd"))
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

// e2eWaitOnline waits until the agentd's host is ONLINE and returns its id.
func e2eWaitOnline(ctx context.Context, hosts hostv1.HostServiceClient, h *e2eHost) (int64, error) {
	var id int64
	err := Poll(ctx, 60*time.Second, 20*time.Millisecond, h.name+" online", func() (bool, error) {
		if h.agentd.Exited() {
			return false, fmt.Errorf("agentd exited: %s", h.agentd.Tail(20))
		}
		resp, err := hosts.ListHosts(ctx, &hostv1.ListHostsRequest{Size: 2000})
		if err != nil {
			return false, err
		}
		name := h.name
		for _, h := range resp.GetHosts() {
			if h.GetName() == name && h.GetStatus() == hostv1.HostStatus_HOST_STATUS_ONLINE {
				id = h.GetId()
				return true, nil
			}
		}
		return false, nil
	})
	return id, err
}

func e2eMessages(t *taskv1.Task) string {
	var out []string
	for _, st := range t.GetSubtasks() {
		if st.GetMessage() != "" {
			out = append(out, st.GetName()+": "+st.GetMessage())
		}
	}
	return strings.Join(out, "; ")
}

// e2eAgentdTimes reads agentd's JSON log: when each subtask's command
// started and finished there (millisecond timestamps).
func e2eAgentdTimes(paths []string) map[int64][2]time.Time {
	out := map[int64][2]time.Time{}
	for _, p := range paths {
		e2eAgentdLog(p, out)
	}
	return out
}

func e2eAgentdLog(path string, out map[int64][2]time.Time) {
	f, err := os.Open(path)
	if err != nil {
		return
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var e struct {
			Msg     string `json:"message"`
			Subtask int64  `json:"subtask_id"`
			Time    string `json:"time"`
		}
		if json.Unmarshal(sc.Bytes(), &e) != nil || e.Subtask == 0 {
			continue
		}
		i := map[string]int{"command started": 0, "command finished": 1}
		k, ok := i[e.Msg]
		if !ok {
			continue
		}
		t, err := time.Parse(time.RFC3339Nano, e.Time)
		if err != nil {
			continue
		}
		v := out[e.Subtask]
		v[k] = t
		out[e.Subtask] = v
	}
}

// e2eRows turns the samples into the report: the end-to-end row, the
// baseline row, a row per subtask (its end − start on the server's
// millisecond clock), and a row of the time between them.
func e2eRows(samples []e2eSample, base *Latencies, agentdLogs []string) []Row {
	var total, accept Latencies
	for _, s := range samples {
		total.Add(s.total)
		accept.Add(s.accept)
	}
	main := Row{Bench: "stop-e2e", Case: "3 graceful processes, gRPC, WatchTask", Baseline: "bench SIGTERM+wait p50"}
	total.Fill(&main)
	if b := base.Quantile(0.5); b > 0 {
		main.Ratio = float64(total.Quantile(0.5)) / float64(b)
	}
	p50, p99 := total.Quantile(0.5), total.Quantile(0.99)
	main.Check("p50 ≤ 15 ms, p99 ≤ 50 ms", p50 <= 15*time.Millisecond && p99 <= 50*time.Millisecond)
	main.Note = fmt.Sprintf("request → SUCCESSFUL seen by WatchTask; stops rotate over %d agentds (each ≥ %s apart: the agent stream's message limit), server on SQLite, all TLS", e2eHosts, e2eHostInterval)

	baseRow := Row{Bench: "stop-e2e", Case: "baseline: bench stops 3 fakes itself",
		Note: "SIGTERM ocp_agentd via pidfd, wait; then the other two, wait (agentd's order, no checks)"}
	base.Fill(&baseRow)

	rows := []Row{main, baseRow}
	acceptRow := Row{Bench: "stop-e2e", Case: "part: accept (request → task)"}
	accept.Fill(&acceptRow)
	rows = append(rows, acceptRow)

	if len(samples) == 0 {
		return rows
	}
	// Phases on the server's clock (ms), in DAG order.
	names := []string{}
	for _, st := range samples[0].task.GetSubtasks() {
		names = append(names, st.GetName())
	}
	durs := make([]Latencies, len(names))
	gaps := make([]Latencies, len(names)+1) // before each subtask, and after the last until the task's end
	var notify Latencies                    // task end → the final task seen by the client
	var dispatch, agentdExec, result Latencies
	agentdTimes := e2eAgentdTimes(agentdLogs)
	for _, s := range samples {
		t := s.task
		prev := t.GetStartTime().AsTime()
		for i, st := range t.GetSubtasks() {
			if i >= len(names) {
				break
			}
			start, end := st.GetStartTime().AsTime(), st.GetEndTime().AsTime()
			gaps[i].Add(start.Sub(prev))
			durs[i].Add(end.Sub(start))
			prev = end
			if at, ok := agentdTimes[st.GetId()]; ok && !at[0].IsZero() && !at[1].IsZero() {
				dispatch.Add(at[0].Sub(start))
				agentdExec.Add(at[1].Sub(at[0]))
				result.Add(end.Sub(at[1]))
			}
		}
		end := t.GetEndTime().AsTime()
		gaps[len(names)].Add(end.Sub(prev))
		notify.Add(s.seen.Sub(end))
	}
	for i, n := range names {
		r := Row{Bench: "stop-e2e", Case: fmt.Sprintf("part: subtask %d %s", i+1, n)}
		durs[i].Fill(&r)
		if i == 0 {
			r.Note = "subtasks and gaps on the server's clock, whole milliseconds (0 prints as -)"
		}
		if dispatch.Len() > 0 && strings.HasPrefix(n, "Stop all") {
			r.Extra = map[string]float64{}
			e2eExtra(r.Extra, "to_agentd", &dispatch)
			e2eExtra(r.Extra, "agentd_run", &agentdExec)
			e2eExtra(r.Extra, "result_back", &result)
			r.Note = "split by agentd's log (ms): server → agentd's \"command started\" → \"command finished\" → subtask end"
		}
		rows = append(rows, r)
	}
	gapRow := Row{Bench: "stop-e2e", Case: "part: between subtasks (queueing)", Extra: map[string]float64{},
		Note: "server clock (ms): task start → subtask 1, between subtasks, last → task end; task end → WatchTask delivery (client clock)"}
	var sum Latencies
	for _, s := range samples {
		t := s.task
		busy := time.Duration(0)
		for _, st := range t.GetSubtasks() {
			busy += st.GetEndTime().AsTime().Sub(st.GetStartTime().AsTime())
		}
		sum.Add(t.GetEndTime().AsTime().Sub(t.GetStartTime().AsTime()) - busy)
	}
	sum.Fill(&gapRow)
	e2eExtra(gapRow.Extra, "start_to_1", &gaps[0])
	for i := 1; i < len(names); i++ {
		e2eExtra(gapRow.Extra, fmt.Sprintf("%d_to_%d", i, i+1), &gaps[i])
	}
	e2eExtra(gapRow.Extra, fmt.Sprintf("%d_to_end", len(names)), &gaps[len(names)])
	e2eExtra(gapRow.Extra, "end_to_watch", &notify)
	return append(rows, gapRow)
}

func e2eExtra(m map[string]float64, name string, l *Latencies) {
	m[name+"_p50_ms"] = Ms(l.Quantile(0.5))
	m[name+"_p99_ms"] = Ms(l.Quantile(0.99))
}

// e2eProf captures CPU profiles of the processes the scenarios started with
// --pprof-addr, when AGENTPLANE_BENCH_PPROF names a directory: each profile
// is written there as <scenario>-<process>.pprof (and .block.pprof,
// .mutex.pprof, empty unless the binary enables those profiles; with
// AGENTPLANE_BENCH_TRACE set also an execution trace, .trace, for go tool
// trace, which slows the traced process). Unset, it does nothing
// (every method is safe on nil).
type e2eProf struct {
	dir   string
	addrs map[string]string // process name → pprof address
	errs  chan error
	n     int
}

func newE2EProf() *e2eProf {
	dir := os.Getenv("AGENTPLANE_BENCH_PPROF")
	if dir == "" {
		return nil
	}
	return &e2eProf{dir: dir, addrs: map[string]string{}, errs: make(chan error, 64)}
}

// args are the flags that make the named process serve pprof.
func (p *e2eProf) args(ctx context.Context, name string) []string {
	if p == nil {
		return nil
	}
	addr, err := freeAddr(ctx)
	if err != nil {
		return nil
	}
	p.addrs[name] = addr
	return []string{"--pprof-addr", addr}
}

// start begins a CPU profile of d (at least 1s) of every process, named
// scenario-process.
func (p *e2eProf) start(ctx context.Context, scenario string, d time.Duration) {
	if p == nil {
		return
	}
	secs := max(1, int((d+time.Second-1)/time.Second))
	if err := os.MkdirAll(p.dir, 0o755); err != nil {
		p.errs <- err
		p.n++
		return
	}
	for name, addr := range p.addrs {
		// The CPU profile, and the block and mutex profiles over the same
		// time (empty unless the binary sets their rates).
		kinds := []string{"profile", "block", "mutex"}
		if os.Getenv("AGENTPLANE_BENCH_TRACE") != "" {
			kinds = append(kinds, "trace") // costly: it slows what it traces
		}
		for _, kind := range kinds {
			p.n++
			go func() {
				suffix := ".pprof"
				switch kind {
				case "trace":
					suffix = ".trace"
				case "block", "mutex":
					suffix = "." + kind + ".pprof"
				}
				p.errs <- fetchTo(ctx, fmt.Sprintf("http://%s/debug/pprof/%s?seconds=%d", addr, kind, secs),
					filepath.Join(p.dir, scenario+"-"+name+suffix))
			}()
		}
	}
}

// wait waits for the profiles started so far.
func (p *e2eProf) wait() error {
	if p == nil {
		return nil
	}
	var errs []error
	for ; p.n > 0; p.n-- {
		errs = append(errs, <-p.errs)
	}
	return errors.Join(errs...)
}

// fetchTo GETs url into the file at path.
func fetchTo(ctx context.Context, url, path string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
