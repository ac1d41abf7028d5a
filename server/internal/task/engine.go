package task

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"agentplane/server/internal/auth"
	"agentplane/server/internal/errs"
)

// Store is what the engine needs from durable storage.
type Store interface {
	// CreateTask stores a new task (taking p.Locks). With p.Idempotency
	// set and a task already stored under its scope, it returns that task
	// and existed true instead.
	CreateTask(ctx context.Context, p Plan) (t *Task, existed bool, err error)
	GetTask(ctx context.Context, id int64) (*Task, error)
	ListTasks(ctx context.Context, q ListQuery) (Page, error)
	// UpdateTask stores after over before as a compare-and-swap (ErrChanged
	// when before is not what is stored), taking the agent-operation locks
	// of the hosts in lock, and appending logs, in one transaction.
	UpdateTask(ctx context.Context, before, after *Task, lock []int64, logs ...SubtaskLogLine) error
	RunningTaskIDs(ctx context.Context) ([]int64, error)
	// AppendSubtaskLogs appends lines to their subtasks' logs, in order.
	AppendSubtaskLogs(ctx context.Context, lines []SubtaskLogLine) error
	// SubtaskLog returns up to limit lines of a subtask's log after
	// position after, oldest first, stopping early once the lines hold
	// maxBytes of text; more says lines were left. ErrNotFound when the
	// subtask is not one of task taskID's.
	SubtaskLog(ctx context.Context, taskID, subtaskID, after int64, limit, maxBytes int) (lines []LogLine, more bool, err error)
}

// ErrChanged is the store's answer to a compare-and-swap that lost: the task
// changed since it was read.
var ErrChanged = fmt.Errorf("task changed concurrently: %w", errs.ErrConflict)

// Executor does the work of one kind of subtask (by class name): Execute
// runs it forward, Rollback undoes it. Both must return soon after ctx is
// done (cancel or timeout), having stopped their work. They are called again
// with the same attempt after a server restart, so they must be idempotent
// per (subtask id, attempt).
type Executor interface {
	Execute(ctx context.Context, r Run) Result
	Rollback(ctx context.Context, r Run) Result
}

// Run is one attempt of a subtask handed to an Executor.
type Run struct {
	Task    Task    // snapshot when the attempt started
	Subtask Subtask // snapshot; Subtask.RunTime is the attempt number
	// Log appends a line to the subtask's log under this attempt.
	Log func(line string)
}

// Result is the outcome of an attempt: Err nil for success.
type Result struct {
	Message string
	Err     error
	// ProhibitRollback marks the subtask as one whose work cannot be undone.
	ProhibitRollback bool
	// AfterCommit, if set, runs once the outcome is durably stored (e.g. to
	// acknowledge the agent that reported it).
	AfterCommit func()
}

// Config configures an Engine.
type Config struct {
	Store     Store
	Executors map[string]Executor // by subtask class name
	Executor  string              // this server's address, recorded on tasks and subtasks
	Log       zerolog.Logger
	Now       func() time.Time // default time.Now
}

// Engine runs tasks: event-driven, a subtask starts as soon as its upstreams
// succeed. Every state change is a compare-and-swap in the store, so a
// restarted engine resumes where the last one stopped.
//
// The engine is the only writer of tasks. Between steps it keeps each task
// that is not final (or is watched) as it last stored it (held.stored), so
// a step reads nothing, and a watcher reads the same. Attempts that finish together are
// stored together: each queues its outcome on its task, and one goroutine
// per task applies every queued outcome in one step (one transaction, one
// notification), so a batch of thousands of subtasks costs a few dozen
// steps, not one per subtask.
type Engine struct {
	cfg   Config
	locks [64]sync.Mutex // serialises changes to one task (striped by id)

	base   context.Context // parent of every run; cancelled by Close with ErrShutdown
	cancel context.CancelCauseFunc
	wg     sync.WaitGroup

	mu       sync.Mutex
	runs     map[int64]running // running attempts, by subtask id
	watchers map[int64]map[chan struct{}]struct{}
	tasks    map[int64]*held // tasks kept between steps, or with outcomes queued

	logs *LogWriter // the attempts' log lines
}

