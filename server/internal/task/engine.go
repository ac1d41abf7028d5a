package task

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"agentplane/server/internal/errs"
	"agentplane/server/internal/replica"
)

// Store is what the engine needs from durable storage.
type Store interface {
	// CreateTask stores a new task (taking p.Resources). With p.Idempotency
	// set and a task already stored under its scope, it returns that task
	// and existed true instead.
	CreateTask(ctx context.Context, p Plan) (t *Task, existed bool, err error)
	GetTask(ctx context.Context, id int64) (*Task, error)
	ListTasks(ctx context.Context, q ListQuery) (Page, error)
	// UpdateTask stores after over before as a compare-and-swap (ErrChanged
	// when before is not what is stored), fenced by before.Owner
	// (ErrNotOwner when the task has another owner or epoch), taking the
	// resources in take for the task (ErrConflict naming the holder),
	// releasing every resource the task holds when after is final, and
	// appending logs, in one transaction.
	UpdateTask(ctx context.Context, before, after *Task, take []Resource, logs ...SubtaskLogLine) error
	// ClaimTask makes replica the owner of task id, one epoch past from,
	// as a compare-and-swap from from (ErrChanged when the task has
	// another owner or epoch). With deadAfter > 0 the claim is taken only
	// while from.Replica is "" or not live: no heartbeat within deadAfter
	// on the database's clock (the replicas registry).
	ClaimTask(ctx context.Context, id int64, from Owner, replica string, deadAfter time.Duration) (Owner, error)
	// OwnedTasks returns the tasks that are not final and owned by
	// replica, oldest first.
	OwnedTasks(ctx context.Context, replica string) ([]OwnedTask, error)
	// OrphanedTasks returns up to limit tasks that are not final and whose
	// owner is neither replica nor live (as ClaimTask's deadAfter), oldest
	// first: one indexed query.
	OrphanedTasks(ctx context.Context, replica string, deadAfter time.Duration, limit int) ([]OwnedTask, error)
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
	// Resumed: the attempt was started before this engine ran it (by the
	// server before a restart), so its work may be under way or done
	// already: an executor asks what became of it before doing it again.
	Resumed bool
	// Log appends a line to the subtask's log under this attempt, and
	// returns once it is stored.
	Log func(line string)
	// queue, set by the engine, is QueueLog's.
	queue func(line string)
}

// QueueLog gives a line to the subtask's log under this attempt without
// waiting for it to be stored (only for room in the engine's bounded
// queue): for a line that must not hold the attempt's work (a command's
// "dispatching ..." line before it is sent). The attempt's lines are
// stored in the order given, Log's and QueueLog's, and before its outcome.
// Outside the engine (a Run made by hand) it is Log.
func (r Run) QueueLog(line string) {
	if r.queue == nil {
		r.Log(line)
		return
	}
	r.queue(line)
}

// Result is the outcome of an attempt: Err nil for success. A failed
// subtask's message is errs.Message(Err) (the sentence for its user, when
// Err carries one); its log ends with Err's whole text.
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
	// Holds names the resources a subtask holds while it runs (nil: none):
	// what a task takes again when an operator reopens it (see Resource).
	Holds func(st *Subtask) []Resource

	// Replica is this server's replica id (package replica): the owner of
	// the tasks it creates and claims (owner.go).
	Replica string
	// Lease: a replica whose last heartbeat is older is dead, and the
	// sweep adopts its tasks; default replica.DefaultLease.
	Lease time.Duration
	// SweepInterval is the time between two sweeps for the tasks of dead
	// replicas; default DefaultSweepInterval.
	SweepInterval time.Duration
	// OnChange, if set, is called with the ids of tasks after their
	// changes are stored (in batches, from one goroutine: the engine never
	// waits on it), for the replicas that watch them (see Changed).
	OnChange func(ids []int64)
	// Logs, if set, stores the attempts' log lines (nil: a writer of the
	// engine's own over Store). Give the engine the writer the fleet
	// queues agents' lines on (fleet.Config.Logs): lines are stored in the
	// order a writer is given them, so the line that ends an attempt
	// ("agentd: ...") is stored after the attempt's go-ahead and progress
	// lines only when both go through one writer.
	Logs *LogWriter
}

