package cluster

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// While a peer is slow, what waits for it is bounded (MaxPending ids, the
// rest dropped), merged, and sent in one call once the previous returns.
func TestNotifyQueueIsBounded(t *testing.T) {
	n := NewNotifier(NotifierConfig{Every: time.Millisecond, MaxPending: 5, Log: zerolog.Nop()})
	defer n.Close()
	release := make(chan struct{})
	var mu sync.Mutex
	var calls [][]int64
	n.send = func(_ context.Context, _ string, ids []int64) error {
		mu.Lock()
		calls = append(calls, ids)
		first := len(calls) == 1
		mu.Unlock()
		if first {
			<-release // the peer is slow
		}
		return nil
	}
	n.enqueue([]string{"b"}, []int64{1})
	deadline := time.Now().Add(5 * time.Second)
	for {
		mu.Lock()
		started := len(calls) == 1
		mu.Unlock()
		if started {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the first call did not start")
		}
		time.Sleep(time.Millisecond)
	}
	for i := range int64(100) {
		n.enqueue([]string{"b"}, []int64{10 + i%20, 10 + i%20})
	}
	n.mu.Lock()
	waiting := len(n.queues["b"].ids)
	n.mu.Unlock()
	if waiting != 5 {
		t.Fatalf("%d ids wait for the slow peer, want the bound (5)", waiting)
	}
	close(release)
	for {
		mu.Lock()
		done := len(calls) == 2
		var second []int64
		if done {
			second = calls[1]
		}
		mu.Unlock()
		if done {
			if !slices.Equal(second, []int64{10, 11, 12, 13, 14}) {
				t.Fatalf("second call %v, want the 5 ids kept, merged", second)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("no second call")
		}
		time.Sleep(time.Millisecond)
	}
}