// running is an attempt this engine runs.
type running struct {
	attempt int
	cancel  context.CancelCauseFunc
}

// held is what the engine keeps of one task (under Engine.mu).
type held struct {
	// stored is the task as this engine last stored it, or nil (read it
	// from the store). It is never modified: a step changes a copy.
	stored *Task
	pos    map[int64]int // positions of stored's subtasks
	// outcomes are finished attempts waiting to be stored; draining says a
	// goroutine stores them.
	outcomes []*outcome
	draining bool
}

// outcome is a finished attempt waiting to be stored.
type outcome struct {
	subtaskID int64
	runTime   int
	res       Result
	err       error         // nil once stored, errStale when dropped, else why it was not stored
	done      chan struct{} // closed once err is set
}

// New returns an engine; call Start to resume stored tasks.
func New(cfg Config) *Engine {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	base, cancel := context.WithCancelCause(context.Background())
	e := &Engine{
		cfg:      cfg,
		base:     base,
		cancel:   cancel,
		runs:     map[int64]running{},
		watchers: map[int64]map[chan struct{}]struct{}{},
		tasks:    map[int64]*held{},
	}
	e.logs = &LogWriter{ctx: base, store: cfg.Store}
	return e
}

// Start resumes every task that is not final: running attempts are run again
// with the same attempt number and the time they have left.
func (e *Engine) Start(ctx context.Context) error {
	ids, err := e.cfg.Store.RunningTaskIDs(ctx)
	if err != nil {
		return fmt.Errorf("resuming tasks: %w", err)
	}
	for _, id := range ids {
		e.cfg.Log.Info().Int64("task_id", id).Msg("resuming task")
		if _, err := e.step(ctx, id, nil); err != nil {
			e.settle(id, "resuming task", err)
		}
	}
	return nil
}

// Close stops every running attempt and waits for them to return, and ends
// every WatchTask with ErrUnavailable. The attempts' subtasks stay RUNNING in
// the store, to be resumed by the next Start. Close is idempotent.
func (e *Engine) Close() {
	e.cancel(ErrShutdown)
	e.wg.Wait()
	e.logs.wait()
}

// now is the time of a change, as the store keeps it (milliseconds), so a
// task kept in memory is the task the store returns.
func (e *Engine) now() time.Time { return time.UnixMilli(e.cfg.Now().UnixMilli()) }

// Submit creates the task of p and starts it. The returned task is as
// created: RUNNING, its first subtasks READY.
func (e *Engine) Submit(ctx context.Context, p Plan) (*Task, error) {
	now := e.now()
	t := &p.Task
	t.Subtasks = slices.Clone(t.Subtasks) // the caller's plan stays as it was
	t.Status, t.StartTime, t.Executor = StatusRunning, now, e.cfg.Executor
	if t.Operation == "" {
		t.Operation = OpExecute
	}
	for i := range t.Subtasks {
		st := &t.Subtasks[i]
		st.Status, st.RunTime = SubtaskPending, 1
		st.Timeout = st.Timeout.Truncate(time.Second) // as stored
		if st.Operation == "" {
			st.Operation = OpExecute
		}
		if st.NodeType == "" {
			st.NodeType = NodeTypeJavaTask
		}
	}
	// Resolve readiness on the plan itself: edges become ids only in the
	// store, so mark the subtasks with no incoming edge READY here.
	hasUp := make([]bool, len(t.Subtasks))
	for _, edge := range p.Edges {
		hasUp[edge[1]] = true
	}
	for i := range t.Subtasks {
		if !hasUp[i] {
			t.Subtasks[i].Status = SubtaskReady
		}
	}
	if key := IdempotencyKey(ctx); key != "" {
		p.Idempotency = &Idempotency{Scope: digest(t.Creator, key), Fingerprint: fingerprint(p)}
	}
	created, existed, err := e.cfg.Store.CreateTask(ctx, p)
	if err != nil {
		return nil, fmt.Errorf("creating task %q: %w", t.Name, err)
	}
	if existed {
		e.logger(ctx).Info().Int64("task_id", created.ID).Msg("idempotent repeat: returning the task created before")
		return created, nil
	}
	e.logger(ctx).Info().Int64("task_id", created.ID).Int64("host_id", created.HostID).Str("task", created.Name).
		Int("subtasks", len(created.Subtasks)).Msg("task created")
	// The task as stored is what CreateTask returned: the first step needs
	// not read it back. (A copy: the caller may keep created.)
	mu := e.lock(created.ID)
	mu.Lock()
	if e.kept(created.ID) == nil {
		kept := cloneTask(created)
		e.keep(kept, positions(kept))
	}
	mu.Unlock()
	// Start it in the background: the caller's ctx ends with its request.
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		if _, err := e.step(e.base, created.ID, nil); err != nil && e.base.Err() == nil {
			e.settle(created.ID, "starting task", err)
		}
	}()
	return created, nil
}

