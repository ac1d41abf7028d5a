package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	hostv1 "agentplane/gen/agentplane/host/v1"
	taskv1 "agentplane/gen/agentplane/task/v1"
)

// The failover rounds stop slow fakes (each base process exits
// clusterSlow after SIGTERM: ocp_agentd, then the other two at once, so
// about 2 × clusterSlow in all) and kill a replica clusterKillAfter after
// the request, while agentd waits for ocp_agentd's exit.
const (
	clusterSlow      = 500 * time.Millisecond
	clusterKillAfter = 300 * time.Millisecond
)

// failoverStop is one slow stop, with the replica roles: the request (and
// so the task's owner) on owner, the host's stream on stream, WatchTask on
// watch (never killed).
type failoverStop struct {
	sent, kill, firstAfter, final time.Time
	stored                        time.Time // the task's end_time, as the replica that ended it stored it
	status                        taskv1.TaskStatus
	task                          *taskv1.Task
}

// failoverKind is what a round kills; kinds alternate.
type failoverKind int

const (
	killStream failoverKind = iota // the replica holding the host's stream
	killOwner                      // the replica that took the request and owns the task
)

func (k failoverKind) String() string {
	return [...]string{"the stream's replica", "the task's owner"}[k]
}

// failoverStats are the rounds of one kind.
type failoverStats struct {
	final, first, added, stored Latencies // kill → seen final, → first change seen, over the no-kill stop, → stored end
	failed, lost, doubled       int
	subtasks                    []int64
}

// failover runs reference stops (no kill), then kills rounds, each killing
// with SIGKILL the replica holding the stream or the task's owner (in turn)
// mid-stop, and starting it again afterwards. It returns a row per kind.
func (c *clusterRun) failover(ctx context.Context, kills int) ([]Row, error) {
	refs := max(2, kills/2)
	var ref Latencies
	var stats [2]failoverStats
	c.env.Logf("cluster: failover: %d reference slow stops, then %d kills (stream's replica, owner, in turn)", refs, kills)
	for k := range refs + kills {
		h := c.agents[k%len(c.agents)]
		s, err := c.waitHolder(ctx, h, func(int) bool { return true })
		if err != nil {
			return nil, err
		}
		o := (s + 1) % len(c.replicas)
		w := (s + 2) % len(c.replicas)
		kind, victim := killStream, -1
		if k >= refs {
			kind = failoverKind((k - refs) % 2)
			victim = map[failoverKind]int{killStream: s, killOwner: o}[kind]
		}
		f, err := c.slowStop(ctx, h, o, w, victim)
		if victim < 0 {
			if err != nil {
				return nil, fmt.Errorf("reference stop %d: %w", k, err)
			}
			ref.Add(f.final.Sub(f.sent))
			continue
		}
		st := &stats[kind]
		for _, sub := range f.task.GetSubtasks() {
			st.subtasks = append(st.subtasks, sub.GetId())
		}
		switch {
		case errors.Is(err, errLost):
			st.lost++
			c.env.Logf("cluster: failover round %d: %v", k, err)
		case err != nil:
			return nil, err
		case f.status == taskv1.TaskStatus_TASK_STATUS_FAILED:
			st.failed++
			c.env.Logf("cluster: failover round %d: task %d FAILED: %s", k, f.task.GetId(), e2eMessages(f.task))
		default:
			st.final.Add(f.final.Sub(f.kill))
			if !f.firstAfter.IsZero() {
				st.first.Add(f.firstAfter.Sub(f.kill))
			}
			st.added.Add(f.final.Sub(f.sent) - ref.Quantile(0.5))
			if !f.stored.IsZero() {
				st.stored.Add(f.stored.Sub(f.kill))
			}
			c.env.Logf("cluster: failover round %d: killed r%d (%s): SUCCESSFUL stored %s after the kill, seen %s after it",
				k, victim+1, kind, f.stored.Sub(f.kill).Round(time.Millisecond), f.final.Sub(f.kill).Round(time.Millisecond))
		}
		if err := c.replicas[victim].Launch(ctx); err != nil {
			return nil, fmt.Errorf("starting r%d again: %w", victim+1, err)
		}
	}
	var logs []string
	for _, h := range c.agents {
		logs = append(logs, h.agentd.LogPath)
	}
	starts := agentdStarts(logs)
	var rows []Row
	for kind := range stats {
		st := &stats[kind]
		for _, id := range st.subtasks {
			if starts[id] > 1 {
				st.doubled++
			}
		}
		rows = append(rows, failoverRow(failoverKind(kind), st, &ref))
	}
	return rows, nil
}

