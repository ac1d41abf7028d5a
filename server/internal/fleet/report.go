package fleet

import (
	"context"
	"time"

	"agentplane/server/internal/host"
)

// markSeen notes that a host sent a report unchanged since the last one
// stored. The notes are written in one batch a heartbeat interval after the
// first one since the last batch (a timer, no goroutine while idle), and by
// Close.
//
// An unchanged heartbeat is not written on its own: at 10,000 hosts that
// would be 1,000 transactions a second. last_seen is therefore up to one
// interval old; liveness (LostAfter) runs on the in-memory clock, not on it.
func (f *Fleet) markSeen(hostID int64, at time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	st := f.state(hostID)
	st.seen = at
	if !st.seenMarked {
		st.seenMarked = true
		f.seenHosts = append(f.seenHosts, st)
	}
	if !f.closing {
		f.arm(&f.flushTimer, f.flushSeen)
	}
}

// flushSeen writes the hosts noted by markSeen.
func (f *Fleet) flushSeen() {
	f.mu.Lock()
	seen := make(map[int64]time.Time, len(f.seenHosts))
	for _, st := range f.seenHosts {
		seen[st.id] = st.seen
		st.seen, st.seenMarked = time.Time{}, false
		f.release(st)
	}
	f.seenHosts = nil
	f.flushTimer = nil
	f.mu.Unlock()
	if len(seen) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), f.cfg.HeartbeatInterval)
	defer cancel()
	if err := f.cfg.Registry.HostsSeen(ctx, seen); err != nil {
		f.cfg.Log.Error().Err(err).Int("hosts", len(seen)).Msg("recording hosts seen failed")
	}
}

// sameProcesses reports whether two reports list the same processes in the
// same order.
func sameProcesses(a, b []host.Process) bool {
	if len(a) != len(b) || (a == nil) != (b == nil) {
		return false
	}
	for i := range a {
		x, y := a[i], b[i]
		if x.PID != y.PID || x.Name != y.Name || x.Exe != y.Exe || x.Cmdline != y.Cmdline || x.User != y.User ||
			!x.CreateTime.Equal(y.CreateTime) {
			return false
		}
	}
	return true
}

// writeFailLogEvery bounds how often writeFailed logs.
const writeFailLogEvery = 10 * time.Second

// writeFailed logs a heartbeat or progress write that failed, at most once
// per writeFailLogEvery, counting the others.
func (f *Fleet) writeFailed(err error, hostID int64, msg string) {
	n := f.writeFails.Add(1)
	f.writeFailLog.Do(func() {
		f.cfg.Log.Error().Err(err).Int64("host_id", hostID).Int64("failures", n).Msg(msg)
		f.writeFails.Store(0)
	})
}

// restoreOffline undoes a registration's ONLINE write for a host with no
// live session, unless a newer stream (epoch) was registered since (on
// another replica). Callers hold the host's online lock.
func (f *Fleet) restoreOffline(hostID, epoch int64) {
	f.mu.Lock()
	live := f.live(hostID) != nil
	f.mu.Unlock()
	if live {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := f.setOffline(ctx, hostID, epoch); err != nil {
		f.cfg.Log.Error().Err(err).Int64("host_id", hostID).Msg("marking host offline failed; retrying")
		f.offlineLater(hostID)
	}
}

// setOffline writes the host OFFLINE if its stream of epoch is still its
// newest (StreamRegistry; unconditionally without one), and reports whether
// it wrote.
func (f *Fleet) setOffline(ctx context.Context, hostID, epoch int64) (bool, error) {
	if f.fenced(epoch) {
		return f.cfg.Registry.(StreamRegistry).SetHostOffline(ctx, hostID, epoch)
	}
	return true, f.cfg.Registry.SetHostStatus(ctx, hostID, host.StatusOffline)
}

// fenced reports whether setOffline writes a stream of epoch OFFLINE only
// while epoch is still the host's (StreamRegistry).
func (f *Fleet) fenced(epoch int64) bool {
	_, ok := f.cfg.Registry.(StreamRegistry)
	return ok && epoch != 0
}

// offlineLater writes the host OFFLINE again a heartbeat interval from now
// (with any other host whose write failed), unless it has a session by
// then; a failed write is retried the same way, until the fleet closes.
// The store may be unwritable for a while (a full disk): the host must not
// stay ONLINE once it is writable again.
func (f *Fleet) offlineLater(hostID int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closing {
		return
	}
	if st := f.state(hostID); !st.offline {
		st.offline = true
		f.offlineHosts = append(f.offlineHosts, st)
	}
	f.arm(&f.offlineTimer, f.retryOffline)
}

// arm sets *t to run write a heartbeat interval from now, unless it is
// set already. The write counts in flushing until done; it clears *t
// (under mu) before it writes. Callers hold mu.
func (f *Fleet) arm(t **time.Timer, write func()) {
	if *t == nil {
		f.flushing.Add(1)
		*t = time.AfterFunc(f.cfg.HeartbeatInterval, func() {
			defer f.flushing.Done()
			write()
		})
	}
}

// disarm stops *t, if set, and clears it; a write it stopped before it ran
// no longer counts in flushing. Callers hold mu.
func (f *Fleet) disarm(t **time.Timer) {
	if *t != nil && (*t).Stop() {
		f.flushing.Done()
	}
	*t = nil
}

// retryOffline writes OFFLINE the hosts offlineLater noted that have no
// session.
func (f *Fleet) retryOffline() {
	f.mu.Lock()
	hosts := make([]int64, 0, len(f.offlineHosts))
	epochs := make([]int64, 0, len(f.offlineHosts))
	for _, st := range f.offlineHosts {
		hosts = append(hosts, st.id)
		epochs = append(epochs, st.epoch)
		st.offline = false
		f.release(st)
	}
	f.offlineHosts, f.offlineTimer = nil, nil
	f.mu.Unlock()
	for i, id := range hosts {
		unlock := f.online.host(id)
		f.restoreOffline(id, epochs[i])
		unlock()
	}
}