// settle retries, in the background, the step of task id (what it was
// doing) that failed with err (e.g. on a full disk), until it is stored or
// the engine closes (the next Start resumes the task): a task whose step
// was not stored would otherwise wait for nothing, holding its hosts.
func (e *Engine) settle(id int64, what string, err error) {
	log := e.cfg.Log.With().Int64("task_id", id).Logger()
	log.Error().Err(err).Msg(what + " failed; retrying")
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		_ = e.retry(&log, what, func() error {
			_, err := e.step(e.base, id, nil)
			return err
		})
	}()
}

// Backoff of retried writes (retry): doubling from retryMin up to retryMax.
const (
	retryMin = 100 * time.Millisecond
	retryMax = 5 * time.Second
)

// retry calls fn (what it does, for the log) until it returns nil, with a
// capped backoff (jittered) between tries, and returns nil; or returns
// ErrShutdown when the engine closes first. It logs a failure at the 2nd,
// 4th, 8th... retry (the caller logs the first failure), so a long outage
// costs a few lines, and the success.
func (e *Engine) retry(log *zerolog.Logger, what string, fn func() error) error {
	for try := 1; ; try++ {
		wait := min(retryMin<<min(try-1, 16), retryMax)
		wait -= rand.N(wait / 2)
		t := time.NewTimer(wait)
		select {
		case <-e.base.Done():
			t.Stop()
			return ErrShutdown
		case <-t.C:
		}
		err := fn()
		if err == nil {
			log.Info().Int("tries", try+1).Msg(what + " done on a retry")
			return nil
		}
		if e.base.Err() != nil {
			return ErrShutdown
		}
		if try > 1 && try&(try-1) == 0 {
			log.Error().Err(err).Int("tries", try+1).Msg(what + " failed; retrying")
		}
	}
}

// mutation changes a task in a step; pos holds the positions of its
// subtasks (see positions).
type mutation func(t *Task, pos map[int64]int) error

// step applies mutate (if any) to the task, advances it, starts its runnable
// READY subtasks, and stores the change as one compare-and-swap (retried on
// a lost race); then it tells watchers, stops the work of canceled
// subtasks, and launches the attempts it started (and any running attempt
// this engine does not run yet, after a restart). It returns the task as
// stored, which must not be modified.
func (e *Engine) step(ctx context.Context, id int64, mutate mutation) (*Task, error) {
	mu := e.lock(id)
	mu.Lock()
	defer mu.Unlock()
	return e.stepLocked(ctx, id, mutate)
}

func (e *Engine) lock(id int64) *sync.Mutex { return &e.locks[id%int64(len(e.locks))] }

