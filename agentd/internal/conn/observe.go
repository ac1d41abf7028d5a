package conn

import (
	"context"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"agentplane/agentd/internal/proc"
	"agentplane/agentd/internal/state"
	agentv1 "agentplane/gen/agentplane/agent/v1"
)

// This file decides when agentd looks at the base processes and what it
// tells the server about them: Hello, heartbeats, and the report sent just
// before each command's result.
//
// A full scan lists /proc and reads every process's comm: about 0.6 ms at
// 100 processes and 10 ms at 2,000. Scans run for Hello, in each command
// (a stop's own scans serve agentd too, see ObservingRunner), and in
// heartbeats only every Config.ScanEvery (default 1m).
// Between those, a heartbeat re-checks the processes the last scan found,
// by pid, create time and executable (a read of /proc/<pid>/stat and exe
// each, tens of microseconds for the three), and runs a full scan at once
// when one of them is gone or its pid was reused. So:
//
//   - a base process that dies, or is replaced, shows in the next
//     heartbeat, as before;
//   - a base process started by something other than agentd while every
//     known one keeps running (typically: the OCP Agent started by hand
//     after agentplane stopped it, when none was known) shows at the next
//     full scan, within ScanEvery, instead of at the next heartbeat.
//
// That delay buys an idle agentd that costs about 0.04% of a core instead of
// 0.16% on a host with 2,000 processes (agentd bench, 60 s idle, heartbeat
// 10 s: one full scan a minute instead of six). A command always scans, so
// the server's view is exact when a subtask ends.

// ObservingRunner is a Runner whose stop shares its scans with the caller
// (*proc.Stopper): observe gets what the stop's first scan found, before any
// signal, and the processes its last scan found are returned (see
// proc.Stopper.StopAllObserved). With it a stop needs no scan of agentd's
// own: its first scan records the start specs, its verifying scan is the
// report before the result. A Runner without it is scanned before and after
// StopAll.
type ObservingRunner interface {
	StopAllObserved(ctx context.Context, grace time.Duration, emit func(proc.Event),
		observe func([]proc.Target)) ([]proc.Target, error)
}

// CheckingRunner is a Runner that can tell, without a full scan, whether the
// processes of an earlier Scan all still run (*proc.Stopper; see
// proc.Stopper.Running). Heartbeats between full scans use it. With a Runner
// without it, every heartbeat scans.
type CheckingRunner interface {
	Running(ctx context.Context, ts []proc.Target) (bool, error)
}

// report is what a command saw of the base processes as it ended.
type report struct {
	procs []proc.Target
	fresh bool // procs is the command's last full scan; else sendResult scans
}

// scan lists the base processes with a full scan, records how they were
// started and keeps them as the last seen. It returns nil when the scan
// fails. c.obsMu must be held.
func (c *Client) scan(ctx context.Context) []proc.Target {
	ts, err := c.cfg.Runner.Scan(ctx)
	if err != nil {
		c.seenOK = false // the next heartbeat scans again
		c.log.Warn().Err(err).Msg("cannot scan processes")
		return nil
	}
	c.observed(ctx, ts)
	return ts
}

// observed records ts, the result of a full scan, as the last seen and
// records how its processes were started. c.obsMu must be held.
func (c *Client) observed(ctx context.Context, ts []proc.Target) {
	c.rec.observe(ctx, ts)
	c.seen, c.seenOK, c.lastScan = ts, true, time.Now()
}

// helloProcesses scans for a Hello.
func (c *Client) helloProcesses(ctx context.Context) []proc.Target {
	c.obsMu.Lock()
	defer c.obsMu.Unlock()
	return c.scan(ctx)
}

// heartbeatProcesses returns the base processes for a heartbeat: the last
// seen when the last full scan is younger than ScanEvery and the Runner
// confirms, cheaply, that each of them still runs as the same process;
// otherwise (one is gone or was replaced, the check failed, the Runner
// cannot check, or ScanEvery has passed) a full scan. c.obsMu must be held.
//
// The re-check cannot see a base process that started since the last full
// scan while the known ones kept running; such a process shows at the next
// full scan, within ScanEvery. See the top of this file.
func (c *Client) heartbeatProcesses(ctx context.Context) []proc.Target {
	if ck, ok := c.cfg.Runner.(CheckingRunner); ok && c.seenOK && time.Since(c.lastScan) < c.cfg.ScanEvery {
		running, err := ck.Running(ctx, c.seen)
		if err == nil && running {
			return c.seen
		}
		if err != nil {
			c.log.Debug().Err(err).Msg("cannot re-check the base processes; scanning")
		}
	}
	return c.scan(ctx)
}

// sendHeartbeat sends a heartbeat on s.
func (c *Client) sendHeartbeat(ctx context.Context, s *session) {
	c.obsMu.Lock()
	defer c.obsMu.Unlock()
	s.send(heartbeatMsg(c.heartbeatProcesses(ctx)), false)
}

// sendResult sends the processes as they are now, then r, so that the
// server's view of the host is fresh when the subtask ends. The processes
// are those of the command's last scan when it has one (seen.fresh), else a
// full scan. Holding c.obsMu across both sends keeps a heartbeat observed
// earlier from arriving after them.
func (c *Client) sendResult(r state.Result, seen report) {
	c.obsMu.Lock()
	defer c.obsMu.Unlock()
	ts := seen.procs
	if seen.fresh {
		c.observed(c.root, ts)
	} else {
		ts = c.scan(c.root)
	}
	c.send(heartbeatMsg(ts), false)
	c.send(resultMsg(r), false)
}

// heartbeatMsg is a Heartbeat reporting ts as the base processes running now.
func heartbeatMsg(ts []proc.Target) *agentv1.ConnectRequest {
	return &agentv1.ConnectRequest{Kind: &agentv1.ConnectRequest_Heartbeat{Heartbeat: &agentv1.Heartbeat{
		SentAt:    timestamppb.Now(),
		Processes: processMsgs(ts),
	}}}
}
