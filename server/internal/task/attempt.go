package task

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"time"

	"github.com/rs/zerolog"
)

// This file runs attempts: it launches the attempts a step started, queues
// their outcomes on their task, and stores each task's queued outcomes in
// one step.

// running is an attempt this engine runs.
type running struct {
	taskID  int64
	attempt int
	cancel  context.CancelCauseFunc
}

// outcome is a finished attempt waiting to be stored.
type outcome struct {
	subtaskID int64
	runTime   int
	res       Result
	err       error         // nil once stored, errStale when dropped, else why it was not stored
	done      chan struct{} // closed once err is set
}

// run stops the work of t's CANCELING subtasks and launches every active
// attempt of t that this engine does not run yet; those not among started
// (the attempts the step that led to t started) are resumed (Run.Resumed). The task's lock is held,
// so an attempt whose outcome is stored meanwhile is not launched again.
// (An attempt whose outcome is stored leaves runs only afterwards: a new
// attempt of the same subtask replaces it.)
func (e *Engine) run(t *Task, started []Subtask) {
	type attempt struct {
		ctx     context.Context
		r       *running
		st      *Subtask
		resumed bool
	}
	var launch []attempt
	// The attempts the step started, by subtask: a batch's first step
	// starts thousands, and a scan of started for each was quadratic
	// (seconds of the engine's lock at 10,000 hosts).
	fresh := make(map[int64]int, len(started))
	for _, s := range started {
		fresh[s.ID] = s.RunTime
	}
	e.mu.Lock()
	if e.base.Err() != nil {
		e.mu.Unlock()
		return
	}
	for i := range t.Subtasks {
		st := &t.Subtasks[i]
		if !st.Status.active() {
			continue
		}
		r := e.runs[st.ID]
		if r == nil || r.attempt != st.RunTime {
			r = &running{taskID: t.ID, attempt: st.RunTime}
			var ctx context.Context
			ctx, r.cancel = attemptContext(e.base, st)
			e.runs[st.ID] = r
			runTime, ok := fresh[st.ID]
			resumed := !ok || runTime != st.RunTime
			launch = append(launch, attempt{ctx, r, st, resumed})
		}
		if st.Status == SubtaskCanceling {
			r.cancel(ErrCanceled)
		}
	}
	e.wg.Add(len(launch))
	e.mu.Unlock()
	for _, a := range launch {
		go e.attempt(a.ctx, a.r, *t, *a.st, a.resumed)
	}
}

// ErrCanceled is the cause of the context of an attempt an operator
// canceled.
var ErrCanceled = errors.New("canceled by an operator")

// attemptContext is the context of an attempt: ended by its deadline, an
// operator's cancel, or Close (which cancels parent).
func attemptContext(parent context.Context, st *Subtask) (context.Context, context.CancelCauseFunc) {
	base, cancelBase := context.WithCancelCause(parent)
	ctx, cancelDeadline := context.WithDeadlineCause(base, st.StartTime.Add(st.Timeout),
		fmt.Errorf("timed out after %ds", int(st.Timeout/time.Second)))
	return ctx, func(cause error) { cancelBase(cause); cancelDeadline() }
}

// attempt runs one attempt of st and stores its outcome.
func (e *Engine) attempt(ctx context.Context, r *running, t Task, st Subtask, resumed bool) {
	defer e.wg.Done()
	defer func() {
		e.mu.Lock()
		if e.runs[st.ID] == r {
			delete(e.runs, st.ID)
		}
		e.mu.Unlock()
		r.cancel(nil)
	}()
	log := e.cfg.Log.With().Int64("task_id", t.ID).Int64("subtask_id", st.ID).Int("attempt", st.RunTime).Logger()
	log.Debug().Str("subtask", st.Name).Msg("subtask attempt started")
	res := e.execute(ctx, t, st, resumed)
	if e.base.Err() != nil {
		return // shutting down: the next Start resumes this attempt
	}
	if errors.Is(context.Cause(ctx), ErrNotOwner) {
		// The task's new owner resumes this attempt and stores its outcome;
		// the agent's result is not acknowledged here (AfterCommit).
		log.Debug().Msg("subtask attempt outcome dropped: the task is owned by another replica")
		return
	}
	if cause := context.Cause(ctx); res.Err != nil && ctx.Err() != nil && !errors.Is(res.Err, cause) {
		res.Err = fmt.Errorf("%w: %w", cause, res.Err)
	}
	if res.Err != nil {
		// The log of a failed attempt ends with why, whatever the executor
		// logged (a Prepare that found no agentd, a Stop whose agentd was
		// lost while it waited); its message may be the shorter sentence.
		e.appendLog(st.ID, st.RunTime, "failed: "+res.Err.Error())
	}
	// The attempt's lines (those the executor queued, and those the fleet
	// queued on the same writer: go-ahead, progress) are stored before its
	// outcome, so a final task has every line of its attempts.
	e.linesStored(&log, st.ID)
	// The outcome is stored whatever it takes (a full disk): until then
	// the subtask stays RUNNING and its task holds its resources, and the agent's result
	// is not acknowledged (AfterCommit).
	o := &outcome{subtaskID: st.ID, runTime: st.RunTime, res: res}
	err := e.report(t.ID, o)
	if err != nil && !errors.Is(err, errStale) && !errors.Is(err, ErrNotOwner) && e.base.Err() == nil {
		log.Error().Err(err).Msg("storing subtask outcome failed; retrying")
		err = e.retry(&log, "storing subtask outcome", func() error {
			if err := e.report(t.ID, o); !errors.Is(err, errStale) && !errors.Is(err, ErrNotOwner) {
				return err
			}
			return nil // o.err says why it was dropped
		})
		if err == nil {
			err = o.err
		}
	}
	switch {
	case errors.Is(err, errStale):
		log.Warn().Msg("subtask attempt outcome dropped: the subtask moved on")
		return
	case errors.Is(err, ErrNotOwner):
		log.Debug().Msg("subtask attempt outcome dropped: the task is owned by another replica")
		return
	case err != nil:
		return // shutting down: the next Start resumes this attempt
	}
	if res.Err != nil {
		log.Warn().Str("subtask", st.Name).Str("reason", res.Err.Error()).Msg("subtask failed")
	} else {
		log.Debug().Str("subtask", st.Name).Msg("subtask succeeded")
	}
	if res.AfterCommit != nil {
		res.AfterCommit()
	}
}

