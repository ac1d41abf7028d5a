package cluster

import (
	"context"
	"time"

	"github.com/rs/zerolog"

	"agentplane/server/internal/store"
)

// OrphanHosts is what the orphan sweep needs of the store (store.Store).
type OrphanHosts interface {
	// MarkOrphanHostsOffline sets OFFLINE the ONLINE hosts whose stream was
	// on a replica dead for deadAfter, and says how many.
	MarkOrphanHostsOffline(ctx context.Context, deadAfter time.Duration) (int64, error)
}

// SweepOrphanHosts marks OFFLINE, every interval until ctx ends, the hosts
// still ONLINE on a replica that died (no heartbeat for deadAfter: the
// registry's lease and then --agent-lost-after, the time its agentds had
// to come back to another replica). A replica that dies takes its streams'
// ends with it, so no one else would: its hosts would show ONLINE until it
// came back. Every live replica runs it; the UPDATE is the same on each,
// and a host that reconnected is on a live replica and untouched.
func SweepOrphanHosts(ctx context.Context, hosts OrphanHosts, interval, deadAfter time.Duration, log zerolog.Logger) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		n, err := hosts.MarkOrphanHostsOffline(ctx, deadAfter)
		switch {
		case err != nil && ctx.Err() == nil:
			log.Warn().Err(err).Msg("marking the hosts of dead replicas OFFLINE failed; trying again")
		case n > 0:
			log.Info().Int64("hosts", n).Dur("dead_for", deadAfter).Msg("hosts of a dead replica, whose agentds did not come back, marked OFFLINE")
		}
	}
}

var _ OrphanHosts = (*store.Store)(nil)