// stepLocked is step, with the task's lock held.
func (e *Engine) stepLocked(ctx context.Context, id int64, mutate mutation) (*Task, error) {
	for try := 0; ; try++ {
		before, pos, err := e.load(ctx, id)
		if err != nil {
			return nil, err
		}
		after := cloneTask(before)
		if mutate != nil {
			if err := mutate(after, pos); err != nil {
				return nil, err
			}
		}
		started := startRunnable(after, pos, e.cfg.Executor, e.now())
		if !sameTask(before, after) {
			var lock []int64
			if before.Status.Final() && !after.Status.Final() {
				lock = lockHosts(after)
			}
			// Each attempt started gets its log's header in the same
			// transaction: it is there once the attempt runs.
			headers := make([]SubtaskLogLine, len(started))
			for i, st := range started {
				headers[i] = SubtaskLogLine{SubtaskID: st.ID,
					LogLine: LogLine{RunTime: st.RunTime, Time: st.StartTime, Line: logHeader(st.Operation, st.StartTime), Header: true}}
			}
			err = e.cfg.Store.UpdateTask(ctx, before, after, lock, headers...)
		}
		if err != nil {
			e.forget(id) // what is stored is no longer sure
			if errors.Is(err, ErrChanged) && try < 5 {
				continue
			}
			return nil, err
		}
		e.keep(after, pos)
		e.notify(id)
		e.run(after)
		return after, nil
	}
}

// load returns the task as this engine last stored it, else as the store
// has it, with its subtasks' positions. The task's lock is held.
func (e *Engine) load(ctx context.Context, id int64) (*Task, map[int64]int, error) {
	e.mu.Lock()
	if h := e.tasks[id]; h != nil && h.stored != nil {
		t, pos := h.stored, h.pos
		e.mu.Unlock()
		return t, pos, nil
	}
	e.mu.Unlock()
	t, err := e.cfg.Store.GetTask(ctx, id)
	if err != nil {
		return nil, nil, err
	}
	return t, positions(t), nil
}

// kept returns task id as this engine last stored it, or nil.
func (e *Engine) kept(id int64) *Task {
	e.mu.Lock()
	defer e.mu.Unlock()
	if h := e.tasks[id]; h != nil {
		return h.stored
	}
	return nil
}

// keep records t as stored: kept until it is final, or, while someone
// watches it, until the last watcher has seen it final.
func (e *Engine) keep(t *Task, pos map[int64]int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	h := e.tasks[t.ID]
	switch {
	case !t.Status.Final() || len(e.watchers[t.ID]) > 0:
		if h == nil {
			h = &held{}
			e.tasks[t.ID] = h
		}
		h.stored, h.pos = t, pos
	case h != nil:
		h.stored, h.pos = nil, nil
		e.tidy(t.ID, h)
	}
}

// forget drops what the engine keeps of task id: the next step reads it.
func (e *Engine) forget(id int64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if h := e.tasks[id]; h != nil {
		h.stored, h.pos = nil, nil
		e.tidy(id, h)
	}
}

// tidy removes h, task id's entry, once it holds nothing. e.mu is held.
func (e *Engine) tidy(id int64, h *held) {
	if h.stored == nil && len(h.outcomes) == 0 && !h.draining {
		delete(e.tasks, id)
	}
}

// run stops the work of t's CANCELING subtasks and launches every active
// attempt of t that this engine does not run yet. The task's lock is held,
// so an attempt whose outcome is stored meanwhile is not launched again.
// (An attempt whose outcome is stored leaves runs only afterwards: a new
// attempt of the same subtask replaces it.)
func (e *Engine) run(t *Task) {
	type attempt struct {
		ctx    context.Context
		cancel context.CancelCauseFunc
		st     *Subtask
	}
	var launch []attempt
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
		r, ok := e.runs[st.ID]
		if !ok || r.attempt != st.RunTime {
			var ctx context.Context
			ctx, r.cancel = e.attemptContext(st)
			r.attempt = st.RunTime
			e.runs[st.ID] = r
			launch = append(launch, attempt{ctx, r.cancel, st})
		}
		if st.Status == SubtaskCanceling {
			r.cancel(ErrCanceled)
		}
	}
	e.wg.Add(len(launch))
	e.mu.Unlock()
	for _, a := range launch {
		go e.attempt(a.ctx, a.cancel, *t, *a.st)
	}
}

// ErrCanceled is the cause of the context of an attempt an operator
// canceled.
var ErrCanceled = errors.New("canceled by an operator")

