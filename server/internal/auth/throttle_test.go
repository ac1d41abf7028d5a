package auth

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"agentplane/server/internal/audit"
	"agentplane/server/internal/errs"
)

// clock is a settable clock; sleeps are recorded and advance it.
type clock struct {
	mu     sync.Mutex
	now    time.Time
	sleeps []time.Duration
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func (c *clock) Sleep(ctx context.Context, d time.Duration) error {
	c.mu.Lock()
	c.sleeps = append(c.sleeps, d)
	c.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return err
	}
	c.Advance(d)
	return nil
}

func (c *clock) Sleeps() []time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]time.Duration(nil), c.sleeps...)
}

func newTestThrottle(c *clock) *Throttle {
	return NewThrottle(ThrottleConfig{Now: c.Now, Sleep: c.Sleep})
}

var (
	errWrong = fmt.Errorf("invalid username or password: %w", errs.ErrUnauthenticated)
	okAs     = func(name string) func(context.Context) (Principal, error) {
		return func(context.Context) (Principal, error) { return Principal{Username: name}, nil }
	}
	wrong = func(context.Context) (Principal, error) { return Principal{}, errWrong }
)

func TestThrottleSlowsThenLocksOut(t *testing.T) {
	c := &clock{now: sigNow}
	th := newTestThrottle(c)
	ctx := context.Background()
	const addr = "10.0.0.1:5555"

	for i := 1; i <= 10; i++ {
		if i > 1 {
			c.Advance(time.Second)
		}
		_, err := th.Do(ctx, "alice", fmt.Sprintf("10.0.0.1:%d", 5000+i), wrong) // the port does not matter
		if !errors.Is(err, errs.ErrUnauthenticated) {
			t.Fatalf("attempt %d: %v, want the verifier's error", i, err)
		}
	}
	// Attempts 6..10 waited: 500 ms, growing by 500 ms, at most 3 s.
	want := []time.Duration{500 * time.Millisecond, time.Second, 1500 * time.Millisecond, 2 * time.Second, 2500 * time.Millisecond}
	if got := c.Sleeps(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("delays = %v, want %v", got, want)
	}

	// Locked out now: refused without asking the verifier, even with the
	// right password, for a minute.
	called := false
	_, err := th.Do(ctx, "alice", addr, func(context.Context) (Principal, error) { called = true; return Principal{}, nil })
	var te *ThrottledError
	if !errors.As(err, &te) || !errors.Is(err, errs.ErrTooManyRequests) || called {
		t.Fatalf("after 10 failures: %v (verifier called: %v), want a ThrottledError", err, called)
	}
	if te.RetryAfter() != time.Minute {
		t.Errorf("retry after %v, want 1m", te.RetryAfter())
	}
	if err.Error() != "too many failed authentication attempts from this address (10); retry in 60 s" {
		t.Errorf("message %q", err)
	}

	// Only the pair is locked out: another user from anywhere, and alice
	// from another address, are not affected.
	if p, err := th.Do(ctx, "bob", "10.0.0.2:1", okAs("bob")); err != nil || p.Addr != "10.0.0.2:1" {
		t.Errorf("bob from elsewhere: %+v, %v", p, err)
	}
	if _, err := th.Do(ctx, "bob", addr, okAs("bob")); err != nil {
		t.Errorf("bob from alice's attacker's address: %v", err)
	}
	if _, err := th.Do(ctx, "alice", "10.0.0.2:1", okAs("alice")); err != nil {
		t.Errorf("alice from elsewhere: %v", err)
	}

	// The lockout expires.
	c.Advance(time.Minute)
	if _, err := th.Do(ctx, "alice", addr, okAs("alice")); err != nil {
		t.Fatalf("after the lockout: %v", err)
	}

	// The next lockout of the pair is twice as long, then capped at 15
	// minutes (the success above cleared alice's count, not the level of
	// the pair: a new pair entry starts at level 0).
	for range 10 {
		_, _ = th.Do(ctx, "alice", addr, wrong)
	}
	c.Advance(time.Minute)
	for _, want := range []time.Duration{2 * time.Minute, 4 * time.Minute, 8 * time.Minute, 15 * time.Minute, 15 * time.Minute} {
		for range 10 {
			_, _ = th.Do(ctx, "alice", addr, wrong)
		}
		_, err := th.Do(ctx, "alice", addr, wrong)
		if !errors.As(err, &te) || te.RetryAfter() != want {
			t.Fatalf("lockout %v, want %v", err, want)
		}
		c.Advance(want)
	}
	// An hour without failure forgets the doubling.
	c.Advance(time.Hour)
	for range 10 {
		_, _ = th.Do(ctx, "alice", addr, wrong)
	}
	if _, err := th.Do(ctx, "alice", addr, wrong); !errors.As(err, &te) || te.RetryAfter() != time.Minute {
		t.Fatalf("lockout after a quiet hour: %v, want 1m", err)
	}
}

