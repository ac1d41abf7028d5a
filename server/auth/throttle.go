package auth

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"agentplane/server/errs"
)

// ThrottleConfig tunes a Throttle; zero fields take the defaults.
type ThrottleConfig struct {
	// Window is how long a failure counts; default 5 minutes.
	Window time.Duration
	// SlowAfter failures in the window make every further attempt wait
	// first; default 5.
	SlowAfter int
	// LockAfter failures in the window lock the key out; default 10.
	LockAfter int
	// Delay is the wait at SlowAfter failures; it grows by Delay with each
	// further failure, up to MaxDelay. Defaults 500 ms and 3 s.
	Delay, MaxDelay time.Duration
	// Lockout is the first lockout; each next one doubles, up to
	// MaxLockout. Defaults 1 and 15 minutes.
	Lockout, MaxLockout time.Duration
	// Forget: a key without a failure for this long starts again at the
	// first lockout; default 1 hour.
	Forget time.Duration
	// MaxKeys bounds the keys tracked; beyond it the least recently failed
	// key that is not locked out is forgotten (the oldest if all are).
	// Default 10000.
	MaxKeys int
	// Now is the clock; default time.Now.
	Now func() time.Time
	// Sleep waits d or until ctx is done (then returns ctx.Err()); default
	// a timer.
	Sleep func(ctx context.Context, d time.Duration) error
}

