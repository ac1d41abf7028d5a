package auth

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"agentplane/server/errs"
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
	if err.Error() != "too many failed authentication attempts; retry in 60 s" {
		t.Errorf("message %q", err)
	}

	// Another user from another address is not affected; the same user
	// from another address, or another user from the same address, is.
	if p, err := th.Do(ctx, "bob", "10.0.0.2:1", okAs("bob")); err != nil || p.Addr != "10.0.0.2:1" {
		t.Errorf("bob from elsewhere: %+v, %v", p, err)
	}
	if _, err := th.Do(ctx, "alice", "10.0.0.2:1", okAs("alice")); !errors.Is(err, errs.ErrTooManyRequests) {
		t.Errorf("alice from elsewhere: %v, want throttled", err)
	}
	if _, err := th.Do(ctx, "bob", addr, okAs("bob")); !errors.Is(err, errs.ErrTooManyRequests) {
		t.Errorf("bob from the locked address: %v, want throttled", err)
	}

	// The lockout expires.
	c.Advance(time.Minute)
	if _, err := th.Do(ctx, "alice", addr, okAs("alice")); err != nil {
		t.Fatalf("after the lockout: %v", err)
	}

	// The next lockout of the address is twice as long, then capped at
	// 15 minutes.
	for _, want := range []time.Duration{2 * time.Minute, 4 * time.Minute, 8 * time.Minute, 15 * time.Minute, 15 * time.Minute} {
		for range 10 {
			_, _ = th.Do(ctx, "", addr, wrong)
		}
		_, err := th.Do(ctx, "", addr, wrong)
		if !errors.As(err, &te) || te.RetryAfter() != want {
			t.Fatalf("lockout %v, want %v", err, want)
		}
		c.Advance(want)
	}
	// An hour without failure forgets the doubling.
	c.Advance(time.Hour)
	for range 10 {
		_, _ = th.Do(ctx, "", addr, wrong)
	}
	if _, err := th.Do(ctx, "", addr, wrong); !errors.As(err, &te) || te.RetryAfter() != time.Minute {
		t.Fatalf("lockout after a quiet hour: %v, want 1m", err)
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
	for range 10 {
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

func TestThrottleLogsNoCredentials(t *testing.T) {
	var logs bytes.Buffer
	ctx := zerolog.New(&logs).WithContext(context.Background())
	c := &clock{now: sigNow}
	th := newTestThrottle(c)
	const typedPassword = "correct-horse-battery" // typed into the username field
	for range 11 {
		_, _ = th.Do(ctx, typedPassword, "10.0.0.1:1", wrong)
	}
	if bytes.Contains(logs.Bytes(), []byte(typedPassword)) {
		t.Errorf("the claimed username was logged: %s", logs.String())
	}
	if !bytes.Contains(logs.Bytes(), []byte("locked out")) {
		t.Errorf("no lockout log line: %s", logs.String())
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
