package conn

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/rs/zerolog"

	"agentplane/agentd/internal/proc"
	"agentplane/agentd/internal/state"
	agentv1 "agentplane/gen/agentplane/agent/v1"
)

// handleCommand starts cmd unless it ran before; a repeated command is
// answered with its stored result. A command of an older stream than the
// newest seen is refused (see fenced). A command begun here asks the server
// for the go-ahead on s, the stream it came on, before it touches the host
// (see goAhead).
func (c *Client) handleCommand(s *session, cmd *agentv1.Command) {
	k, log, ok := c.admit(s, "command", cmd.GetSubtaskId(), cmd.GetAttempt(), cmd.GetEpoch())
	if !ok {
		return
	}

	c.mu.Lock()
	if c.closing {
		c.mu.Unlock()
		log.Info().Msg("ignoring command during shutdown")
		return
	}
	if e, ok := c.running[k]; ok {
		c.mu.Unlock()
		select {
		case e.again <- s:
		default:
		}
		log.Debug().Msg("command already running")
		return
	}
	ran, err := c.cfg.State.Begin(k.subtask, k.attempt)
	if err != nil {
		c.mu.Unlock()
		log.Error().Err(err).Msg("cannot journal command; not running it")
		s.send(resultMsg(state.Result{SubtaskID: k.subtask, Attempt: k.attempt, Outcome: state.OutcomeFailed,
			Message: "agentd cannot journal the command: " + err.Error(), FinishTime: time.Now()}), false)
		return
	}
	if ran {
		c.mu.Unlock()
		r, err := c.storedResult(k)
		if err != nil {
			log.Error().Err(err).Msg("cannot read stored result")
			return
		}
		log.Info().Str("outcome", string(r.Outcome)).Msg("command ran before; re-sending its result")
		s.send(resultMsg(r), false)
		return
	}

	timeout := cmd.GetTimeout().AsDuration()
	if cmd.GetTimeout() == nil || timeout <= 0 {
		timeout = DefaultCommandTimeout
	}
	var work func(context.Context) (state.Result, report)
	switch a := cmd.GetAction().(type) {
	case *agentv1.Command_StopAgent:
		grace := a.StopAgent.GetGrace().AsDuration()
		if a.StopAgent.GetGrace() == nil || grace <= 0 {
			grace = c.cfg.Grace
		}
		work = func(ctx context.Context) (state.Result, report) { return c.stop(ctx, log, k, grace, timeout) }
	case *agentv1.Command_StartAgent:
		work = func(ctx context.Context) (state.Result, report) { return c.start(ctx, log, k, timeout) }
	}
	// The command runs under Run's ctx, not the connection's.
	base, cancel := context.WithCancelCause(c.root)
	rctx, cancelTimeout := context.WithTimeoutCause(base, timeout, timeoutError{timeout})
	e := &execution{cancel: cancel, again: make(chan *session, 1)}
	c.running[k] = e
	c.cmds.Add(1)
	c.mu.Unlock()

	go func() {
		defer c.cmds.Done()
		defer cancel(nil)
		defer cancelTimeout()
		log.Info().Str("action", actionName(cmd)).Dur("timeout", timeout).Msg("command started")
		var r state.Result
		var seen report
		switch {
		case work == nil:
			log.Warn().Msg("command without a known action")
			r = state.Result{Outcome: state.OutcomeFailed, Message: "unsupported command action"}
		default:
			if err := c.goAhead(rctx, log, s, k, timeout, e.again); err != nil {
				r = notBegun(rctx, err)
				log.Warn().Err(err).Msg("command ended without the server's go-ahead; nothing was signalled")
				break
			}
			e.begun.Store(true)
			r, seen = work(rctx)
		}
		r.SubtaskID, r.Attempt, r.FinishTime = k.subtask, k.attempt, time.Now()
		// Save before leaving the running set, so a repeated command always
		// finds either a running command or a stored result.
		if err := c.cfg.State.SaveResult(r); err != nil {
			log.Error().Err(err).Msg("cannot save command result")
		}
		c.mu.Lock()
		delete(c.running, k)
		c.mu.Unlock()
		log.Info().Str("outcome", string(r.Outcome)).Str("detail", r.Message).Msg("command finished")
		c.sendResult(r, seen)
	}()
}