// TestThrottleStrangerCannotLockOut: failures for a user from many other
// addresses only delay him (boundedly) from his own; failures for many
// names from one address (a NAT) refuse none of the users who did not
// fail from it; password failures never touch access-key signatures.
func TestThrottleStrangerCannotLockOut(t *testing.T) {
	c := &clock{now: sigNow}
	th := newTestThrottle(c)
	ctx := context.Background()
	refused := func(err error) bool { return errors.Is(err, errs.ErrTooManyRequests) }

	// A distributed guesser: 20 failures from each of 50 addresses.
	for a := range 50 {
		for range 20 {
			_, _ = th.Do(ctx, "admin", fmt.Sprintf("10.3.0.%d:1", a), wrong)
		}
	}
	n := len(c.Sleeps())
	if _, err := th.Do(ctx, "admin", "10.9.0.1:1", okAs("admin")); err != nil {
		t.Fatalf("the real admin from his address: %v", err)
	}
	if got := c.Sleeps()[n:]; len(got) != 1 || got[0] > 3*time.Second {
		t.Errorf("the real admin waited %v, want one delay of at most 3s", got)
	}
	// His success cleared the count: the next attempt is not delayed.
	n = len(c.Sleeps())
	if _, err := th.Do(ctx, "admin", "10.9.0.1:1", okAs("admin")); err != nil || len(c.Sleeps()) != n {
		t.Errorf("after a success: %v, %d delays", err, len(c.Sleeps())-n)
	}

	// One address, failures for 100 names: locked out for those names and
	// for unreadable credentials, not for a user with no failure from it.
	// (Over an hour's window: one at a time, slowed down to one per 3 s,
	// they would not reach the lockout within 5 minutes.)
	th = NewThrottle(ThrottleConfig{Now: c.Now, Sleep: c.Sleep, Window: time.Hour})
	const nat = "10.4.0.1:1"
	for i := range 100 {
		_, _ = th.Do(ctx, fmt.Sprint("guess", i), nat, wrong)
	}
	if _, err := th.Do(ctx, "guess3", nat, okAs("guess3")); !refused(err) {
		t.Errorf("a name that failed from the locked address: %v, want refused", err)
	}
	if _, err := th.Do(ctx, "", nat, wrong); !refused(err) {
		t.Errorf("unreadable credentials from the locked address: %v, want refused", err)
	}
	n = len(c.Sleeps())
	if _, err := th.Do(ctx, "carol", nat, okAs("carol")); err != nil {
		t.Errorf("carol behind the locked address: %v", err)
	}
	if len(c.Sleeps()) != n+1 {
		t.Errorf("carol behind the locked address was not slowed down: %d delays", len(c.Sleeps())-n)
	}

	// An access key from the locked address, and for a user locked out
	// there, is checked at once.
	called := false
	_, err := th.DoSigned(ctx, "AKGUESS3", nat, func(context.Context) (Principal, error) { called = true; return Principal{Username: "guess3"}, nil })
	if err != nil || !called {
		t.Errorf("a signature from the locked address: %v (verified: %v)", err, called)
	}
	// Bad signatures lock out their own (key, address) pair only.
	for range 10 {
		_, _ = th.DoSigned(ctx, "AKX", "10.5.0.1:1", wrong)
	}
	if _, err := th.DoSigned(ctx, "AKX", "10.5.0.1:1", okAs("x")); !refused(err) {
		t.Errorf("the key from the address that failed: %v, want refused", err)
	}
	if _, err := th.DoSigned(ctx, "AKX", "10.5.0.2:1", okAs("x")); err != nil {
		t.Errorf("the key from another address: %v", err)
	}
	if _, err := th.Do(ctx, "x", "10.5.0.1:1", okAs("x")); err != nil {
		t.Errorf("a password from the address whose signatures failed: %v", err)
	}
}

func TestThrottleSuccessResetsTheUser(t *testing.T) {
	c := &clock{now: sigNow}
	th := newTestThrottle(c)
	ctx := context.Background()
	for i := range 9 {
		_, _ = th.Do(ctx, "alice", fmt.Sprintf("10.0.1.%d:1", i), wrong)
	}
	if _, err := th.Do(ctx, "alice", "10.0.2.1:1", okAs("alice")); err != nil {
		t.Fatal(err)
	}
	n := len(c.Sleeps())
	if _, err := th.Do(ctx, "alice", "10.0.2.2:1", wrong); !errors.Is(err, errs.ErrUnauthenticated) {
		t.Fatalf("first failure after a success: %v", err)
	}
	if len(c.Sleeps()) != n {
		t.Error("the attempt after a success was delayed")
	}
}

