// Package backoff owns agentd's retry delays: capped exponential backoff with
// full jitter, shared by the stream's reconnects and by enrollment and
// certificate renewal.
package backoff

import (
	"math/rand/v2"
	"time"
)

// Backoff is a capped exponential backoff with full jitter: the n-th retry
// (from 0) waits a uniformly random time in [0, min(Cap, Base*2^n)]. The
// jitter is applied after the cap, so agents that all lost the server at
// once do not retry in lock-step.
type Backoff struct {
	Base time.Duration // first ceiling; default 200ms
	Cap  time.Duration // largest ceiling; default 30s
}

// Defaults of Backoff.
const (
	DefaultBase = 200 * time.Millisecond
	DefaultCap  = 30 * time.Second
)

func (b Backoff) withDefaults() Backoff {
	if b.Base <= 0 {
		b.Base = DefaultBase
	}
	if b.Cap <= 0 {
		b.Cap = DefaultCap
	}
	if b.Cap < b.Base {
		b.Cap = b.Base
	}
	return b
}

// Ceiling returns min(Cap, Base*2^n).
func (b Backoff) Ceiling(n int) time.Duration {
	b = b.withDefaults()
	c := b.Base
	for i := 0; i < n && c < b.Cap; i++ {
		c *= 2 // c < Cap here, so doubling cannot overflow a sane Cap
	}
	return min(c, b.Cap)
}

// Delay returns the wait before the n-th retry, drawn from r.
func (b Backoff) Delay(n int, r *rand.Rand) time.Duration {
	return time.Duration(r.Int64N(int64(b.Ceiling(n)) + 1))
}

// Rounds paces attempts over several servers, one server an attempt. A
// round is one attempt at each of n servers. Within a round the next
// server is tried after Delay(0) (at most Base): a dead server does not hold
// up the others, and the agents that lost the same server do not all knock
// on the next at once. After a round in which every server failed, the wait
// is Delay(r), r the rounds failed since the last Reset, so a fleet with no
// server never loops hot. With one server every attempt ends a round: the
// waits are Delay(0), Delay(1), ..., as for a single server.
// The zero Rounds is ready, with the zero Backoff's defaults.
type Rounds struct {
	Backoff Backoff
	tried   int // attempts failed in the current round
	rounds  int // rounds failed since the last Reset
}

// Failed records a failed attempt when there are n servers, and returns
// the wait before the next attempt.
func (r *Rounds) Failed(n int, rnd *rand.Rand) time.Duration {
	r.tried++
	if r.tried < n {
		return r.Backoff.Delay(0, rnd)
	}
	r.tried = 0
	d := r.Backoff.Delay(r.rounds, rnd)
	r.rounds++
	return d
}

// Reset starts over after a success (for the stream: a connection that
// stayed up long enough).
func (r *Rounds) Reset() { r.tried, r.rounds = 0, 0 }