// storedResult returns the journal's result of a begun command that is not
// running in this process. Without one (it was begun but never finished), it
// stores and returns the not-re-run failure.
func (c *Client) storedResult(k cmdKey) (state.Result, error) {
	r, ok, err := c.cfg.State.Lookup(k.subtask, k.attempt)
	if err != nil || ok {
		return r, err
	}
	r = state.Result{SubtaskID: k.subtask, Attempt: k.attempt, Outcome: state.OutcomeFailed,
		Message: state.RestartedMessage, FinishTime: time.Now()}
	return r, c.cfg.State.SaveResult(r)
}

// stop runs a StopAgent command and maps its end to a result. It records
// the running processes first, so that they can be started again, and
// returns the processes its last scan found, for the report before the
// result. With an ObservingRunner one scan serves both the recording and
// the stop, and the stop's verifying scan serves the report; another Runner
// is scanned before (to record) and after (by sendResult) its StopAll.
func (c *Client) stop(ctx context.Context, log zerolog.Logger, k cmdKey, grace, timeout time.Duration) (state.Result, report) {
	log.Info().Dur("grace", grace).Dur("timeout", timeout).Msg("stopping ocp agent processes")
	stopped := map[int32]bool{}
	progress := c.progress(log, k)
	emit := func(ev proc.Event) {
		if ev.Kind == proc.EventExited {
			stopped[ev.Target.PID] = true
		}
		progress(ev)
	}
	var seen report
	var err error
	if obs, ok := c.cfg.Runner.(ObservingRunner); ok {
		var left []proc.Target
		left, err = obs.StopAllObserved(ctx, grace, emit, func(found []proc.Target) { c.rec.observe(ctx, found) })
		if err == nil || errors.Is(err, proc.ErrStillRunning) {
			seen = report{procs: left, fresh: true}
		}
	} else {
		c.obsMu.Lock()
		c.scan(ctx)
		c.obsMu.Unlock()
		err = c.cfg.Runner.StopAll(ctx, grace, emit)
	}
	switch {
	case err == nil:
		if len(stopped) == 0 {
			if c.cfg.InstallHome != "" && proc.InstallHomeMissing(c.cfg.InstallHome) {
				return state.Result{Outcome: state.OutcomeSucceeded, Message: fmt.Sprintf(
					"no OCP Agent is installed at %s (agentd's --install-home): nothing to stop", c.cfg.InstallHome)}, seen
			}
			return state.Result{Outcome: state.OutcomeSucceeded, Message: "no OCP Agent base process was running"}, seen
		}
		return state.Result{Outcome: state.OutcomeSucceeded, Message: fmt.Sprintf("stopped %d OCP Agent base processes", len(stopped))}, seen
	case ctx.Err() != nil:
		return state.Result{Outcome: state.OutcomeCanceled, Message: "canceled: " + cancelReason(context.Cause(ctx))}, seen
	default:
		return state.Result{Outcome: state.OutcomeFailed, Message: err.Error()}, seen
	}
}

// start runs a StartAgent command with the recorded start specs and maps its
// end to a result. It records the running processes first. The processes it
// started are scanned (and recorded) by sendResult.
func (c *Client) start(ctx context.Context, log zerolog.Logger, k cmdKey, timeout time.Duration) (state.Result, report) {
	c.obsMu.Lock()
	c.scan(ctx)
	c.obsMu.Unlock()
	specs := c.rec.specs()
	log.Info().Int("recorded", len(specs)).Dur("timeout", timeout).Msg("starting ocp agent processes")
	n, err := c.cfg.Runner.StartAll(ctx, specs, c.progress(log, k))
	switch {
	case err == nil:
		if n == 0 {
			return state.Result{Outcome: state.OutcomeSucceeded, Message: "OCP Agent already running"}, report{}
		}
		return state.Result{Outcome: state.OutcomeSucceeded, Message: fmt.Sprintf("started %d OCP Agent base processes", n)}, report{}
	case ctx.Err() != nil:
		return state.Result{Outcome: state.OutcomeCanceled, Message: "canceled: " + cancelReason(context.Cause(ctx))}, report{}
	default:
		return state.Result{Outcome: state.OutcomeFailed, Message: err.Error()}, report{}
	}
}