// failoverRow is the report of one kind of kill.
func failoverRow(kind failoverKind, st *failoverStats, ref *Latencies) Row {
	r := Row{Bench: "cluster", Case: "failover: kill -9 of " + kind.String() + " mid-stop",
		Extra: map[string]float64{"lost": float64(st.lost), "doubled": float64(st.doubled), "failed": float64(st.failed)}}
	st.final.Fill(&r)
	e2eExtra(r.Extra, "no_kill_stop", ref)
	e2eExtra(r.Extra, "first_change_after_kill", &st.first)
	e2eExtra(r.Extra, "added_over_no_kill", &st.added)
	e2eExtra(r.Extra, "kill_to_stored_end", &st.stored)
	r.Note = fmt.Sprintf("SIGKILL of %s %s after the request (made on the owner; the stream on another replica), while agentd "+
		"stops slow fakes (%s each; the stop takes ~%s without a kill); figure: the kill → the task SUCCESSFUL seen by "+
		"WatchTask on the third replica, so it includes the stop's remaining work (kill_to_stored_end: to the task's stored "+
		"end_time); the killed replica is started again after each round; lost = not final within %s, doubled = a "+
		"subtask's command started twice on agentd",
		kind, clusterKillAfter, clusterSlow, ref.Quantile(0.5).Round(time.Millisecond), clusterStopTimeout)
	r.Check("p99 ≤ 3 s; 0 lost, doubled, failed", r.P99Ms <= 3000 && st.lost+st.doubled+st.failed == 0 && st.final.Len() > 0)
	return r
}

var errLost = errors.New("task not final in time")

// slowStop starts h's fakes in slow mode, posts the stop to replica owner,
// watches it on replica watch, and (victim ≥ 0) kills replica victim
// clusterKillAfter after the request.
func (c *clusterRun) slowStop(ctx context.Context, h *e2eHost, owner, watch, victim int) (failoverStop, error) {
	var f failoverStop
	sup, pids, err := e2eStartFake(ctx, c.env, "fake-"+h.name, h.home,
		"FAKE_OCP_MODE=slow", "FAKE_OCP_SLOW="+clusterSlow.String())
	if err != nil {
		return f, err
	}
	defer func() { _ = e2eReap(sup, pids) }()
	ctx, cancel := context.WithTimeout(ctx, clusterStopTimeout)
	defer cancel()
	if wait := time.Until(h.last.Add(e2eHostInterval)); wait > 0 {
		time.Sleep(wait)
	}
	f.sent = time.Now()
	h.last = f.sent
	resp, err := c.hosts[owner].StopAgent(ctx, &hostv1.StopAgentRequest{HostId: h.id})
	if err != nil {
		return f, fmt.Errorf("StopAgent on r%d: %w", owner+1, err)
	}
	id := resp.GetTask().GetId()
	msgs := make(chan *taskv1.Task, 64)
	werr := make(chan error, 1)
	go func() { werr <- c.watch(ctx, watch, id, msgs) }()
	var kill <-chan time.Time
	if victim >= 0 {
		t := time.NewTimer(time.Until(f.sent.Add(clusterKillAfter)))
		defer t.Stop()
		kill = t.C
	}
	for {
		select {
		case <-kill:
			kill = nil
			f.kill = time.Now()
			c.replicas[victim].Kill()
		case t := <-msgs:
			now := time.Now()
			if !f.kill.IsZero() && f.firstAfter.IsZero() {
				f.firstAfter = now
			}
			switch t.GetStatus() {
			case taskv1.TaskStatus_TASK_STATUS_SUCCESSFUL, taskv1.TaskStatus_TASK_STATUS_FAILED:
				if kill != nil { // final before the kill: no failover measured
					return f, fmt.Errorf("task %d final %s after the request, before the kill", id, now.Sub(f.sent))
				}
				f.final, f.status, f.task = now, t.GetStatus(), t
				if t.GetEndTime() != nil {
					f.stored = t.GetEndTime().AsTime()
				}
				return f, nil
			}
		case err := <-werr:
			if ctx.Err() != nil {
				return f, fmt.Errorf("task %d through r%d (watched on r%d): %w", id, owner+1, watch+1, errLost)
			}
			return f, err
		}
	}
}

// watch follows task id through WatchTask on replica r, sending each
// update to out, and watches again when the stream ends before the task is
// final (until ctx ends).
func (c *clusterRun) watch(ctx context.Context, r int, id int64, out chan<- *taskv1.Task) error {
	for {
		w, err := c.tasks[r].WatchTask(ctx, &taskv1.WatchTaskRequest{Id: id})
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if err := sleepCtx(ctx, 50*time.Millisecond); err != nil {
				return err
			}
			continue
		}
		for {
			m, err := w.Recv()
			if err != nil {
				if !errors.Is(err, io.EOF) && ctx.Err() != nil {
					return ctx.Err()
				}
				break
			}
			select {
			case out <- m.GetTask():
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		if err := sleepCtx(ctx, 50*time.Millisecond); err != nil {
			return err
		}
	}
}
