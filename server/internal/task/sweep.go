package task

import (
	"context"
	"time"
)

// DefaultSweepInterval is the default time between two sweeps: a task
// whose owner died waits at most its lease and this for another replica
// to resume it (less when the routing layer calls Adopt), and an idle
// replica's sweeps cost one query each.
const DefaultSweepInterval = 5 * time.Second

// sweepBatch bounds the tasks one sweep claims; the next sweep goes on.
const sweepBatch = 1000

// sweeper sweeps every SweepInterval until Close. It logs the first
// failure of a run of them, and the recovery.
func (e *Engine) sweeper() {
	defer e.wg.Done()
	tick := time.NewTicker(e.cfg.SweepInterval)
	defer tick.Stop()
	var failing bool
	for {
		select {
		case <-e.base.Done():
			return
		case <-tick.C:
		}
		_, err := e.sweepOnce(e.base)
		switch {
		case e.base.Err() != nil:
			return
		case err != nil && !failing:
			e.cfg.Log.Warn().Err(err).Msg("sweeping for the tasks of dead replicas failed; retrying every sweep")
		case err == nil && failing:
			e.cfg.Log.Info().Msg("sweeping for the tasks of dead replicas recovered")
		}
		failing = err != nil
	}
}

// sweepOnce claims the tasks that are not final and whose owner is not
// live (or is none: tasks made before tasks had owners), and resumes them;
// it returns how many it claimed. One indexed query when there are none.
func (e *Engine) sweepOnce(ctx context.Context) (int, error) {
	orphans, err := e.cfg.Store.OrphanedTasks(ctx, e.cfg.Replica, e.cfg.Lease, sweepBatch)
	if err != nil {
		return 0, err
	}
	from := map[string]int{}
	n := 0
	for _, o := range orphans {
		if e.adopt(ctx, o, e.cfg.Lease) {
			from[o.Owner.Replica]++
			n++
		}
	}
	for r, k := range from {
		e.cfg.Log.Info().Str("from_replica", r).Int("tasks", k).Dur("lease", e.cfg.Lease).
			Msg("adopted the tasks of a replica that is not live")
	}
	return n, nil
}
