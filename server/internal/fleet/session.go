package fleet

import (
	"sync"
	"sync/atomic"
	"time"

	"agentplane/server/internal/host"
)

// Session is one connected agentd stream. The adapter sends what Next (or
// Out) yields and stops when Done is closed (the session was replaced, lost
// or closed); Notify tells it when to look.
//
// Each session has a watchdog: a timer (no goroutine) that fires LostAfter
// after the host was last heard from and ends the session with ErrLost if
// nothing came since, else re-arms for the rest. It is stopped when the
// session ends, so nothing outlives a closed session or a closed Fleet.
type Session struct {
	HostID int64
	// Epoch is the session's fencing token (Welcome.Epoch): every command,
	// cancel and query sent on the session carries it (send sets it).
	Epoch  int64
	serial string // the client certificate's; "" without one
	// out is the queue of messages for the agent, made by the first send
	// or Out (queue): most sessions idle, and a queue is 2.6 KB.
	out  atomic.Pointer[chan Outbound]
	done chan struct{}
	once sync.Once
	err  error       // why it ended; set before done is closed
	lost *time.Timer // the watchdog; set before the session is published
	// disconnected is set by the first Disconnect, which releases the
	// session's place in its hostState.streams; guarded by Fleet.mu.
	disconnected bool
	// notify, once set, is called after each message queued and when the
	// session ends (Notify).
	notify atomic.Pointer[func()]
	// reported is the process list last stored for the host by this
	// session (the Hello's, then each changed heartbeat's). Only Receive
	// uses it, which the adapter calls from one goroutine per session.
	reported []host.Process
}

// sessionBuffer bounds the messages queued for one agent; an agent that
// falls this far behind is disconnected.
const sessionBuffer = 64

// Out yields the messages to send to the agent.
func (s *Session) Out() <-chan Outbound { return s.queue() }

// Next returns the next message to send to the agent without waiting;
// false when none is queued. Unlike Out it makes no queue.
func (s *Session) Next() (Outbound, bool) {
	q := s.out.Load()
	if q == nil {
		return Outbound{}, false
	}
	select {
	case m := <-*q:
		return m, true
	default:
		return Outbound{}, false
	}
}

// queue returns the session's queue, made on first use.
func (s *Session) queue() chan Outbound {
	if q := s.out.Load(); q != nil {
		return *q
	}
	q := make(chan Outbound, sessionBuffer)
	if s.out.CompareAndSwap(nil, &q) {
		return q
	}
	return *s.out.Load()
}

// Done is closed when the session ends; Err then says why.
func (s *Session) Done() <-chan struct{} { return s.done }

// Notify has f called after each message queued on the session and once
// it ends, so that an adapter needs no goroutine waiting on Out and Done.
// f runs in the caller of the fleet's method (possibly under the fleet's
// lock): it must not block nor call the fleet. Messages queued and an end
// that came before Notify are not announced: the caller looks at Out and
// Err once Notify has returned. Call it at most once.
func (s *Session) Notify(f func()) { s.notify.Store(&f) }

// notified calls the function given to Notify, if any.
func (s *Session) notified() {
	if f := s.notify.Load(); f != nil {
		(*f)()
	}
}

// Err says why the session ended: ErrReplaced, ErrSlowAgent, ErrLost,
// ErrRevoked, ErrCertRevoked, ErrClosing, or ErrDisconnected (possibly
// wrapped). It is nil while Done is open.
func (s *Session) Err() error {
	select {
	case <-s.done:
		return s.err
	default:
		return nil
	}
}

func (s *Session) close(reason error) {
	s.once.Do(func() {
		s.err = reason
		close(s.done)
		if s.lost != nil {
			s.lost.Stop()
		}
		s.notified()
	})
}

// send queues m without blocking, its command, cancel or query stamped
// with the session's epoch (on a copy: the caller's is unchanged); a full
// queue ends the session.
func (s *Session) send(m Outbound) bool {
	select {
	case <-s.done:
		return false
	default:
	}
	switch {
	case m.Command != nil:
		c := *m.Command
		c.Epoch, m.Command = s.Epoch, &c
	case m.Cancel != nil:
		c := *m.Cancel
		c.Epoch, m.Cancel = s.Epoch, &c
	case m.Query != nil:
		q := *m.Query
		q.Epoch, m.Query = s.Epoch, &q
	}
	select {
	case s.queue() <- m:
		s.notified()
		return true
	default:
		s.close(ErrSlowAgent)
		return false
	}
}
