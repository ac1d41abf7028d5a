package fleet

import (
	"context"
	"errors"
	"fmt"
	"time"

	"agentplane/server/internal/task"
)

// maxPendingCancels bounds the cancels remembered for one host, so a host
// that keeps failing cannot grow memory; the oldest is dropped first (its
// command's own timeout still stops the agent's work). Half the session
// buffer, so Connect can queue them all with the commands it re-sends.
const maxPendingCancels = sessionBuffer / 2

// call is a dispatched command waiting for its result.
type call struct {
	hostID   int64
	cmd      Command
	ctx      context.Context // Dispatch's: once done, agentd may not begin cmd
	result   chan Result     // buffered 1; later duplicates are dropped
	canceled bool            // given up: Cancel sent or pending; never (re)send nor grant cmd; guarded by Fleet.mu
	// abandoned: Dispatch returns without reading result, so a result
	// that comes now is a late one (see fence.go); guarded by Fleet.mu,
	// as is sending to result.
	abandoned bool
	// asking: cmd is resumed and not sent yet; sessions get its Query
	// until agentd answers or asked, the wait for the answer, fires (see
	// query.go). Both guarded by Fleet.mu.
	asking bool
	asked  *time.Timer
	// replaced is closed when a newer Dispatch of the same (subtask,
	// attempt) takes c's place (see Dispatch); guarded by Fleet.mu.
	replaced chan struct{}
}

// Dispatch sends cmd to the host's agentd and waits for its result. A host
// not connected gets the command when it connects, and again whenever it
// reconnects while Dispatch waits. A resumed command (Command.Resumed) is
// sent only after agentd says it never received it, or did not answer
// within QueryWait; when agentd has its result already, that result is
// returned (see query.go).
//
// When the host has no session and was last heard from LostAfter ago (or,
// if never heard from in this process, LostAfter after Dispatch began; or,
// if expected back after a server restart, LostAfter after the restart's
// reconnections settled: see Expect), Dispatch fails with an error
// wrapping ErrAgentLost; the Cancel is kept for the host's next connection.
//
// agentd begins the command only once the fleet confirms it (a Begin,
// see fence.go), which it does only until Dispatch gives up (lost, ctx
// done): a command read late from a dead stream is never begun.
//
// When ctx ends (timeout or cancel) Dispatch sends Cancel (kept for the
// host's next connection if it has no session), waits up to CancelWait for
// the agent's result, and returns the result it got (if any) with ctx's
// cause. A ctx already done sends the Cancel only, never the command. When
// ctx ends because the server shuts down (task.ErrShutdown), another
// replica took the task over (task.ErrNotOwner), the host's stream moved to
// another replica (ErrMoved) or a newer dispatch of the same attempt
// replaced this one (ErrSuperseded), the agent is left to finish: the next
// server, the task's new owner, or the replica that holds the stream,
// resumes the wait.
func (f *Fleet) Dispatch(ctx context.Context, hostID int64, cmd Command) (Result, error) {
	k := key{cmd.SubtaskID, cmd.Attempt}
	c := &call{hostID: hostID, cmd: cmd, ctx: ctx, result: make(chan Result, 1), asking: cmd.Resumed, replaced: make(chan struct{})}
	began := time.Now()
	f.mu.Lock()
	if prev := f.inflight[k]; prev != nil {
		f.supersede(prev)
	}
	f.inflight[k] = c
	st := f.hold(hostID)
	if st.calls == nil {
		st.calls = map[key]*call{}
	}
	st.calls[k] = c
	if s := st.live(); s != nil && ctx.Err() == nil {
		f.deliver(s, c)
	}
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		if c.asked != nil {
			c.asked.Stop()
		}
		if f.inflight[k] == c {
			delete(f.inflight, k)
		}
		if st.calls[k] == c {
			delete(st.calls, k)
		}
		if len(st.calls) == 0 {
			st.calls = nil
		}
		f.unhold(st)
		f.mu.Unlock()
	}()

	var r Result
	var cause, err error
	for {
		r, cause, err = f.await(ctx, st, c, began)
		if err == nil && cause == nil {
			return r, nil
		}
		if leftToFinish(cause) {
			return Result{}, cause
		}
		if err != nil {
			cause = err
		}
		if f.giveUp(ctx, c, err != nil, cause) {
			break
		}
	}
	f.logGiveUp(ctx, k, cause)
	if err != nil {
		return Result{}, err
	}
	t := time.NewTimer(f.cfg.CancelWait)
	defer t.Stop()
	select {
	case r := <-c.result:
		f.answered(k)
		return r, cause
	case <-t.C:
		if r, ok := f.abandon(c); ok {
			f.answered(k)
			return r, cause
		}
		return Result{}, fmt.Errorf("%w; agentd did not confirm the cancel within %s", cause, f.cfg.CancelWait)
	}
}

