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

// TestRoundsOneServerIsBackoff: with one server, Rounds waits exactly as
// Backoff does retry after retry (the same draws from the same source).
func TestRoundsOneServerIsBackoff(t *testing.T) {
	b := Backoff{Base: 10 * time.Millisecond, Cap: time.Second}
	r1, r2 := rand.New(rand.NewPCG(3, 4)), rand.New(rand.NewPCG(3, 4))
	rounds := Rounds{Backoff: b}
	for n := range 20 {
		if got, want := rounds.Failed(1, r1), b.Delay(n, r2); got != want {
			t.Fatalf("attempt %d: %v, want %v", n, got, want)
		}
	}
	rounds.Reset()
	if got, want := rounds.Failed(1, r1), b.Delay(0, r2); got != want {
		t.Fatalf("after Reset: %v, want %v", got, want)
	}
}

// TestRoundsSeveralServers: within a round the waits stay under Base; the
// ceiling grows only from round to round.
func TestRoundsSeveralServers(t *testing.T) {
	b := Backoff{Base: 10 * time.Millisecond, Cap: time.Second}
	rnd := rand.New(rand.NewPCG(5, 6))
	var rounds Rounds
	rounds.Backoff = b
	for round := range 8 {
		for i := range 3 {
			d := rounds.Failed(3, rnd)
			ceil := b.Base
			if i == 2 {
				ceil = b.Ceiling(round)
			}
			if d < 0 || d > ceil {
				t.Fatalf("round %d attempt %d: %v, outside [0, %v]", round, i, d, ceil)
			}
		}
	}
	if rounds.rounds != 8 || rounds.tried != 0 {
		t.Fatalf("rounds %d, tried %d", rounds.rounds, rounds.tried)
	}
}