// report queues an attempt's outcome on its task and waits until it is
// stored (nil), dropped (errStale) or failed to store.
func (e *Engine) report(taskID int64, o *outcome) error {
	o.done = make(chan struct{})
	if e.mem.queue(taskID, o) {
		e.wg.Add(1) // inside the attempt's own count: never from zero
		go e.drain(taskID)
	}
	<-o.done
	return o.err
}

// drain stores the outcomes queued on a task, each time all that are
// queued in one step, until none is left.
func (e *Engine) drain(id int64) {
	defer e.wg.Done()
	mu := e.locks.of(id)
	for {
		mu.Lock()
		batch := e.mem.take(id)
		if len(batch) == 0 {
			mu.Unlock()
			return
		}
		_, err := e.stepLocked(e.base, id, func(t *Task, pos map[int64]int) error {
			now := e.now()
			for _, o := range batch {
				s := find(t, pos, o.subtaskID)
				if s == nil || !s.Status.active() || s.RunTime != o.runTime {
					o.err = errStale
					continue
				}
				o.err = nil
				finish(t, s, o.res, now)
			}
			return nil
		})
		mu.Unlock()
		for _, o := range batch {
			if err != nil && o.err == nil {
				o.err = err
			}
			close(o.done)
		}
	}
}

var errStale = errors.New("stale attempt")

// ErrShutdown is the cause of the context of attempts stopped because the
// server shuts down: executors should leave remote work running, since the
// next server resumes the attempt.
var ErrShutdown = errors.New("server shutting down")

// execute calls the subtask's executor, turning a panic into a failure.
func (e *Engine) execute(ctx context.Context, t Task, st Subtask, resumed bool) (res Result) {
	x, ok := e.cfg.Executors[st.ClassName]
	if !ok {
		return Result{Err: fmt.Errorf("no executor for %s", st.ClassName)}
	}
	defer func() {
		if p := recover(); p != nil {
			e.cfg.Log.Error().Interface("panic", p).Bytes("stack", debug.Stack()).Int64("subtask_id", st.ID).
				Msg("executor panicked")
			res = Result{Err: errors.New("internal error in the executor")}
		}
	}()
	r := Run{Task: t, Subtask: st, Resumed: resumed, Log: func(line string) { e.appendLog(st.ID, st.RunTime, line) },
		queue: func(line string) { e.queueLog(st.ID, st.RunTime, line) }}
	if t.RollingBack() {
		return x.Rollback(ctx, r)
	}
	return x.Execute(ctx, r)
}

// appendLog appends a line to a subtask's log under an attempt, and returns
// once it is stored. Lines appended at the same time are stored together.
func (e *Engine) appendLog(subtaskID int64, runTime int, line string) {
	err := e.logs.AppendSubtaskLog(e.base, subtaskID, LogLine{RunTime: runTime, Time: e.cfg.Now(), Line: line})
	if err != nil && e.base.Err() == nil {
		e.logFailed(subtaskID, err)
	}
}

// queueLog is appendLog without waiting for the line to be stored (only
// for room in the writer's queue, see LogWriter.QueueSubtaskLogWait): the
// attempt's outcome waits for its lines instead (linesStored). A line not
// stored is logged.
func (e *Engine) queueLog(subtaskID int64, runTime int, line string) {
	failed := func(err error) {
		if e.base.Err() == nil {
			e.logFailed(subtaskID, err)
		}
	}
	l := LogLine{RunTime: runTime, Time: e.cfg.Now(), Line: line}
	if err := e.logs.QueueSubtaskLogWait(e.base, subtaskID, l, failed); err != nil {
		failed(err)
	}
}

func (e *Engine) logFailed(subtaskID int64, err error) {
	e.cfg.Log.Error().Err(err).Int64("subtask_id", subtaskID).Msg("appending to subtask log failed")
}

// linesStoredWait bounds how long an attempt's outcome waits for the
// attempt's lines to be stored.
const linesStoredWait = time.Minute

// linesStored waits until the subtask's lines given so far are stored (or
// failed to be), for at most linesStoredWait (then the outcome goes on,
// with a warning: its lines may be stored after it) or until Close.
func (e *Engine) linesStored(log *zerolog.Logger, subtaskID int64) {
	ctx, cancel := context.WithTimeout(e.base, linesStoredWait)
	defer cancel()
	if err := e.logs.SubtaskLogStored(ctx, subtaskID); err != nil && e.base.Err() == nil {
		log.Warn().Err(err).Msg("the attempt's log lines are not stored yet; its outcome is stored anyway")
	}
}
