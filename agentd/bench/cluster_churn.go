package bench

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"

	hostv1 "agentplane/gen/agentplane/host/v1"
	taskv1 "agentplane/gen/agentplane/task/v1"
)

// The churn row kills a replica every clusterChurnEvery (r1, r2, r3 in
// turn) and starts it again clusterChurnDown later.
const (
	clusterChurnEvery = 10 * time.Second
	clusterChurnDown  = 3 * time.Second
)

// churnStats are the stops of the churn row, shared by its workers.
type churnStats struct {
	mu                   sync.Mutex
	total                Latencies
	failed, lost, errors int
	subtasks             []int64
}

// churn runs at least stops stops (on until each replica was killed once), one worker per agent (each waits
// e2eHostInterval between its host's stops), each request on the next
// replica alive in turn and watched there, while a replica is SIGKILLed
// every clusterChurnEvery. It returns the row.
func (c *clusterRun) churn(ctx context.Context, stops int) (Row, error) {
	c.env.Logf("cluster: churn: %d stops over %d agents, a replica SIGKILLed every %s and started %s later",
		stops, len(c.agents), clusterChurnEvery, clusterChurnDown)
	var down [clusterReplicas]atomic.Bool
	var next atomic.Int64
	var st churnStats
	kctx, stopKills := context.WithCancel(ctx)
	kills := make(chan error, 1)
	var nkills atomic.Int64
	go func() { kills <- c.killEvery(kctx, down[:], &nkills) }()
	began := time.Now()
	var wg sync.WaitGroup
	werrs := make([]error, len(c.agents))
	for a, h := range c.agents {
		wg.Go(func() {
			// At least stops, and on until every replica has been killed once.
			for next.Add(1) <= int64(stops) || nkills.Load() < int64(len(c.replicas)) {
				if err := c.churnStop(ctx, h, down[:], &st); err != nil {
					werrs[a] = err
					return
				}
			}
		})
	}
	wg.Wait()
	took := time.Since(began)
	stopKills()
	if err := errors.Join(append(werrs, <-kills)...); err != nil {
		return Row{}, err
	}
	var logs []string
	for _, h := range c.agents {
		logs = append(logs, h.agentd.LogPath)
	}
	starts := agentdStarts(logs)
	doubled := 0
	for _, id := range st.subtasks {
		if starts[id] > 1 {
			doubled++
		}
	}
	done := st.total.Len() + st.lost
	r := Row{Bench: "cluster", Case: fmt.Sprintf("stops, a replica killed every %s", clusterChurnEvery),
		Extra: map[string]float64{"lost": float64(st.lost), "doubled": float64(doubled), "failed": float64(st.failed),
			"stops": float64(done), "stops_per_sec": float64(done) / took.Seconds(), "kills": float64(nkills.Load()),
			"request_errors": float64(st.errors)}}
	st.total.Fill(&r)
	r.Note = fmt.Sprintf("at least %d stops, and on until each replica has been killed once; %d agentds (their streams spread over the replicas) each stopped in turn, the hosts at once; "+
		"each StopAgent on the next replica alive (r1, r2, r3 in turn) and watched there by WatchTask (again after "+
		"its replica's death, until it is back); a replica SIGKILLed every %s (in turn) and started again %s later; "+
		"figure: StopAgent → the task final seen; lost = not final within %s, doubled = a subtask's command started "+
		"twice on agentd (its log), failed = final FAILED; request_errors = StopAgent calls that failed (a replica "+
		"dying under the call, or no connection to it within 5 s) and were sent again (the figure includes them); "+
		"stops_per_sec = stops / "+
		"the whole run",
		stops, len(c.agents), clusterChurnEvery, clusterChurnDown, clusterStopTimeout)
	r.Check("0 lost, doubled, failed", st.lost+doubled+st.failed == 0 && done >= stops)
	return r, nil
}

