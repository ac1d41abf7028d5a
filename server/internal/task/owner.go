package task

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"agentplane/server/internal/errs"
)

// Which replica runs which task. Several replicas share one store; each
// task is owned by one of them (Task.Owner, stored with the task), the
// replica that runs its DAG, and only the owner writes it: every write is
// a compare-and-swap on the owner and the epoch this engine claimed the
// task at, so a replica that lost a task (paused past its lease,
// partitioned, or handed over by an operator's operation) stores nothing
// more of it. A task is created owned by the replica that created it, at
// epoch 1; each claim of it raises the epoch by one:
//
//   - Start claims again the tasks its replica id owns (a restart);
//   - the sweep (sweep.go) claims the tasks whose owner is not live on the
//     database's clock, in the same statement that checks it;
//   - Adopt claims every task of a replica known to be gone, whatever its
//     heartbeat (the routing layer, which saw its connection refused);
//   - an operator's operation received by a replica that does not own the
//     task hands it over (Service.operate).
//
// An engine that finds its claim lost (a write refused with ErrNotOwner, or
// Changed) drops the task: it forgets its copy and stops its attempts with
// cause ErrNotOwner, storing none of their outcomes and acknowledging
// nothing (AfterCommit): the new owner resumes them (Run.Resumed) and gets
// their results.

// ErrNotOwner is the error of a write of a task this engine does not own
// (any more): another replica claimed it since.
var ErrNotOwner = fmt.Errorf("task owned by another replica: %w", errs.ErrAborted)

// notOwner says that task id is owned by owner, not by this engine's claim.
func notOwner(id int64, owner Owner) error {
	return fmt.Errorf("task %d: owned by replica %q at epoch %d: %w", id, owner.Replica, owner.Epoch, ErrNotOwner)
}

// claim returns this engine's claim of task id: its owner and epoch.
func (e *Engine) claim(id int64) (Owner, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	epoch, ok := e.claims[id]
	return Owner{Replica: e.cfg.Replica, Epoch: epoch}, ok
}

// created records the claim of task id, created here at epoch.
func (e *Engine) created(id, epoch int64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.claims[id] = epoch
}

// claimed records the claim of task id at epoch. The attempts of the task
// this engine still runs under an earlier claim it lost stop (ErrNotOwner):
// the task's next step resumes them.
func (e *Engine) claimed(id, epoch int64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.claims[id] = epoch
	e.stopRunsLocked(id)
}

// Owned is the number of tasks this engine owns that are not final: the
// tasks it runs.
func (e *Engine) Owned() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.claims)
}

// unclaim forgets the claim of task id, final: an operation claims it again.
func (e *Engine) unclaim(id int64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.claims, id)
}

// stopRunsLocked stops the attempts of task id this engine runs, with
// cause ErrNotOwner. e.mu is held.
func (e *Engine) stopRunsLocked(id int64) int {
	n := 0
	for sid, r := range e.runs {
		if r.taskID == id {
			r.cancel(ErrNotOwner)
			delete(e.runs, sid)
			n++
		}
	}
	return n
}

// drop gives up task id, whose claim err says lost: it forgets the task and
// stops its attempts, whose outcomes are not stored. It logs once per claim.
func (e *Engine) drop(id int64, err error) {
	e.mu.Lock()
	_, had := e.claims[id]
	delete(e.claims, id)
	stopped := e.stopRunsLocked(id)
	e.mu.Unlock()
	e.mem.forget(id)
	e.mem.notify(id) // its watchers read it from the store
	if had {
		e.cfg.Log.Warn().Err(err).Int64("task_id", id).Int("attempts_stopped", stopped).
			Msg("task taken over by another replica: stopped running it here; the new owner resumes its attempts")
	}
}

// adopt claims task o from its owner (only while that owner is dead, with
// deadAfter > 0: see Store.ClaimTask) and resumes it. It reports whether
// the claim was taken; a claim lost to another replica is no error.
func (e *Engine) adopt(ctx context.Context, o OwnedTask, deadAfter time.Duration) bool {
	mu := e.locks.of(o.ID)
	mu.Lock()
	defer mu.Unlock()
	log := e.cfg.Log.With().Int64("task_id", o.ID).Str("from_replica", o.Owner.Replica).Int64("from_epoch", o.Owner.Epoch).Logger()
	owner, err := e.cfg.Store.ClaimTask(ctx, o.ID, o.Owner, e.cfg.Replica, deadAfter)
	switch {
	case errors.Is(err, ErrChanged):
		log.Debug().Msg("task claimed by another replica first")
		return false
	case err != nil:
		if ctx.Err() == nil {
			log.Warn().Err(err).Msg("claiming task failed")
		}
		return false
	}
	e.mem.forget(o.ID)
	e.claimed(o.ID, owner.Epoch)
	e.changes.add(o.ID) // its previous owner, if it runs, drops it
	log.Debug().Int64("epoch", owner.Epoch).Msg("task claimed")
	if _, err := e.stepLocked(ctx, o.ID, nil); err != nil {
		e.settle(o.ID, "resuming task", err)
	}
	return true
}

