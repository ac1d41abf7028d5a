package backoff

import (
	"math/rand/v2"
	"testing"
	"time"
)

func TestBackoffFullJitter(t *testing.T) {
	b := Backoff{Base: 200 * time.Millisecond, Cap: 30 * time.Second}
	r := rand.New(rand.NewPCG(1, 2))
	for n := range 100 {
		ceil := min(b.Cap, b.Base<<min(n, 20))
		if got := b.Ceiling(n); got != ceil {
			t.Fatalf("Ceiling(%d) = %v, want %v", n, got, ceil)
		}
		seen := map[time.Duration]bool{}
		for range 50 {
			d := b.Delay(n, r)
			if d < 0 || d > ceil {
				t.Fatalf("Delay(%d) = %v, outside [0, %v]", n, d, ceil)
			}
			seen[d] = true
		}
		if len(seen) < 10 {
			t.Fatalf("Delay(%d) has little jitter: %d distinct values in 50", n, len(seen))
		}
	}
	if got := (Backoff{}).Ceiling(1000); got != DefaultCap {
		t.Fatalf("default cap = %v", got)
	}
}