func (c *ThrottleConfig) setDefaults() {
	def := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&c.Window, 5*time.Minute)
	def(&c.Delay, 500*time.Millisecond)
	def(&c.MaxDelay, 3*time.Second)
	def(&c.Lockout, time.Minute)
	def(&c.MaxLockout, 15*time.Minute)
	def(&c.Forget, time.Hour)
	if c.SlowAfter <= 0 {
		c.SlowAfter = 5
	}
	if c.LockAfter <= 0 {
		c.LockAfter = 10
	}
	if c.MaxKeys <= 0 {
		c.MaxKeys = 10000
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Sleep == nil {
		c.Sleep = sleepCtx
	}
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// ThrottledError refuses an attempt from a locked-out user or address. It
// is an errs.ErrTooManyRequests error and an errs.RetryAfterer.
type ThrottledError struct {
	Wait time.Duration // until the lockout ends
}

func (e *ThrottledError) Error() string {
	return fmt.Sprintf("too many failed authentication attempts; retry in %d s", retrySeconds(e.Wait))
}

// Unwrap makes it an errs.ErrTooManyRequests error.
func (e *ThrottledError) Unwrap() error { return errs.ErrTooManyRequests }

// RetryAfter is the wait rounded up to whole seconds (at least one).
func (e *ThrottledError) RetryAfter() time.Duration {
	return time.Duration(retrySeconds(e.Wait)) * time.Second
}

func retrySeconds(d time.Duration) int64 {
	s := int64((d + time.Second - 1) / time.Second)
	return max(s, 1)
}

// Throttle slows down, then refuses, callers that keep failing to
// authenticate. It tracks two kinds of key: the identity a caller claims
// (a username, or an access key id) and its source address (the IP; an
// IPv6 address counts as its /64). Failures are counted per key over a
// sliding window: from SlowAfter on, every attempt on that key waits first
// (Delay, growing, bounded, given up when the call's context ends); at
// LockAfter the key is locked out for Lockout, doubling with each lockout
// up to MaxLockout, and attempts are refused without checking credentials.
// A success clears the user's key (not the address's: one valid account
// must not let an address guess others'). Memory is bounded by MaxKeys.
// It is safe for concurrent use.
type Throttle struct {
	cfg     ThrottleConfig
	mu      sync.Mutex
	entries map[string]*list.Element // of *throttleEntry
	lru     *list.List               // least recently failed first
}

type throttleEntry struct {
	key         string
	fails       []time.Time // within the window, oldest first
	lastFail    time.Time
	lockedUntil time.Time
	level       int // lockouts so far
}

// NewThrottle returns a Throttle.
func NewThrottle(cfg ThrottleConfig) *Throttle {
	cfg.setDefaults()
	return &Throttle{cfg: cfg, entries: map[string]*list.Element{}, lru: list.New()}
}

// Do runs one authentication attempt: verify, under the throttle of the
// claimed identity user ("" when none could be read) and the source
// address addr (ip:port, "" when unknown). A locked-out key gives a
// *ThrottledError without calling verify; a slowed-down key waits first
// (a context error if ctx ends meanwhile). An ErrUnauthenticated error from
// verify counts as a failure of both keys; other errors (a store failure, a
// body too large) count as nothing. On success the principal is returned
// with Addr set to addr.
func (t *Throttle) Do(ctx context.Context, user, addr string, verify func(context.Context) (Principal, error)) (Principal, error) {
	keys := make([]string, 0, 2)
	if user != "" {
		keys = append(keys, "user\x00"+user)
	}
	if a := addrKey(addr); a != "" {
		keys = append(keys, "addr\x00"+a)
	}
	wait, retry := t.admit(keys)
	if retry == 0 && wait > 0 {
		if err := t.cfg.Sleep(ctx, wait); err != nil {
			return Principal{}, fmt.Errorf("authentication delayed after repeated failures: %w", err)
		}
		_, retry = t.admit(keys) // locked out meanwhile by concurrent failures?
	}
	if retry > 0 {
		zerolog.Ctx(ctx).Info().Str("source", addr).Dur("retry_after", retry).Msg("authentication refused: locked out")
		return Principal{}, &ThrottledError{Wait: retry}
	}
	p, err := verify(ctx)
	switch {
	case err == nil:
		if user != "" {
			t.succeed(keys[0])
		}
		p.Addr = addr
		return p, nil
	case errors.Is(err, errs.ErrUnauthenticated):
		for _, l := range t.fail(keys) {
			zerolog.Ctx(ctx).Warn().Str("scope", l.scope).Str("source", addr).Dur("lockout", l.d).
				Msg("authentication locked out after repeated failures")
		}
	}
	return Principal{}, err
}

// addrKey is the address part of addr that a throttle counts: the IP, or
// the /64 of an IPv6 address.
func addrKey(addr string) string {
	if addr == "" {
		return ""
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		host = addr
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return host
	}
	ip = ip.Unmap()
	if ip.Is6() {
		if p, err := ip.Prefix(64); err == nil {
			return p.String()
		}
	}
	return ip.String()
}

// admit returns how long an attempt on keys must wait first, or, when one
// is locked out, how long until it is not.
func (t *Throttle) admit(keys []string) (wait, retry time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.cfg.Now()
	for _, k := range keys {
		el, ok := t.entries[k]
		if !ok {
			continue
		}
		e := el.Value.(*throttleEntry)
		t.prune(e, now)
		if now.Before(e.lockedUntil) {
			retry = max(retry, e.lockedUntil.Sub(now))
			continue
		}
		if t.idle(e, now) {
			t.remove(el)
			continue
		}
		if n := len(e.fails); n >= t.cfg.SlowAfter {
			wait = max(wait, min(t.cfg.Delay*time.Duration(n-t.cfg.SlowAfter+1), t.cfg.MaxDelay))
		}
	}
	return wait, retry
}

type lockout struct {
	scope string
	d     time.Duration
}

// fail records a failure on each key and returns the lockouts it started.
func (t *Throttle) fail(keys []string) []lockout {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.cfg.Now()
	var locked []lockout
	for _, k := range keys {
		e := t.entry(k, now)
		if now.Before(e.lockedUntil) {
			continue // already locked out by a concurrent attempt
		}
		e.fails = append(e.fails, now)
		e.lastFail = now
		if len(e.fails) < t.cfg.LockAfter {
			continue
		}
		d := t.cfg.Lockout
		for i := 0; i < e.level && d < t.cfg.MaxLockout; i++ {
			d *= 2
		}
		d = min(d, t.cfg.MaxLockout)
		e.lockedUntil, e.level, e.fails = now.Add(d), e.level+1, nil
		scope, _, _ := strings.Cut(k, "\x00")
		locked = append(locked, lockout{scope, d})
	}
	return locked
}

// succeed forgets key.
func (t *Throttle) succeed(key string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if el, ok := t.entries[key]; ok {
		t.remove(el)
	}
}

// entry returns key's entry, pruned and marked most recently failed,
// creating it (and evicting another when full) if needed.
func (t *Throttle) entry(key string, now time.Time) *throttleEntry {
	if el, ok := t.entries[key]; ok {
		t.lru.MoveToBack(el)
		e := el.Value.(*throttleEntry)
		t.prune(e, now)
		return e
	}
	if len(t.entries) >= t.cfg.MaxKeys {
		victim := t.lru.Front()
		for el := victim; el != nil; el = el.Next() {
			if !now.Before(el.Value.(*throttleEntry).lockedUntil) {
				victim = el
				break
			}
		}
		t.remove(victim)
	}
	e := &throttleEntry{key: key}
	t.entries[key] = t.lru.PushBack(e)
	return e
}

func (t *Throttle) remove(el *list.Element) {
	delete(t.entries, el.Value.(*throttleEntry).key)
	t.lru.Remove(el)
}

// prune drops failures older than the window, and the lockout level of a
// key quiet for Forget.
func (t *Throttle) prune(e *throttleEntry, now time.Time) {
	cut := now.Add(-t.cfg.Window)
	i := 0
	for i < len(e.fails) && !e.fails[i].After(cut) {
		i++
	}
	e.fails = e.fails[i:]
	if e.level > 0 && !now.Before(e.lockedUntil) && now.Sub(e.lastFail) >= t.cfg.Forget {
		e.level = 0
	}
}

// idle reports whether e holds nothing worth keeping.
func (t *Throttle) idle(e *throttleEntry, now time.Time) bool {
	return len(e.fails) == 0 && e.level == 0 && !now.Before(e.lockedUntil)
}

// tracked returns the number of keys held, for tests.
func (t *Throttle) tracked() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.entries)
}
