package fleet

import (
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// hostState is what the fleet holds about one host, in Fleet.hosts, guarded
// by Fleet.mu. It is made when first needed (state) and dropped once it
// holds nothing (release), so memory follows the hosts connected, waited
// for or written, not every host ever named. The exception is heard: a host
// once heard from keeps its state (as little as that time) while the
// process runs.
//
// A pointer to a hostState stays valid while it holds something; code that
// keeps one across an unlock of Fleet.mu holds it (waiters) or knows it
// non-empty.
type hostState struct {
	id int64

	// session is the host's current session; nil without one. It may have
	// ended (see live).
	session *Session
	// epoch is the newest epoch of the host's sessions in this process
	// (Session.Epoch, from the registry): a fencing token that only grows,
	// raised by one in the store for each session Connect installs. It
	// outlives the session (the state is kept for heard); the store holds
	// the count, this copy only notices a count that went back.
	epoch int64
	// streams counts the sessions Connect opened that Disconnect has not
	// yet ended (at most MaxStreamsPerHost).
	streams int
	// replacements is the token bucket Connect takes from when it replaces
	// a live session; nil until then, and dropped once full when the host
	// holds no stream (a full bucket is a new one).
	replacements *rate.Limiter

	// calls are the host's entries of Fleet.inflight, so a connecting host
	// finds its commands without a scan of every host's.
	calls map[key]*call
	// pending holds the cancels that found no session to take them, oldest
	// first; Connect delivers them. At most maxPendingCancels.
	pending []Cancel
	// joined is closed (and cleared) when a session of the host is
	// installed; made by the first waiter, dropped when none is left.
	joined chan struct{}
	// waiters counts the WaitConnected and Dispatch calls that wait on the
	// host; each holds the state, so it is not dropped under them.
	waiters int

	// heard is when the host's agentd was last heard from in this process
	// (monotonic clock); zero if never. It outlives the host's sessions: a
	// dispatch to a host without one counts its lost bound from it, and
	// Expect skips a host heard from.
	heard time.Time
	// handling counts the host's messages being handled now (Receive):
	// while one is, the host is not silent.
	handling int
	// expected: the host is expected back after a server restart and is
	// not back yet (Expect).
	expected bool

	// seen is when the host last sent a report unchanged since the one
	// stored, not yet written; seenMarked says it is set and the host is
	// in Fleet.seenHosts (markSeen).
	seen       time.Time
	seenMarked bool
	// offline: the host's OFFLINE write failed; it is in
	// Fleet.offlineHosts, written again later (offlineLater).
	offline bool
}

// empty reports whether st holds nothing, so it may be dropped.
func (st *hostState) empty() bool {
	return st.session == nil && st.streams == 0 && st.replacements == nil && len(st.calls) == 0 &&
		len(st.pending) == 0 && st.waiters == 0 && st.joined == nil && st.heard.IsZero() && !st.expected &&
		!st.seenMarked && !st.offline
}

// state returns the host's state, made if it has none. Callers hold mu,
// and release it once done if they may have left it empty.
func (f *Fleet) state(hostID int64) *hostState {
	st := f.hosts[hostID]
	if st == nil {
		st = &hostState{id: hostID}
		f.hosts[hostID] = st
	}
	return st
}

// release drops st if it holds nothing. Callers hold mu.
func (f *Fleet) release(st *hostState) {
	if st.empty() && f.hosts[st.id] == st {
		delete(f.hosts, st.id)
	}
}

// live returns the host's session unless it has none or it has ended.
// Callers hold mu.
func (f *Fleet) live(hostID int64) *Session {
	if st := f.hosts[hostID]; st != nil {
		return st.live()
	}
	return nil
}

// live returns the session unless there is none or it has ended.
func (st *hostState) live() *Session {
	if s := st.session; s != nil && s.Err() == nil {
		return s
	}
	return nil
}

// hold returns the host's state, held for a wait on the host until
// unhold. Callers hold mu.
func (f *Fleet) hold(hostID int64) *hostState {
	st := f.state(hostID)
	st.waiters++
	return st
}

// unhold ends a hold: the last waiter drops the joined channel, and st if
// it then holds nothing. Callers hold mu.
func (f *Fleet) unhold(st *hostState) {
	if st.waiters--; st.waiters == 0 {
		st.joined = nil
	}
	f.release(st)
}

// joinedCh returns the channel closed when a session of the host is next
// installed. Callers hold mu and hold st.
func (st *hostState) joinedCh() chan struct{} {
	if st.joined == nil {
		st.joined = make(chan struct{})
	}
	return st.joined
}

// hostLocks are per-host mutexes, and a way to hold them all. Each host's
// is its own (made while held or awaited, dropped after): a Connect holds
// its host's across the host's registration, a store write, and during a
// failover thousands of hosts register at once. Striped locks (256) made
// the hosts sharing a stripe register one after another, each behind a
// whole write group: their Welcomes came after agentd's timeout.
type hostLocks struct {
	every sync.RWMutex // held shared by host, exclusively by all

	mu   sync.Mutex
	held map[int64]*hostLock // the hosts locked or awaited
}

type hostLock struct {
	sync.Mutex
	refs int // holders and waiters; guarded by hostLocks.mu
}

// host locks one host; call the result to unlock.
func (l *hostLocks) host(id int64) func() {
	l.every.RLock()
	l.mu.Lock()
	if l.held == nil {
		l.held = map[int64]*hostLock{}
	}
	h := l.held[id]
	if h == nil {
		h = &hostLock{}
		l.held[id] = h
	}
	h.refs++
	l.mu.Unlock()
	h.Lock()
	return func() {
		h.Unlock()
		l.mu.Lock()
		if h.refs--; h.refs == 0 {
			delete(l.held, id)
		}
		l.mu.Unlock()
		l.every.RUnlock()
	}
}

// all locks every host; call the result to unlock.
func (l *hostLocks) all() func() {
	l.every.Lock()
	return l.every.Unlock
}