// await waits for c's result from st's host (held by Dispatch). It returns the result; or ctx's cause when
// ctx ends first; or, as lost, an error wrapping ErrAgentLost when the host
// has no session LostAfter after it was last heard from (or after began, if
// never heard from in this process; or after the restart settled, if it is
// expected back: see Expect). It wakes on its timer, when the host's
// session ends, when any session joins and when the server begins serving;
// it never polls.
func (f *Fleet) await(ctx context.Context, st *hostState, c *call, began time.Time) (res Result, cause, lost error) {
	for {
		select {
		case r := <-c.result:
			return r, nil, nil
		default:
		}
		if ctx.Err() != nil {
			return Result{}, context.Cause(ctx), nil
		}
		f.mu.Lock()
		s := st.live()
		var joined chan struct{} // nil with a session: its end wakes this loop
		var ended, serving <-chan struct{}
		var expired <-chan time.Time
		stop := func() {}
		if s != nil {
			ended = s.Done()
		} else {
			joined = st.joinedCh()
			since, wasHeard := st.heard, !st.heard.IsZero()
			if !wasHeard {
				since = began
			}
			at, restart, ok := f.lostDeadline(st, since, f.cfg.LostAfter)
			if expired, stop = f.alarm(at, ok); ok && expired == nil {
				f.mu.Unlock()
				switch {
				case restart:
					return Result{}, nil, fmt.Errorf("%w: %s", ErrAgentLost, f.notBack())
				case wasHeard:
					return Result{}, nil, fmt.Errorf("%w: not heard from for %s", ErrAgentLost, roundDuration(time.Since(since)))
				default:
					return Result{}, nil, fmt.Errorf("%w: not connected within %s", ErrAgentLost, roundDuration(f.cfg.LostAfter))
				}
			}
			if !ok {
				serving = f.servingCh
			}
		}
		f.mu.Unlock()
		select {
		case r := <-c.result:
			stop()
			return r, nil, nil
		case <-c.replaced:
			stop()
			return Result{}, ErrSuperseded, nil
		case <-ctx.Done():
		case <-ended:
		case <-joined:
		case <-serving:
		case <-expired:
		}
		stop()
	}
}

// leftToFinish reports whether cause, why a Dispatch's ctx ended, leaves the
// agent to finish the command for whoever resumes the wait (see Dispatch):
// this server shuts down, another replica took the task over, the host's
// stream moved, or a newer dispatch replaced this one.
func leftToFinish(cause error) bool {
	return errors.Is(cause, task.ErrShutdown) || errors.Is(cause, task.ErrNotOwner) ||
		errors.Is(cause, ErrMoved) || errors.Is(cause, ErrSuperseded)
}

// supersede retires prev, a call a newer Dispatch of the same (subtask,
// attempt) replaces: its Dispatch returns ErrSuperseded, its query timer
// stops. Callers hold mu.
func (f *Fleet) supersede(prev *call) {
	close(prev.replaced)
	if prev.asked != nil {
		prev.asked.Stop()
	}
	f.cfg.Log.Info().Int64("host_id", prev.hostID).Int64("subtask_id", prev.cmd.SubtaskID).Int("attempt", prev.cmd.Attempt).
		Msg("command dispatched again while its previous dispatch waited; the newer one takes over")
}

// keepCancel remembers a cancel for the host's next session, replacing one
// for the same command and dropping the oldest beyond maxPendingCancels.
// Callers hold mu.
func (f *Fleet) keepCancel(hostID int64, c Cancel) {
	st := f.state(hostID)
	st.dropCancel(key{c.SubtaskID, c.Attempt})
	p := st.pending
	if len(p) >= maxPendingCancels {
		f.cfg.Log.Warn().Int64("host_id", hostID).Int64("subtask_id", p[0].SubtaskID).Int("attempt", p[0].Attempt).
			Msg("too many cancels pending for the host; the oldest is dropped")
		p = p[1:]
	}
	st.pending = append(p, c)
}

// forgetCancel drops the host's pending cancel of (subtask, attempt) k, if
// any. Callers hold mu.
func (f *Fleet) forgetCancel(hostID int64, k key) {
	if st := f.hosts[hostID]; st != nil {
		st.dropCancel(k)
		f.release(st)
	}
}

// dropCancel drops the pending cancel of k, if any. Callers hold mu.
func (st *hostState) dropCancel(k key) {
	for i, c := range st.pending {
		if (key{c.SubtaskID, c.Attempt}) == k {
			if st.pending = append(st.pending[:i], st.pending[i+1:]...); len(st.pending) == 0 {
				st.pending = nil
			}
			return
		}
	}
}

// Ack tells the host's agentd that the result of (subtask, attempt) is
// stored, so it may forget it. Without a session it is a no-op: the agent
// re-sends and is acknowledged then.
func (f *Fleet) Ack(hostID, subtaskID int64, attempt int) {
	f.send(hostID, Outbound{Ack: &Ack{SubtaskID: subtaskID, Attempt: attempt}})
}

func (f *Fleet) send(hostID int64, m Outbound) {
	f.mu.Lock()
	s := f.live(hostID)
	f.mu.Unlock()
	if s != nil {
		s.send(m)
	}
}