// killEvery SIGKILLs replica k%n every clusterChurnEvery, marking it down,
// and starts it again clusterChurnDown later, until ctx ends; a replica
// down then is started before it returns.
func (c *clusterRun) killEvery(ctx context.Context, down []atomic.Bool, n *atomic.Int64) error {
	for k := 0; ; k++ {
		if sleepCtx(ctx, clusterChurnEvery) != nil {
			return nil //nolint:nilerr // the end of the churn is no error
		}
		v := k % len(c.replicas)
		down[v].Store(true)
		c.replicas[v].Kill()
		n.Add(1)
		c.env.Logf("cluster: churn: killed r%d", v+1)
		t := time.NewTimer(clusterChurnDown)
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		t.Stop()
		// Started even when ctx ended: the rows after this one need it.
		if err := c.replicas[v].Launch(context.WithoutCancel(ctx)); err != nil {
			return fmt.Errorf("starting r%d again: %w", v+1, err)
		}
		down[v].Store(false)
	}
}

// churnStop is one stop of h: the fakes started, StopAgent on the next
// replica alive (sent again, on the next one, while it fails), the task
// watched to its end there.
func (c *clusterRun) churnStop(ctx context.Context, h *e2eHost, down []atomic.Bool, st *churnStats) error {
	sup, pids, err := e2eStartFake(ctx, c.env, "fake-"+h.name, h.home)
	if err != nil {
		return err
	}
	defer func() { _ = e2eReap(sup, pids) }()
	parent := ctx
	ctx, cancel := context.WithTimeout(ctx, clusterStopTimeout)
	defer cancel()
	if wait := time.Until(h.last.Add(e2eHostInterval)); wait > 0 {
		time.Sleep(wait)
	}
	sent := time.Now()
	h.last = sent
	var id int64
	r := 0
	for try := 0; ; try++ {
		r = c.liveReplica(down, try)
		// A replica just started again may find its client in reconnect
		// backoff: wait for the connection, a while.
		cctx, cancelCall := context.WithTimeout(ctx, 5*time.Second)
		resp, err := c.hosts[r].StopAgent(cctx, &hostv1.StopAgentRequest{HostId: h.id}, grpc.WaitForReady(true))
		cancelCall()
		if err == nil {
			id = resp.GetTask().GetId()
			break
		}
		if parent.Err() != nil {
			return fmt.Errorf("StopAgent of %s: %w", h.name, err)
		}
		if ctx.Err() != nil {
			// Never accepted within the bound: a miss, not an error.
			st.mu.Lock()
			defer st.mu.Unlock()
			st.lost++
			c.env.Logf("cluster: churn: StopAgent of %s not accepted within %s: %v", h.name, clusterStopTimeout, err)
			return nil
		}
		st.mu.Lock()
		st.errors++
		st.mu.Unlock()
		c.env.Logf("cluster: churn: StopAgent of %s on r%d: %v; again", h.name, r+1, err)
		if err := sleepCtx(ctx, 200*time.Millisecond); err != nil {
			return err
		}
	}
	msgs := make(chan *taskv1.Task, 64)
	wctx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	werr := make(chan error, 1)
	go func() { werr <- c.watch(wctx, r, id, msgs) }()
	for {
		select {
		case t := <-msgs:
			s := t.GetStatus()
			if s != taskv1.TaskStatus_TASK_STATUS_SUCCESSFUL && s != taskv1.TaskStatus_TASK_STATUS_FAILED {
				continue
			}
			st.mu.Lock()
			defer st.mu.Unlock()
			st.total.Add(time.Since(sent))
			for _, sub := range t.GetSubtasks() {
				st.subtasks = append(st.subtasks, sub.GetId())
			}
			if s == taskv1.TaskStatus_TASK_STATUS_FAILED {
				st.failed++
				c.env.Logf("cluster: churn: task %d FAILED: %s", id, e2eMessages(t))
			}
			return nil
		case err := <-werr:
			if parent.Err() != nil {
				return err
			}
			// Not seen final (the watch gave up, or the bound passed): a
			// miss, not an error.
			if ctx.Err() == nil {
				err = fmt.Errorf("%w: %w", errLost, err)
			} else {
				err = errLost
			}
			st.mu.Lock()
			defer st.mu.Unlock()
			st.lost++
			c.env.Logf("cluster: churn: task %d through r%d: %v", id, r+1, err)
			return nil
		}
	}
}

// liveReplica is the next replica not down, from a shared turn moved by
// try; when all are down, any.
func (c *clusterRun) liveReplica(down []atomic.Bool, try int) int {
	base := int(c.turn.Add(1)) + try
	for i := range len(c.replicas) {
		if r := (base + i) % len(c.replicas); !down[r].Load() {
			return r
		}
	}
	return base % len(c.replicas)
}
