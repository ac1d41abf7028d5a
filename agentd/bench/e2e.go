package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
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
