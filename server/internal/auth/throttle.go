package auth

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"agentplane/server/internal/audit"
	"agentplane/server/internal/errs"
)

// ThrottleConfig tunes a Throttle; zero fields take the defaults.
type ThrottleConfig struct {
	// Window is how long a failure counts; default 5 minutes.
	Window time.Duration
	// SlowAfter failures of one identity (user or access key) from one
	// address in the window make every further attempt of that pair wait
	// first; default 5.
	SlowAfter int
	// LockAfter failures of one identity from one address in the window
	// lock that pair out (the identity from other addresses, and other
	// identities from that address, are not); default 10.
	LockAfter int
	// UserSlowAddrs: failures of one identity from this many distinct
	// addresses in the window make every attempt on it wait first, from
	// any address (a delay only, never a refusal); default 5.
	UserSlowAddrs int
	// AddrSlowAfter password failures from one address in the window, for
	// any names, make every password attempt from it wait first; default 20.
	AddrSlowAfter int
	// AddrLockAfter password failures from one address in the window lock
	// the address out for the names that failed from it and for
	// unreadable credentials; a name with no failure from it is only
	// delayed, so the users behind one NAT are not refused; default 100.
	AddrLockAfter int
	// Delay is the wait at the first slowed attempt; it grows by Delay
	// with each further failure, up to MaxDelay. Defaults 500 ms and 3 s.
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
	// Observer, when set, is told of failures and throttling (metrics).
	Observer Observer
}

