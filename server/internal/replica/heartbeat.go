package replica

import (
	"context"
	"errors"
	"time"

	"agentplane/server/internal/errs"
)

// loop heartbeats every Interval until ctx ends (Close). A heartbeat that finds
// the row gone registers again. Failures are logged at the first, then at
// the 2nd, 4th, 8th... in a row (and at least every maxLogGap), and the
// recovery once: a store down for an hour logs a dozen lines, not 1,800.
func (r *Replica) loop(ctx context.Context) {
	defer close(r.done)
	tick := time.NewTicker(r.cfg.Interval)
	defer tick.Stop()
	var failed int
	var since, logged time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		err := r.beat(ctx)
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			if failed > 0 {
				r.cfg.Log.Info().Str("replica_id", r.cfg.ID).Int("failures", failed).Dur("down", time.Since(since).Round(time.Millisecond)).
					Msg("replica heartbeat recovered")
			}
			failed = 0
			continue
		}
		failed++
		if failed == 1 {
			since = time.Now()
		}
		if failed&(failed-1) == 0 || time.Since(logged) >= maxLogGap {
			logged = time.Now()
			ev := r.cfg.Log.Warn()
			if time.Since(since) >= r.cfg.Lease {
				ev = r.cfg.Log.Error() // the others see this replica as gone
			}
			ev.Err(err).Str("replica_id", r.cfg.ID).Int("failures", failed).Dur("failing_for", time.Since(since).Round(time.Millisecond)).
				Dur("lease", r.cfg.Lease).Msg("replica heartbeat failed")
		}
	}
}

// maxLogGap bounds the silence between two logs of failing heartbeats.
const maxLogGap = 5 * time.Minute

// beat records one heartbeat, registering again when the row is gone.
func (r *Replica) beat(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.Interval)
	defer cancel()
	err := r.cfg.Store.HeartbeatReplica(ctx, r.cfg.ID, r.incarnation)
	if errors.Is(err, errs.ErrNotFound) {
		r.cfg.Log.Warn().Err(err).Str("replica_id", r.cfg.ID).Msg("replica not in the registry: registering again")
		return r.register(ctx)
	}
	return err
}