// Adopt claims every task of replica from that is not final, whatever
// from's heartbeat says, and resumes them here; it returns how many it
// claimed. The caller knows from's process gone (its connection refused
// after it was up), so its tasks need not wait for its lease to pass: a
// claim raises the task's epoch, so were from still running, it could
// write none of them.
func (e *Engine) Adopt(ctx context.Context, from string) (int, error) {
	if from == e.cfg.Replica {
		return 0, fmt.Errorf("adopting the tasks of replica %q: it is this one: %w", from, errs.ErrInvalidArgument)
	}
	owned, err := e.cfg.Store.OwnedTasks(ctx, from)
	if err != nil {
		return 0, fmt.Errorf("adopting the tasks of replica %q: %w", from, err)
	}
	n := 0
	for _, o := range owned {
		if e.adopt(ctx, o, 0) {
			n++
		}
	}
	if n > 0 {
		e.cfg.Log.Info().Str("from_replica", from).Int("tasks", n).Msg("adopted the tasks of a replica that is gone")
	}
	return n, ctx.Err()
}

// handOver claims task id for an operator's operation whose change mutate
// is (checked first on the task as stored: an operation the task's state
// refuses claims nothing), from whichever replica owns it, live or not.
// The task's lock is held. A claim this engine holds already is kept.
func (e *Engine) handOver(ctx context.Context, id int64, mutate mutation) error {
	for try := 0; ; try++ {
		if _, ok := e.claim(id); ok {
			return nil
		}
		t, err := e.cfg.Store.GetTask(ctx, id)
		if err != nil {
			return err
		}
		if err := mutate(cloneTask(t), positions(t)); err != nil {
			return err
		}
		owner, err := e.cfg.Store.ClaimTask(ctx, id, t.Owner, e.cfg.Replica, 0)
		if errors.Is(err, ErrChanged) && try < 5 {
			continue
		}
		if err != nil {
			return err
		}
		e.mem.forget(id)
		e.claimed(id, owner.Epoch)
		e.changes.add(id)
		if t.Owner.Replica != e.cfg.Replica && !t.Status.Final() {
			e.cfg.Log.Info().Int64("task_id", id).Str("from_replica", t.Owner.Replica).Int64("epoch", owner.Epoch).
				Msg("task handed over to this replica for an operation")
		}
		return nil
	}
}

// Changed tells the engine that other replicas changed tasks ids (the
// routing layer calls it with the ids their OnChange gave): it forgets
// what it kept of them, drops those it owned that another replica claimed
// since (checked in the store, in the background), and wakes their
// watchers, who read them again.
func (e *Engine) Changed(ids []int64) {
	var mine []int64
	for _, id := range ids {
		if _, ok := e.claim(id); ok {
			mine = append(mine, id)
			continue
		}
		e.mem.forget(id)
		e.mem.notify(id)
	}
	if len(mine) == 0 || e.base.Err() != nil {
		return
	}
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		for _, id := range mine {
			e.recheck(id)
		}
	}()
}

// recheck drops task id when the store says another replica claimed it.
func (e *Engine) recheck(id int64) {
	mu := e.locks.of(id)
	mu.Lock()
	defer mu.Unlock()
	owner, ok := e.claim(id)
	if !ok {
		return
	}
	t, err := e.cfg.Store.GetTask(e.base, id)
	if err != nil {
		if e.base.Err() == nil {
			e.cfg.Log.Warn().Err(err).Int64("task_id", id).Msg("checking the owner of a task changed elsewhere failed")
		}
		return
	}
	if t.Owner != owner {
		e.drop(id, notOwner(id, t.Owner))
	}
}

// changes are the ids of tasks changed since OnChange was last called.
type changes struct {
	mu   sync.Mutex
	ids  map[int64]struct{}
	wake chan struct{} // nil without OnChange
}

// add queues id for OnChange.
func (c *changes) add(id int64) {
	if c.wake == nil {
		return
	}
	c.mu.Lock()
	if c.ids == nil {
		c.ids = map[int64]struct{}{}
	}
	c.ids[id] = struct{}{}
	c.mu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// take returns the queued ids, in order, and empties the queue.
func (c *changes) take() []int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	ids := make([]int64, 0, len(c.ids))
	for id := range c.ids {
		ids = append(ids, id)
	}
	c.ids = nil
	slices.Sort(ids)
	return ids
}

// notifier calls OnChange with the ids changed meanwhile, each time it is
// woken, until Close (after which it calls it once more with what is
// left).
func (e *Engine) notifier() {
	defer e.wg.Done()
	for {
		var done bool
		select {
		case <-e.changes.wake:
		case <-e.base.Done():
			done = true
		}
		if ids := e.changes.take(); len(ids) > 0 {
			e.cfg.OnChange(ids)
		}
		if done {
			return
		}
	}
}
