package task

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"agentplane/server/auth"
	"agentplane/server/errs"
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
	// of the hosts in lock.
	UpdateTask(ctx context.Context, before, after *Task, lock []int64) error
	RunningTaskIDs(ctx context.Context) ([]int64, error)
	AppendSubtaskLog(ctx context.Context, subtaskID int64, l LogLine) error
	SubtaskLog(ctx context.Context, subtaskID int64) ([]LogLine, error)
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
type Engine struct {
	cfg   Config
	locks [64]sync.Mutex // serialises changes to one task (striped by id)

	base   context.Context // parent of every run; cancelled by Close with ErrShutdown
	cancel context.CancelCauseFunc
	wg     sync.WaitGroup

	mu       sync.Mutex
	runs     map[int64]context.CancelCauseFunc // running attempts, by subtask id
	watchers map[int64]map[chan struct{}]struct{}
}

// New returns an engine; call Start to resume stored tasks.
func New(cfg Config) *Engine {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	base, cancel := context.WithCancelCause(context.Background())
	return &Engine{
		cfg:      cfg,
		base:     base,
		cancel:   cancel,
		runs:     map[int64]context.CancelCauseFunc{},
		watchers: map[int64]map[chan struct{}]struct{}{},
	}
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
			e.cfg.Log.Error().Err(err).Int64("task_id", id).Msg("resuming task failed")
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
}

// Submit creates the task of p and starts it. The returned task is as
// created: RUNNING, its first subtasks READY.
func (e *Engine) Submit(ctx context.Context, p Plan) (*Task, error) {
	now := e.cfg.Now()
	t := &p.Task
	t.Subtasks = slices.Clone(t.Subtasks) // the caller's plan stays as it was
	t.Status, t.StartTime, t.Executor = StatusRunning, now, e.cfg.Executor
	if t.Operation == "" {
		t.Operation = OpExecute
	}
	for i := range t.Subtasks {
		st := &t.Subtasks[i]
		st.Status, st.RunTime = SubtaskPending, 1
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
		Msg("task created")
	// Start it in the background: the caller's ctx ends with its request.
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		if _, err := e.step(e.base, created.ID, nil); err != nil && e.base.Err() == nil {
			e.cfg.Log.Error().Err(err).Int64("task_id", created.ID).Msg("starting task failed")
		}
	}()
	return created, nil
}

// step applies mutate (if any) to the stored task, advances it, starts its
// runnable READY subtasks, stores the change as one compare-and-swap
// (retried on a lost race), tells watchers, stops the work of canceled
// subtasks, and launches the attempts it started (and any running attempt
// this engine does not run yet, after a restart). It returns the task as
// stored.
func (e *Engine) step(ctx context.Context, id int64, mutate func(t *Task) error) (*Task, error) {
	mu := &e.locks[id%int64(len(e.locks))]
	mu.Lock()
	var after *Task
	for try := 0; ; try++ {
		before, err := e.cfg.Store.GetTask(ctx, id)
		if err != nil {
			mu.Unlock()
			return nil, err
		}
		after = cloneTask(before)
		if mutate != nil {
			if err := mutate(after); err != nil {
				mu.Unlock()
				return nil, err
			}
		}
		now := e.cfg.Now()
		advance(after, now)
		var started []Subtask
		for i := range after.Subtasks {
			st := &after.Subtasks[i]
			if st.Status == SubtaskReady && runnable(after, st) {
				start(st, e.cfg.Executor, now)
				started = append(started, *st)
			}
		}
		advance(after, now)
		if !reflect.DeepEqual(before, after) {
			var lock []int64
			if before.Status.Final() && !after.Status.Final() {
				lock = lockHosts(after)
			}
			err = e.cfg.Store.UpdateTask(ctx, before, after, lock)
		}
		if errors.Is(err, ErrChanged) && try < 5 {
			continue
		}
		if err != nil {
			mu.Unlock()
			return nil, err
		}
		for _, st := range started {
			e.appendLog(st.ID, st.RunTime, logHeader(st.Operation, st.StartTime))
		}
		break
	}
	mu.Unlock()
	e.notify(id)
	for _, st := range after.Subtasks {
		if st.Status == SubtaskCanceling {
			e.stop(st.ID, ErrCanceled)
		}
		if st.Status.active() {
			e.launch(*after, st)
		}
	}
	return after, nil
}

