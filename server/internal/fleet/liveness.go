package fleet

import (
	"context"
	"fmt"
	"time"
)

// watch runs when a session's watchdog fires: it ends the session with
// ErrLost if the host has been silent for LostAfter, else re-arms the timer
// for the rest of the bound. A host whose message is being handled is not
// silent: the server is not reading its stream meanwhile. Nor is one while
// the server is busy (see Busy): silence counts from the later of the
// host's last message and the server's last busy moment.
func (f *Fleet) watch(s *Session) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if s.Err() != nil {
		return
	}
	var heard time.Time
	if st := f.hosts[s.HostID]; st != nil {
		heard = st.heard
		if st.handling > 0 {
			heard = time.Now()
		}
	}
	idle := time.Since(later(heard, f.BusySince()))
	if idle < f.cfg.LostAfter {
		s.lost.Reset(f.cfg.LostAfter - idle)
		return
	}
	s.close(fmt.Errorf("%w: not heard from for %s", ErrLost, roundDuration(idle)))
	f.cfg.Log.Warn().Int64("host_id", s.HostID).Dur("silent", idle).Msg("agent lost; ending its stream")
}

// Expect records the hosts whose agentds are expected back after a server
// restart: those connected to the previous server (ONLINE, holding a
// running operation, or seen shortly before it stopped). The server calls
// it at start, before Serving. A host already heard from in this process
// is not expected.
//
// A restarted server must fail no task by itself: its agents come back
// over many seconds, as fast as it can accept them (10,000 TLS handshakes
// and registrations on two cores take about a minute), and an agent
// waiting in that queue is not silent. So, for a host expected back and
// not back yet, a wait for its agentd (Dispatch, WaitConnected) gives up
// only LostAfter after the later of
//
//   - the server Serving (the agent could not be heard before), and
//   - the reconnections settling: one heartbeat interval after the last
//     expected host came back (while they keep coming back, the server is
//     still working through the queue).
//
// A host that never comes back therefore fails at most LostAfter plus one
// heartbeat interval after the last expected host came back, or LostAfter
// after Serving when none does (40 s and 30 s with the defaults). Any
// other host, and an expected host once it has connected, counts as lost
// LostAfter after it was last heard from, as in normal operation.
func (f *Fleet) Expect(hostIDs []int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, id := range hostIDs {
		if st := f.hosts[id]; st == nil || st.heard.IsZero() {
			f.state(id).expected = true
		}
	}
}

// Serving records that the server accepts agent streams from now on;
// calls after the first do nothing.
func (f *Fleet) Serving() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.serving.IsZero() {
		f.serving = time.Now()
		close(f.servingCh)
	}
}

// Busy records that the server is, now, too busy to take every agent that
// tries to connect: a connection waits for a TLS handshake slot (the
// server's handshake limiter calls it), or a registration waits long for
// the store (Connect). A replica taking a dead one's thousands of
// reconnects is so for seconds to minutes, and an agent waiting in that
// queue, or in the backoff it was sent to, is not silent. So no host
// counts as lost, and no command as "agentd lost", until LostAfter after
// the server was last busy (and after the host was last heard from): a
// failover fails no task by itself. Cheap: one atomic store.
func (f *Fleet) Busy() { f.busy.Store(time.Now().UnixNano()) }

// BusySince is when the server was last busy (Busy); zero if never.
func (f *Fleet) BusySince() time.Time {
	if n := f.busy.Load(); n != 0 {
		return time.Unix(0, n)
	}
	return time.Time{}
}

// lostDeadline says when a wait for st's agentd to connect gives up: wait
// after the later of since and the server's last busy moment (see Busy),
// unless the host is expected back after the restart (see Expect; restart
// true), when it is LostAfter after the restart settles (or after the
// last busy moment, if later).
// With ok false the server is not serving yet: there is no such time until
// servingCh is closed. A restart's bound that ended before since no longer
// applies: the host is no longer expected. Callers hold mu and hold st.
func (f *Fleet) lostDeadline(st *hostState, since time.Time, wait time.Duration) (at time.Time, restart, ok bool) {
	if st.expected {
		if f.serving.IsZero() {
			return time.Time{}, true, false
		}
		settled := f.serving
		if !f.back.IsZero() {
			settled = later(settled, f.back.Add(f.cfg.HeartbeatInterval))
		}
		if at = settled.Add(f.cfg.LostAfter); !at.Before(since) {
			return later(at, f.BusySince().Add(f.cfg.LostAfter)), true, true
		}
		st.expected = false
	}
	return later(since, f.BusySince()).Add(wait), false, true
}

// notBack says why a host expected back after the restart is given up.
func (f *Fleet) notBack() string {
	return fmt.Sprintf("not back within %s after the server restart's reconnections settled", roundDuration(f.cfg.LostAfter))
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// WaitConnected returns nil as soon as the host's agentd has a session. It
// gives up with an error wrapping ErrNotConnected wait after it began, or,
// for a host expected back after a restart, LostAfter after the restart's
// reconnections settle (see Expect); and returns ctx's cause when ctx ends
// first.
func (f *Fleet) WaitConnected(ctx context.Context, hostID int64, wait time.Duration) error {
	began := time.Now()
	var st *hostState // held from the first wait on
	defer func() {
		if st != nil {
			f.mu.Lock()
			f.unhold(st)
			f.mu.Unlock()
		}
	}()
	for {
		f.mu.Lock()
		if f.live(hostID) != nil {
			f.mu.Unlock()
			return nil
		}
		if st == nil {
			st = f.hold(hostID)
		}
		joined := st.joinedCh()
		at, restart, ok := f.lostDeadline(st, began, wait)
		serving := f.servingCh
		f.mu.Unlock()
		expired, stop := f.alarm(at, ok)
		if ok && expired == nil {
			if restart {
				return fmt.Errorf("%w: %s", ErrNotConnected, f.notBack())
			}
			return fmt.Errorf("%w within %s", ErrNotConnected, roundDuration(wait))
		}
		if ok {
			serving = nil
		}
		select {
		case <-ctx.Done():
			stop()
			return context.Cause(ctx)
		case <-joined:
		case <-serving:
		case <-expired:
		}
		stop()
	}
}

// alarm returns a channel that fires at at (nil when at has passed), and
// its stop; with set false, nothing fires.
func (f *Fleet) alarm(at time.Time, set bool) (<-chan time.Time, func()) {
	left := time.Until(at)
	if !set || left <= 0 {
		return nil, func() {}
	}
	t := time.NewTimer(left)
	return t.C, func() { t.Stop() }
}

// Connected reports whether the host's agentd has a live session here.
func (f *Fleet) Connected(hostID int64) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.live(hostID) != nil
}