// attemptContext is the context of an attempt: ended by its deadline, an
// operator's cancel, or Close.
func (e *Engine) attemptContext(st *Subtask) (context.Context, context.CancelCauseFunc) {
	base, cancelBase := context.WithCancelCause(e.base)
	ctx, cancelDeadline := context.WithDeadlineCause(base, st.StartTime.Add(st.Timeout),
		fmt.Errorf("timed out after %ds", int(st.Timeout/time.Second)))
	return ctx, func(cause error) { cancelBase(cause); cancelDeadline() }
}

// attempt runs one attempt of st and stores its outcome.
func (e *Engine) attempt(ctx context.Context, cancel context.CancelCauseFunc, t Task, st Subtask) {
	defer e.wg.Done()
	defer func() {
		e.mu.Lock()
		if e.runs[st.ID].attempt == st.RunTime {
			delete(e.runs, st.ID)
		}
		e.mu.Unlock()
		cancel(nil)
	}()
	log := e.cfg.Log.With().Int64("task_id", t.ID).Int64("subtask_id", st.ID).Int("attempt", st.RunTime).Logger()
	log.Debug().Str("subtask", st.Name).Msg("subtask attempt started")
	res := e.execute(ctx, t, st)
	if e.base.Err() != nil {
		return // shutting down: the next Start resumes this attempt
	}
	if cause := context.Cause(ctx); res.Err != nil && ctx.Err() != nil && !errors.Is(res.Err, cause) {
		res.Err = fmt.Errorf("%w: %w", cause, res.Err)
	}
	// The outcome is stored whatever it takes (a full disk): until then
	// the subtask stays RUNNING and holds its hosts, and the agent's result
	// is not acknowledged (AfterCommit).
	o := &outcome{subtaskID: st.ID, runTime: st.RunTime, res: res}
	err := e.report(t.ID, o)
	if err != nil && !errors.Is(err, errStale) && e.base.Err() == nil {
		log.Error().Err(err).Msg("storing subtask outcome failed; retrying")
		err = e.retry(&log, "storing subtask outcome", func() error {
			if err := e.report(t.ID, o); !errors.Is(err, errStale) {
				return err
			}
			return nil // o.err says errStale
		})
		if err == nil {
			err = o.err
		}
	}
	switch {
	case errors.Is(err, errStale):
		log.Warn().Msg("subtask attempt outcome dropped: the subtask moved on")
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
	e.mu.Lock()
	h := e.tasks[taskID]
	if h == nil {
		h = &held{}
		e.tasks[taskID] = h
	}
	h.outcomes = append(h.outcomes, o)
	drain := !h.draining
	h.draining = true
	if drain {
		e.wg.Add(1) // inside the attempt's own count: never from zero
	}
	e.mu.Unlock()
	if drain {
		go e.drain(taskID)
	}
	<-o.done
	return o.err
}

// drain stores the outcomes queued on a task, each time all that are
// queued in one step, until none is left.
func (e *Engine) drain(id int64) {
	defer e.wg.Done()
	mu := e.lock(id)
	for {
		mu.Lock()
		e.mu.Lock()
		h := e.tasks[id]
		batch := h.outcomes
		h.outcomes = nil
		if len(batch) == 0 {
			h.draining = false
			e.tidy(id, h)
			e.mu.Unlock()
			mu.Unlock()
			return
		}
		e.mu.Unlock()
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
func (e *Engine) execute(ctx context.Context, t Task, st Subtask) (res Result) {
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
	r := Run{Task: t, Subtask: st, Log: func(line string) { e.appendLog(st.ID, st.RunTime, line) }}
	if t.RollingBack() {
		return x.Rollback(ctx, r)
	}
	return x.Execute(ctx, r)
}

// logger is the request's logger (with its trace id) when ctx has one, else
// the engine's.
func (e *Engine) logger(ctx context.Context) *zerolog.Logger {
	if l := zerolog.Ctx(ctx); l.GetLevel() != zerolog.Disabled {
		return l
	}
	return &e.cfg.Log
}

// appendLog appends a line to a subtask's log under an attempt, and returns
// once it is stored. Lines appended at the same time are stored together.
func (e *Engine) appendLog(subtaskID int64, runTime int, line string) {
	err := e.logs.AppendSubtaskLog(e.base, subtaskID, LogLine{RunTime: runTime, Time: e.cfg.Now(), Line: line})
	if err != nil && e.base.Err() == nil {
		e.cfg.Log.Error().Err(err).Int64("subtask_id", subtaskID).Msg("appending to subtask log failed")
	}
}

// writeLogs stores lines at once.
func (e *Engine) writeLogs(lines []SubtaskLogLine) {
	err := e.cfg.Store.AppendSubtaskLogs(e.base, lines)
	if err != nil && e.base.Err() == nil {
		e.cfg.Log.Error().Err(err).Int64("subtask_id", lines[0].SubtaskID).Int("lines", len(lines)).
			Msg("appending to subtask logs failed")
	}
}

// LogStore is where a LogWriter stores lines.
type LogStore interface {
	AppendSubtaskLogs(ctx context.Context, lines []SubtaskLogLine) error
}

// LogWriter appends lines to subtask logs in few transactions, for callers
// that append one line at a time from many goroutines (attempts, agent
// streams): a line waits while the lines before it are stored, then is
// stored with every line that arrived meanwhile (a group commit). A lone
// line is stored at once. It is safe for concurrent use.
type LogWriter struct {
	ctx   context.Context // of the writes
	store LogStore

	mu      sync.Mutex
	next    *logBatch     // lines waiting for the writer
	writing chan struct{} // while the writer goroutine runs; closed when it ends
}

type logBatch struct {
	lines []SubtaskLogLine
	err   error
	done  chan struct{} // closed once lines are stored, or err says why not
}

// NewLogWriter returns a LogWriter that stores lines in s.
func NewLogWriter(s LogStore) *LogWriter { return &LogWriter{ctx: context.Background(), store: s} }

// AppendSubtaskLog appends a line to a subtask's log, and returns once it is
// stored (or ctx is done: the line may still be stored).
func (w *LogWriter) AppendSubtaskLog(ctx context.Context, subtaskID int64, l LogLine) error {
	w.mu.Lock()
	b := w.next
	if b == nil {
		b = &logBatch{done: make(chan struct{})}
		w.next = b
	}
	b.lines = append(b.lines, SubtaskLogLine{SubtaskID: subtaskID, LogLine: l})
	if w.writing == nil {
		w.writing = make(chan struct{})
		go w.write(w.writing)
	}
	w.mu.Unlock()
	select {
	case <-b.done:
		return b.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (w *LogWriter) write(writing chan struct{}) {
	for {
		w.mu.Lock()
		b := w.next
		w.next = nil
		if b == nil {
			w.writing = nil
			w.mu.Unlock()
			close(writing)
			return
		}
		w.mu.Unlock()
		b.err = w.store.AppendSubtaskLogs(w.ctx, b.lines)
		close(b.done)
	}
}

// wait returns once no line is being written.
func (w *LogWriter) wait() {
	w.mu.Lock()
	writing := w.writing
	w.mu.Unlock()
	if writing != nil {
		<-writing
	}
}

// GetTask returns a task. Needs TASK_VIEWER.
func (e *Engine) GetTask(ctx context.Context, id int64) (*Task, error) {
	if err := auth.Require(ctx, auth.RoleTaskViewer); err != nil {
		return nil, err
	}
	if id <= 0 {
		return nil, fmt.Errorf("task id %d: must be positive: %w", id, errs.ErrInvalidArgument)
	}
	return e.cfg.Store.GetTask(ctx, id)
}

// ListTasks returns a page of tasks, newest first unless q.Sort says
// otherwise. Needs TASK_VIEWER.
func (e *Engine) ListTasks(ctx context.Context, q ListQuery) (Page, error) {
	if err := auth.Require(ctx, auth.RoleTaskViewer); err != nil {
		return Page{}, err
	}
	if q.Page < 0 || q.Size < 0 || q.Size > 2000 {
		return Page{}, fmt.Errorf("page %d size %d: page must be ≥ 1 and size 1..2000: %w", q.Page, q.Size, errs.ErrInvalidArgument)
	}
	if q.Sort.Field != "" && !slices.Contains(sortFields, q.Sort.Field) {
		return Page{}, fmt.Errorf("sort field %q: must be one of %s: %w", q.Sort.Field, strings.Join(sortFields, ", "), errs.ErrInvalidArgument)
	}
	if len(q.Name) > 128 {
		return Page{}, fmt.Errorf("name filter longer than 128 characters: %w", errs.ErrInvalidArgument)
	}
	return e.cfg.Store.ListTasks(ctx, q)
}

// WatchTask calls send with the task now and after every change, and returns
// nil once it has sent the task in a final status. It returns early with
// send's error or ctx's. send must not modify the task. Changes that follow
// each other faster than a refresh (reading, comparing and sending the
// task) costs are sent together: a watcher of a big task that changes
// thousands of times spends at most about half its time refreshing. Needs
// TASK_VIEWER.
func (e *Engine) WatchTask(ctx context.Context, id int64, send func(*Task) error) error {
	if err := auth.Require(ctx, auth.RoleTaskViewer); err != nil {
		return err
	}
	if id <= 0 {
		return fmt.Errorf("task id %d: must be positive: %w", id, errs.ErrInvalidArgument)
	}
	ch := make(chan struct{}, 1)
	e.mu.Lock()
	if e.watchers[id] == nil {
		e.watchers[id] = map[chan struct{}]struct{}{}
	}
	e.watchers[id][ch] = struct{}{}
	e.mu.Unlock()
	defer func() {
		e.mu.Lock()
		delete(e.watchers[id], ch)
		if len(e.watchers[id]) == 0 {
			delete(e.watchers, id)
			if h := e.tasks[id]; h != nil && h.stored != nil && h.stored.Status.Final() {
				h.stored, h.pos = nil, nil // kept only for its watchers (see keep)
				e.tidy(id, h)
			}
		}
		e.mu.Unlock()
	}()
	var last *Task
	for {
		began := time.Now()
		t, err := e.current(ctx, id)
		if err != nil {
			return err
		}
		if last == nil || t != last && !sameTask(last, t) {
			if err := send(t); err != nil {
				return err
			}
			last = t
		}
		if t.Status.Final() {
			return nil
		}
		ended := time.Now()
		cost := ended.Sub(began)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-e.base.Done():
			return fmt.Errorf("watching task %d: server shutting down: %w", id, errs.ErrUnavailable)
		case <-ch:
		}
		if wait := cost - time.Since(ended); wait > 0 {
			timer := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				timer.Stop()
				return ctx.Err()
			case <-e.base.Done():
				timer.Stop()
				return fmt.Errorf("watching task %d: server shutting down: %w", id, errs.ErrUnavailable)
			case <-timer.C:
			}
		}
	}
}

// current returns the task as this engine last stored it, else as the store
// has it. It must not be modified.
func (e *Engine) current(ctx context.Context, id int64) (*Task, error) {
	if t := e.kept(id); t != nil {
		return t, nil
	}
	return e.cfg.Store.GetTask(ctx, id)
}

// notify wakes the watchers of task id; a pending wake-up is enough.
func (e *Engine) notify(id int64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for ch := range e.watchers[id] {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// sameTask reports whether a and b, versions of the same task, agree on
// everything a step changes.
func sameTask(a, b *Task) bool {
	if a.Status != b.Status || a.Operation != b.Operation || !a.EndTime.Equal(b.EndTime) ||
		len(a.Subtasks) != len(b.Subtasks) {
		return false
	}
	for i := range a.Subtasks {
		x, y := &a.Subtasks[i], &b.Subtasks[i]
		if x.ID != y.ID || x.Status != y.Status || x.Operation != y.Operation || x.RunTime != y.RunTime ||
			x.Executor != y.Executor || !x.StartTime.Equal(y.StartTime) || !x.EndTime.Equal(y.EndTime) ||
			x.Message != y.Message || x.ProhibitRollback != y.ProhibitRollback {
			return false
		}
	}
	return true
}

func cloneTask(t *Task) *Task {
	c := *t
	c.Subtasks = make([]Subtask, len(t.Subtasks))
	copy(c.Subtasks, t.Subtasks)
	return &c
}