// Observer is told what a Throttle sees, for metrics. method is
// "password" (Do) or "access_key" (DoSigned). Its methods must return at
// once.
type Observer interface {
	// AuthFailed: credentials were checked and were wrong.
	AuthFailed(method string)
	// AuthThrottled: an attempt was made to wait first (refused false) or
	// refused without its credentials checked (refused true).
	AuthThrottled(method string, refused bool)
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
	if c.UserSlowAddrs <= 0 {
		c.UserSlowAddrs = 5
	}
	if c.AddrSlowAfter <= 0 {
		c.AddrSlowAfter = 20
	}
	if c.AddrLockAfter <= 0 {
		c.AddrLockAfter = 100
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

// ThrottledError refuses an attempt from a locked-out (identity, address)
// pair or address. It is an errs.ErrTooManyRequests error and an
// errs.RetryAfterer.
type ThrottledError struct {
	Wait     time.Duration // until the lockout ends
	Failures int           // the failures that locked it out
}

func (e *ThrottledError) Error() string {
	return fmt.Sprintf("too many failed authentication attempts from this address (%d); retry in %d s", e.Failures, retrySeconds(e.Wait))
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
// authenticate, without letting a stranger lock anyone out. It counts
// failures over a sliding window on three kinds of key:
//
//   - an identity (a username, or an access key id) from one address (the
//     IP; an IPv6 address counts as its /64): from SlowAfter failures on,
//     every attempt of that pair waits first (Delay, growing, bounded,
//     given up when the call's context ends); at LockAfter the pair is
//     locked out for Lockout, doubling with each lockout up to
//     MaxLockout, and its attempts are refused without checking
//     credentials. Only the attacker's own address is refused.
//   - an identity over all addresses: failures from UserSlowAddrs
//     distinct addresses slow every attempt on it, from anywhere; never a
//     refusal, so a distributed guesser cannot lock the real user out.
//   - an address over all names, for passwords only: AddrSlowAfter
//     failures slow every password attempt from it; AddrLockAfter lock it
//     out for the names that failed from it (and for unreadable
//     credentials); a name with no failure from the address is only
//     delayed, so one NAT's users are not refused because of another.
//
// Access-key signatures (DoSigned) are counted apart from passwords: no
// password failure delays or refuses a signature. A success clears the
// identity's keys (the pair and its total), not the address's. Lockouts
// are logged, and the call's audit Note gets the identity attacked as its
// target. Memory is bounded by MaxKeys. It is safe for concurrent use.
type Throttle struct {
	cfg     ThrottleConfig
	mu      sync.Mutex
	entries map[string]*list.Element // of *throttleEntry
	lru     *list.List               // least recently failed first
}

type throttleEntry struct {
	key         string
	fails       []time.Time // within the window, oldest first
	addrs       []string    // an identity's total: the address of each failure
	lastFail    time.Time
	lockedUntil time.Time
	lockedAt    int // the failures that locked it out
	level       int // lockouts so far
}

// maxIdentityFails bounds the failures an identity's total remembers (the
// newest), so a flood from many addresses cannot grow one entry.
const maxIdentityFails = 256

// NewThrottle returns a Throttle.
func NewThrottle(cfg ThrottleConfig) *Throttle {
	cfg.setDefaults()
	return &Throttle{cfg: cfg, entries: map[string]*list.Element{}, lru: list.New()}
}

// attempt names the keys of one authentication attempt.
type attempt struct {
	what     string // "user" or "access_key_id": the log field of ident
	ident    string // the claimed identity; "" when none could be read
	source   string // ip:port as received
	pair     string // (identity, address) key; "" without both
	total    string // the identity over all addresses; "" without one
	addr     string // the address over all names (passwords); ""
	addrPart string // the address key part, for total's distinct count
}

func newAttempt(kind, ident, source string) attempt {
	at := attempt{what: "user", ident: ident, source: source, addrPart: addrKey(source)}
	if kind == "key" {
		at.what = "access_key_id"
	}
	if ident != "" {
		at.total = kind + "\x00" + ident
		if at.addrPart != "" {
			at.pair = kind + "@\x00" + ident + "\x00" + at.addrPart
		}
	}
	if kind == "user" && at.addrPart != "" {
		at.addr = "addr\x00" + at.addrPart
	}
	return at
}

// Do runs one password attempt: verify, under the throttle of the claimed
// user name user ("" when none could be read) and the source address addr
// (ip:port, "" when unknown). A locked-out pair or address gives a
// *ThrottledError without calling verify; a slowed-down one waits first
// (a context error if ctx ends meanwhile). An ErrUnauthenticated error from
// verify counts as a failure; other errors (a store failure, a body too
// large) count as nothing. On success the principal is returned with Addr
// set to addr.
func (t *Throttle) Do(ctx context.Context, user, addr string, verify func(context.Context) (Principal, error)) (Principal, error) {
	return t.do(ctx, newAttempt("user", user, addr), verify)
}

// DoSigned is Do for an access-key signature by access key id ak: counted
// apart from passwords, per (key, address) and per key, never refused or
// delayed because of password failures.
func (t *Throttle) DoSigned(ctx context.Context, ak, addr string, verify func(context.Context) (Principal, error)) (Principal, error) {
	return t.do(ctx, newAttempt("key", ak, addr), verify)
}

func (t *Throttle) do(ctx context.Context, at attempt, verify func(context.Context) (Principal, error)) (Principal, error) {
	wait, refused := t.admit(at)
	if refused == nil && wait > 0 {
		t.observe(at, false, true)
		if err := t.cfg.Sleep(ctx, wait); err != nil {
			return Principal{}, fmt.Errorf("authentication delayed after repeated failures: %w", err)
		}
		_, refused = t.admit(at) // locked out meanwhile by concurrent failures?
	}
	if refused != nil {
		t.observe(at, false, false)
		t.note(ctx, at)
		zerolog.Ctx(ctx).Info().Str(at.what, at.ident).Str("source", at.source).Int("failures", refused.Failures).
			Dur("retry_after", refused.Wait).Msg("authentication refused: locked out")
		return Principal{}, refused
	}
	p, err := verify(ctx)
	switch {
	case err == nil:
		t.succeed(at)
		p.Addr = at.source
		return p, nil
	case errors.Is(err, errs.ErrUnauthenticated):
		t.observe(at, true, false)
		t.note(ctx, at)
		for _, l := range t.fail(at) {
			zerolog.Ctx(ctx).Warn().Str(at.what, at.ident).Str("source", at.source).Str("scope", l.scope).
				Int("failures", l.failures).Dur("lockout", l.d).Msg("authentication locked out after repeated failures")
		}
	}
	return Principal{}, err
}

// observe tells the Observer of a failure (failed), a delay (delayed) or
// else a refusal.
func (t *Throttle) observe(at attempt, failed, delayed bool) {
	o := t.cfg.Observer
	if o == nil {
		return
	}
	method := "password"
	if at.what == "access_key_id" {
		method = "access_key"
	}
	if failed {
		o.AuthFailed(method)
		return
	}
	o.AuthThrottled(method, !delayed)
}

// note names the identity attacked in the call's audit record.
func (t *Throttle) note(ctx context.Context, at attempt) {
	if at.ident == "" {
		return
	}
	prefix := "user:"
	if at.what == "access_key_id" {
		prefix = "access_key:"
	}
	audit.SetTarget(ctx, prefix+at.ident)
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

// admit returns how long an attempt must wait first, or, when it is
// refused, why.
func (t *Throttle) admit(at attempt) (wait time.Duration, refused *ThrottledError) {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.cfg.Now()
	slow := func(over int) time.Duration { return min(t.cfg.Delay*time.Duration(over+1), t.cfg.MaxDelay) }
	refuse := func(e *throttleEntry) {
		if refused == nil || e.lockedUntil.Sub(now) > refused.Wait {
			refused = &ThrottledError{Wait: e.lockedUntil.Sub(now), Failures: e.lockedAt}
		}
	}
	pairFailed := false
	if e := t.live(at.pair, now); e != nil {
		pairFailed = true
		if now.Before(e.lockedUntil) {
			refuse(e)
		} else if n := len(e.fails); n >= t.cfg.SlowAfter {
			wait = max(wait, slow(n-t.cfg.SlowAfter))
		}
	}
	if e := t.live(at.total, now); e != nil {
		if d := distinct(e.addrs); d >= t.cfg.UserSlowAddrs {
			wait = max(wait, slow(d-t.cfg.UserSlowAddrs))
		}
	}
	if e := t.live(at.addr, now); e != nil {
		switch {
		case now.Before(e.lockedUntil) && (pairFailed || at.ident == ""):
			refuse(e)
		case now.Before(e.lockedUntil):
			wait = max(wait, t.cfg.MaxDelay)
		case len(e.fails) >= t.cfg.AddrSlowAfter:
			wait = max(wait, slow(len(e.fails)-t.cfg.AddrSlowAfter))
		}
	}
	return wait, refused
}

// live returns key's entry, pruned, or nil when there is none worth
// keeping (an idle one is dropped).
func (t *Throttle) live(key string, now time.Time) *throttleEntry {
	if key == "" {
		return nil
	}
	el, ok := t.entries[key]
	if !ok {
		return nil
	}
	e := el.Value.(*throttleEntry)
	t.prune(e, now)
	if t.idle(e, now) {
		t.remove(el)
		return nil
	}
	return e
}

// distinct counts the distinct values of addrs.
func distinct(addrs []string) int {
	seen := make(map[string]struct{}, len(addrs))
	for _, a := range addrs {
		seen[a] = struct{}{}
	}
	return len(seen)
}

type lockout struct {
	scope    string
	failures int
	d        time.Duration
}

// fail records a failure on the attempt's keys and returns the lockouts it
// started.
func (t *Throttle) fail(at attempt) []lockout {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.cfg.Now()
	var locked []lockout
	if at.total != "" {
		e := t.entry(at.total, now)
		e.fails, e.addrs, e.lastFail = append(e.fails, now), append(e.addrs, at.addrPart), now
		if n := len(e.fails); n > maxIdentityFails {
			e.fails, e.addrs = e.fails[n-maxIdentityFails:], e.addrs[n-maxIdentityFails:]
		}
	}
	for _, k := range []struct {
		key, scope string
		after      int
	}{{at.pair, at.what + " and address", t.cfg.LockAfter}, {at.addr, "address", t.cfg.AddrLockAfter}} {
		if k.key == "" {
			continue
		}
		e := t.entry(k.key, now)
		if now.Before(e.lockedUntil) {
			continue // already locked out by a concurrent attempt
		}
		e.fails = append(e.fails, now)
		e.lastFail = now
		if len(e.fails) < k.after {
			continue
		}
		d := t.cfg.Lockout
		for i := 0; i < e.level && d < t.cfg.MaxLockout; i++ {
			d *= 2
		}
		d = min(d, t.cfg.MaxLockout)
		e.lockedUntil, e.lockedAt, e.level, e.fails = now.Add(d), len(e.fails), e.level+1, nil
		locked = append(locked, lockout{k.scope, e.lockedAt, d})
	}
	return locked
}

// succeed forgets the identity's failures: the pair's and its total.
func (t *Throttle) succeed(at attempt) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, k := range []string{at.pair, at.total} {
		if el, ok := t.entries[k]; ok && k != "" {
			t.remove(el)
		}
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
	if e.addrs != nil {
		e.addrs = e.addrs[i:]
	}
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