// progress returns an emit func that logs each event and sends it as the
// command's progress.
func (c *Client) progress(log zerolog.Logger, k cmdKey) func(proc.Event) {
	return func(ev proc.Event) {
		log.Info().Int32("pid", ev.Target.PID).Str("process", ev.Target.Name).
			Str("event", kindName(ev.Kind)).Str("detail", ev.Message).Msg("command progress")
		c.send(progressMsg(k, ev), true)
	}
}

// handleCancel stops a running command. A cancel for a command that never
// started fences it (it will never run) and answers CANCELED; one for a
// finished command re-sends its result. A cancel of an older stream than
// the newest seen is refused (see fenced).
func (c *Client) handleCancel(s *session, m *agentv1.CancelCommand) {
	k, log, ok := c.admit(s, "cancel", m.GetSubtaskId(), m.GetAttempt(), m.GetEpoch())
	if !ok {
		return
	}
	c.mu.Lock()
	if e, ok := c.running[k]; ok {
		c.mu.Unlock()
		log.Info().Str("reason", m.GetReason()).Msg("canceling command")
		e.cancel(canceledError{m.GetReason()})
		return
	}
	ran, err := c.cfg.State.Begin(k.subtask, k.attempt)
	c.mu.Unlock()
	if err != nil {
		log.Error().Err(err).Msg("cannot journal canceled command")
		return
	}
	var r state.Result
	if ran {
		if r, err = c.storedResult(k); err != nil {
			log.Error().Err(err).Msg("cannot read stored result")
			return
		}
	} else {
		r = state.Result{SubtaskID: k.subtask, Attempt: k.attempt, Outcome: state.OutcomeCanceled,
			Message: "canceled before it started, nothing was signalled: " + cancelReason(canceledError{m.GetReason()}), FinishTime: time.Now()}
		if err := c.cfg.State.SaveResult(r); err != nil {
			log.Error().Err(err).Msg("cannot save command result")
		}
	}
	log.Info().Str("outcome", string(r.Outcome)).Msg("cancel for a command not running; sending its result")
	s.send(resultMsg(r), false)
}

func (c *Client) handleAck(s *session, m *agentv1.ResultAck) {
	if err := c.cfg.State.Ack(m.GetSubtaskId(), m.GetAttempt()); err != nil {
		s.log.Error().Err(err).Int64("subtask_id", m.GetSubtaskId()).Msg("cannot forget acknowledged result")
		return
	}
	s.log.Debug().Int64("subtask_id", m.GetSubtaskId()).Int32("attempt", m.GetAttempt()).Msg("result acknowledged")
}

// timeoutError is the cause of a command's timeout.
type timeoutError struct{ d time.Duration }

func (e timeoutError) Error() string { return "timed out after " + fmtDuration(e.d) }

// canceledError is the cause of a CancelCommand.
type canceledError struct{ reason string }

func (e canceledError) Error() string {
	if e.reason == "" {
		return "canceled by the server"
	}
	return e.reason
}

func cancelReason(cause error) string {
	var te timeoutError
	var ce canceledError
	switch {
	case errors.As(cause, &te):
		return te.Error()
	case errors.As(cause, &ce):
		return ce.Error()
	default:
		return "agentd is shutting down"
	}
}

// fmtDuration prints whole seconds as "600s", anything else as time.Duration does.
func fmtDuration(d time.Duration) string {
	if d%time.Second == 0 {
		return fmt.Sprintf("%ds", d/time.Second)
	}
	return d.String()
}

// actionName names a command's action for the log.
func actionName(cmd *agentv1.Command) string {
	switch cmd.GetAction().(type) {
	case *agentv1.Command_StopAgent:
		return "stop"
	case *agentv1.Command_StartAgent:
		return "start"
	default:
		return "unknown"
	}
}