// stop cancels the running attempt of a subtask, if this engine runs one.
func (e *Engine) stop(subtaskID int64, cause error) {
	e.mu.Lock()
	cancel := e.runs[subtaskID]
	e.mu.Unlock()
	if cancel != nil {
		cancel(cause)
	}
}

// ErrCanceled is the cause of the context of an attempt an operator
// canceled.
var ErrCanceled = errors.New("canceled by an operator")

// launch runs an attempt in the background unless this engine runs it
// already.
func (e *Engine) launch(t Task, st Subtask) {
	e.mu.Lock()
	if _, ok := e.runs[st.ID]; ok || e.base.Err() != nil {
		e.mu.Unlock()
		return
	}
	deadline := st.StartTime.Add(st.Timeout)
	base, cancelBase := context.WithCancelCause(e.base)
	ctx, cancelDeadline := context.WithDeadlineCause(base, deadline,
		fmt.Errorf("timed out after %ds", int(st.Timeout/time.Second)))
	cancel := func(cause error) { cancelBase(cause); cancelDeadline() }
	e.runs[st.ID] = cancel
	e.wg.Add(1)
	e.mu.Unlock()
	if st.Status == SubtaskCanceling {
		cancel(ErrCanceled)
	}

	go func() {
		defer e.wg.Done()
		defer func() {
			e.mu.Lock()
			delete(e.runs, st.ID)
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
		_, err := e.step(e.base, t.ID, func(cur *Task) error {
			s := cur.Subtask(st.ID)
			if s == nil || !s.Status.active() || s.RunTime != st.RunTime {
				return errStale
			}
			finish(cur, s, res, e.cfg.Now())
			return nil
		})
		switch {
		case errors.Is(err, errStale):
			log.Warn().Msg("subtask attempt outcome dropped: the subtask moved on")
			return
		case err != nil:
			log.Error().Err(err).Msg("storing subtask outcome failed")
			return
		}
		if res.Err != nil {
			log.Warn().Str("subtask", st.Name).Str("reason", res.Err.Error()).Msg("subtask failed")
		} else {
			log.Debug().Str("subtask", st.Name).Msg("subtask succeeded")
		}
		if res.AfterCommit != nil {
			res.AfterCommit()
		}
	}()
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

func (e *Engine) appendLog(subtaskID int64, runTime int, line string) {
	err := e.cfg.Store.AppendSubtaskLog(e.base, subtaskID, LogLine{RunTime: runTime, Time: e.cfg.Now(), Line: line})
	if err != nil && e.base.Err() == nil {
		e.cfg.Log.Error().Err(err).Int64("subtask_id", subtaskID).Msg("appending to subtask log failed")
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
// send's error or ctx's. Needs TASK_VIEWER.
func (e *Engine) WatchTask(ctx context.Context, id int64, send func(*Task) error) error {
	if _, err := e.GetTask(ctx, id); err != nil {
		return err
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
		}
		e.mu.Unlock()
	}()
	var last *Task
	for {
		t, err := e.cfg.Store.GetTask(ctx, id)
		if err != nil {
			return err
		}
		if last == nil || !reflect.DeepEqual(last, t) {
			if err := send(t); err != nil {
				return err
			}
			last = t
		}
		if t.Status.Final() {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-e.base.Done():
			return fmt.Errorf("watching task %d: server shutting down: %w", id, errs.ErrUnavailable)
		case <-ch:
		}
	}
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

func cloneTask(t *Task) *Task {
	c := *t
	c.Subtasks = make([]Subtask, len(t.Subtasks))
	copy(c.Subtasks, t.Subtasks)
	return &c
}
