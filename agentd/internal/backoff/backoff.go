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