func TestThrottleWindowSlides(t *testing.T) {
	c := &clock{now: sigNow}
	th := newTestThrottle(c)
	ctx := context.Background()
	for range 30 {
		_, err := th.Do(ctx, "alice", "10.0.0.1:1", wrong)
		if errors.Is(err, errs.ErrTooManyRequests) {
			t.Fatal("failures spread over more than the window locked the user out")
		}
		c.Advance(time.Minute) // 5 failures per window at most
	}
}

func TestThrottleOtherErrorsDoNotCount(t *testing.T) {
	c := &clock{now: sigNow}
	th := newTestThrottle(c)
	broken := func(context.Context) (Principal, error) { return Principal{}, errors.New("disk on fire") }
	for range 20 {
		_, _ = th.Do(context.Background(), "alice", "10.0.0.1:1", broken)
	}
	if th.tracked() != 0 || len(c.Sleeps()) != 0 {
		t.Errorf("store failures were counted: %d keys, %d delays", th.tracked(), len(c.Sleeps()))
	}
}

func TestThrottleDelayStopsWithTheContext(t *testing.T) {
	c := &clock{now: sigNow}
	th := newTestThrottle(c)
	for range 5 {
		_, _ = th.Do(context.Background(), "alice", "10.0.0.1:1", wrong)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	called := false
	_, err := th.Do(ctx, "alice", "10.0.0.1:1", func(context.Context) (Principal, error) { called = true; return Principal{}, nil })
	if !errors.Is(err, context.Canceled) || called {
		t.Fatalf("canceled while delayed: %v (verifier called: %v)", err, called)
	}
	// The real sleep too.
	start := time.Now()
	if err := sleepCtx(ctx, time.Hour); !errors.Is(err, context.Canceled) || time.Since(start) > time.Second {
		t.Fatalf("sleepCtx on a done context: %v after %v", err, time.Since(start))
	}
}

func TestThrottleMemoryIsBounded(t *testing.T) {
	c := &clock{now: sigNow}
	th := NewThrottle(ThrottleConfig{Now: c.Now, Sleep: c.Sleep, MaxKeys: 50})
	ctx := context.Background()
	// One locked-out address...
	for range 100 {
		_, _ = th.Do(ctx, "", "10.9.9.9:1", wrong)
	}
	// ...then a spray of usernames from many addresses.
	for i := range 1000 {
		_, _ = th.Do(ctx, fmt.Sprint("user", i), fmt.Sprintf("10.1.%d.%d:1", i/256, i%256), wrong)
		if n := th.tracked(); n > 50 {
			t.Fatalf("%d keys tracked, max 50", n)
		}
	}
	// The lockout survived the spray: unlocked keys are evicted first.
	if _, err := th.Do(ctx, "", "10.9.9.9:1", okAs("x")); !errors.Is(err, errs.ErrTooManyRequests) {
		t.Errorf("the locked-out address was evicted: %v", err)
	}
}

// TestThrottleLogsTheAccountAttacked: a lockout's log line names the user
// attacked, the address and the count, and the call's audit record the
// user.
func TestThrottleLogsTheAccountAttacked(t *testing.T) {
	var logs bytes.Buffer
	ctx := zerolog.New(&logs).WithContext(context.Background())
	ctx, note := audit.WithNote(ctx)
	c := &clock{now: sigNow}
	th := newTestThrottle(c)
	for range 11 {
		_, _ = th.Do(ctx, "admin", "10.0.0.1:1", wrong)
	}
	var line struct {
		Message  string `json:"message"`
		User     string `json:"user"`
		Source   string `json:"source"`
		Failures int    `json:"failures"`
	}
	found := false
	for _, l := range bytes.Split(logs.Bytes(), []byte("\n")) {
		if json.Unmarshal(l, &line) == nil && strings.Contains(line.Message, "locked out after") {
			found = line.User == "admin" && line.Source == "10.0.0.1:1" && line.Failures == 10
		}
	}
	if !found {
		t.Errorf("no lockout line naming admin, the address and 10 failures: %s", logs.String())
	}
	var e audit.Event
	note.Fill(&e)
	if e.Target != "user:admin" {
		t.Errorf("audit target %q, want user:admin", e.Target)
	}
}

func TestAddrKey(t *testing.T) {
	for in, want := range map[string]string{
		"10.0.0.1:443":                "10.0.0.1",
		"[::ffff:10.0.0.1]:1":         "10.0.0.1",
		"[2001:db8:1:2:3:4:5:6]:9":    "2001:db8:1:2::/64",
		"[2001:db8:1:2:ffff::1]:10":   "2001:db8:1:2::/64",
		"bufconn":                     "bufconn",
		"":                            "",
		"[fe80::1%eth0]:22":           "fe80::/64",
		"not an address at all:12345": "not an address at all",
	} {
		if got := addrKey(in); got != want {
			t.Errorf("addrKey(%q) = %q, want %q", in, got, want)
		}
	}
}
