package auth

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"
)

// authEvents counts what a Throttle reports.
type authEvents struct {
	mu     sync.Mutex
	counts map[string]int
}

func (e *authEvents) add(k string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.counts[k]++
}

func (e *authEvents) AuthFailed(method string) { e.add("failed " + method) }

func (e *authEvents) AuthThrottled(method string, refused bool) {
	e.add(fmt.Sprintf("throttled %s refused=%v", method, refused))
}

// Ten wrong passwords: ten failures, the last five delayed first; the
// eleventh attempt is refused. A wrong signature is counted apart.
func TestThrottleObserver(t *testing.T) {
	c := &clock{now: sigNow}
	ev := &authEvents{counts: map[string]int{}}
	th := NewThrottle(ThrottleConfig{Now: c.Now, Sleep: c.Sleep, Observer: ev})
	ctx := context.Background()
	for range 10 {
		c.Advance(time.Second)
		_, _ = th.Do(ctx, "alice", "10.0.0.1:1", wrong)
	}
	_, _ = th.Do(ctx, "alice", "10.0.0.1:1", okAs("alice"))
	_, _ = th.DoSigned(ctx, "AK1", "10.0.0.2:1", wrong)
	_, _ = th.Do(ctx, "bob", "10.0.0.3:1", okAs("bob"))
	want := map[string]int{
		"failed password":                  10,
		"throttled password refused=false": 5,
		"throttled password refused=true":  1,
		"failed access_key":                1,
	}
	if fmt.Sprint(ev.counts) != fmt.Sprint(want) {
		t.Errorf("observed %v, want %v", ev.counts, want)
	}
}
