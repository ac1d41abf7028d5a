package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"time"
)

// stopSameCross times stops end to end (StopAgent → SUCCESSFUL seen by
// WatchTask, both on the replica taking the request), alternating: the
// request on the replica holding the host's stream, then on another (each
// of the two others in turn).
func (c *clusterRun) stopSameCross(ctx context.Context, stops int) ([]Row, error) {
	const warmup = 6
	var same, cross Latencies
	c.env.Logf("cluster: %d same-replica and %d cross-replica stops, interleaved (+%d warm-up)", stops, stops, warmup)
	for i := range warmup + 2*stops {
		h := c.agents[i%len(c.agents)]
		s, err := c.waitHolder(ctx, h, func(int) bool { return true })
		if err != nil {
			return nil, err
		}
		r, l := s, &same
		if i%2 == 1 {
			r, l = (s+1+(i/2)%2)%len(c.replicas), &cross
		}
		smp, err := e2eStop(ctx, c.env, h, c.hosts[r], c.tasks[r])
		if err != nil {
			return nil, fmt.Errorf("stop %d of %s through r%d (stream on r%d): %w (agentd log tail:\n%s)",
				i, h.name, r+1, s+1, err, h.agentd.Tail(10))
		}
		if i >= warmup {
			l.Add(smp.total)
		}
	}
	sr := Row{Bench: "cluster", Case: "stop e2e, request on the stream's replica"}
	same.Fill(&sr)
	sr.Note = "StopAgent → SUCCESSFUL seen by WatchTask on the same replica, which holds the host's stream; three graceful fake processes"
	cr := Row{Bench: "cluster", Case: "stop e2e, request on another replica", Baseline: "stop e2e, request on the stream's replica"}
	cross.Fill(&cr)
	if sr.P50Ms > 0 {
		cr.Ratio = cr.P50Ms / sr.P50Ms
	}
	cr.Note = "the request and WatchTask on a replica not holding the stream: the command is routed to the stream's replica"
	cr.Check("p50 ≤ 2× the same-replica p50", cr.Ratio <= 2)
	return []Row{sr, cr}, nil
}

// agentdStarts counts, per subtask, the "command started" lines of
// agentd's JSON logs: a command the agent ran more than once.
func agentdStarts(paths []string) map[int64]int {
	out := map[int64]int{}
	for _, p := range paths {
		eachLogLine(p, func(line []byte) {
			var e struct {
				Msg     string `json:"message"`
				Subtask int64  `json:"subtask_id"`
			}
			if json.Unmarshal(line, &e) == nil && e.Subtask != 0 && e.Msg == "command started" {
				out[e.Subtask]++
			}
		})
	}
	return out
}

// clusterStopTimeout bounds one failover stop: a task not final by then is
// counted lost.
const clusterStopTimeout = 60 * time.Second