// Engine runs tasks: event-driven, a subtask starts as soon as its upstreams
// succeed. Every state change is a compare-and-swap in the store, so a
// restarted engine resumes where the last one stopped. It is the runtime
// only: Submit, Start and Close here, attempts and their outcomes in
// attempt.go, what it keeps of tasks between steps and the watches in
// memory.go. The operations users call (get, list, watch, retry, ...) are
// the Service's, over it.
//
// Several replicas' engines may share a store: each task is run, and
// written, by one of them, its owner (owner.go, sweep.go). The owner's
// engine is the only writer of the task. Between steps it keeps each task
// that is not final (or is watched) as it last stored it (held.stored), so
// a step reads nothing, and a watcher reads the same. Attempts that finish together are
// stored together: each queues its outcome on its task, and one goroutine
// per task applies every queued outcome in one step (one transaction, one
// notification), so a batch of thousands of subtasks costs a few dozen
// steps, not one per subtask.
type Engine struct {
	cfg   Config
	locks stripes // serialise changes to one task

	base   context.Context // parent of every run; cancelled by Close with ErrShutdown
	cancel context.CancelCauseFunc
	wg     sync.WaitGroup

	mu     sync.Mutex
	runs   map[int64]*running // running attempts, by subtask id (under mu)
	claims map[int64]int64    // epochs of the tasks this engine owns, by task id (under mu; owner.go)
	sweep  sync.Once          // starts the sweep (Start)

	changes changes // ids waiting for OnChange

	mem memory // tasks kept between steps, outcomes queued, watchers

	logs *LogWriter // the attempts' log lines
}

// stripes are the locks that serialise changes to one task, striped by id.
type stripes [64]sync.Mutex

// of returns task id's lock.
func (s *stripes) of(id int64) *sync.Mutex { return &s[id%int64(len(s))] }

// New returns an engine; call Start to resume stored tasks.
func New(cfg Config) *Engine {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Lease <= 0 {
		cfg.Lease = replica.DefaultLease
	}
	if cfg.SweepInterval <= 0 {
		cfg.SweepInterval = DefaultSweepInterval
	}
	base, cancel := context.WithCancelCause(context.Background())
	e := &Engine{
		cfg:    cfg,
		base:   base,
		cancel: cancel,
		runs:   map[int64]*running{},
		claims: map[int64]int64{},
		mem:    memory{watchers: map[int64]map[chan struct{}]struct{}{}, tasks: map[int64]*held{}},
	}
	e.logs = cfg.Logs
	if e.logs == nil {
		e.logs = newLogWriter(base, LogWriterConfig{Store: cfg.Store})
	}
	if cfg.OnChange != nil {
		e.changes.wake = make(chan struct{}, 1)
		e.wg.Add(1)
		go e.notifier()
	}
	return e
}

// Start resumes the tasks this replica owns that are not final (a restart
// with the same replica id), claiming each again (a new epoch: a previous
// process with this id, paused, can write none of them), then adopts the
// tasks of dead replicas (and those with no owner) in a first sweep, and
// sweeps every SweepInterval until Close (sweep.go). Running attempts are
// run again with the same attempt number and the time they have left.
func (e *Engine) Start(ctx context.Context) error {
	owned, err := e.cfg.Store.OwnedTasks(ctx, e.cfg.Replica)
	if err != nil {
		return fmt.Errorf("resuming tasks: %w", err)
	}
	for _, o := range owned {
		e.cfg.Log.Info().Int64("task_id", o.ID).Msg("resuming task")
		e.adopt(ctx, o, 0)
	}
	if _, err := e.sweepOnce(ctx); err != nil {
		return fmt.Errorf("adopting the tasks of dead replicas: %w", err)
	}
	e.sweep.Do(func() {
		e.wg.Add(1)
		go e.sweeper()
	})
	return nil
}

// Close stops every running attempt and waits for them to return, and ends
// every WatchTask with ErrUnavailable. The attempts' subtasks stay RUNNING in
// the store, to be resumed by the next Start (or adopted by another
// replica). Close is idempotent.
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
	t.Owner = Owner{Replica: e.cfg.Replica, Epoch: 1}
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
		loggerOf(ctx, &e.cfg.Log).Info().Int64("task_id", created.ID).Msg("idempotent repeat: returning the task created before")
		return created, nil
	}
	loggerOf(ctx, &e.cfg.Log).Info().Int64("task_id", created.ID).Int64("host_id", created.HostID).Str("task", created.Name).
		Int("subtasks", len(created.Subtasks)).Msg("task created")
	// The task as stored is what CreateTask returned: the first step needs
	// not read it back. (A copy: the caller may keep created.)
	mu := e.locks.of(created.ID)
	mu.Lock()
	e.created(created.ID, created.Owner.Epoch)
	if e.mem.kept(created.ID) == nil {
		kept := cloneTask(created)
		e.mem.keep(kept, positions(kept))
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
// was not stored would otherwise wait for nothing, holding its resources.
func (e *Engine) settle(id int64, what string, err error) {
	if errors.Is(err, ErrNotOwner) {
		return // dropped (drop logged it): the owner runs it
	}
	log := e.cfg.Log.With().Int64("task_id", id).Logger()
	log.Error().Err(err).Msg(what + " failed; retrying")
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		_ = e.retry(&log, what, func() error {
			if _, err := e.step(e.base, id, nil); !errors.Is(err, ErrNotOwner) {
				return err
			}
			return nil // dropped: the owner runs it
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
	mu := e.locks.of(id)
	mu.Lock()
	defer mu.Unlock()
	return e.stepLocked(ctx, id, mutate)
}

// stepLocked is step, with the task's lock held.
func (e *Engine) stepLocked(ctx context.Context, id int64, mutate mutation) (*Task, error) {
	for try := 0; ; try++ {
		before, pos, err := e.mem.load(ctx, e.cfg.Store, id)
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
		owner, owned := e.claim(id)
		wrote := !sameTask(before, after)
		if wrote {
			// Only this engine's claim writes the task (owner.go).
			if !owned || before.Owner != owner {
				err = notOwner(id, before.Owner)
			} else {
				err = e.cfg.Store.UpdateTask(ctx, before, after, e.taken(before, after), e.headers(started)...)
			}
		}
		if err != nil {
			e.mem.forget(id) // what is stored is no longer sure
			if errors.Is(err, ErrNotOwner) {
				e.drop(id, err)
			}
			if errors.Is(err, ErrChanged) && try < 5 {
				continue
			}
			return nil, err
		}
		e.mem.keep(after, pos)
		e.mem.notify(id)
		if wrote {
			e.changes.add(id)
		}
		if owned {
			e.run(after, started)
			if after.Status.Final() {
				e.unclaim(id) // nothing runs: an operation claims it again
			}
		}
		return after, nil
	}
}

// taken is what a step from before to after takes (see Store.UpdateTask):
// the resources of a task an operator reopens.
func (e *Engine) taken(before, after *Task) []Resource {
	if before.Status.Final() && !after.Status.Final() {
		return retaken(after, e.cfg.Holds)
	}
	return nil
}

// headers are the log headers of the attempts a step started, stored in
// its transaction: each is there once its attempt runs.
func (e *Engine) headers(started []Subtask) []SubtaskLogLine {
	headers := make([]SubtaskLogLine, len(started))
	for i, st := range started {
		headers[i] = SubtaskLogLine{SubtaskID: st.ID,
			LogLine: LogLine{RunTime: st.RunTime, Time: st.StartTime, Line: logHeader(st.Operation, st.StartTime), Header: true}}
	}
	return headers
}

// loggerOf is the request's logger (with its trace id) when ctx has one,
// else fallback.
func loggerOf(ctx context.Context, fallback *zerolog.Logger) *zerolog.Logger {
	if l := zerolog.Ctx(ctx); l.GetLevel() != zerolog.Disabled {
		return l
	}
	return fallback
}
