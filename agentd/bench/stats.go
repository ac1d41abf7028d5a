package bench

import (
	"slices"
	"sync"
	"time"
)

// Latencies collects samples; safe for concurrent Add.
type Latencies struct {
	mu sync.Mutex
	d  []time.Duration
}

// Add records one sample.
func (l *Latencies) Add(d time.Duration) {
	l.mu.Lock()
	l.d = append(l.d, d)
	l.mu.Unlock()
}

// Len is the number of samples.
func (l *Latencies) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.d)
}

// Quantile returns the q-quantile (0..1) by nearest rank; 0 without samples.
func (l *Latencies) Quantile(q float64) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.d) == 0 {
		return 0
	}
	s := slices.Clone(l.d)
	slices.Sort(s)
	i := int(q*float64(len(s))+0.5) - 1
	return s[min(max(i, 0), len(s)-1)]
}

// Fill sets N, P50Ms and P99Ms of r.
func (l *Latencies) Fill(r *Row) {
	r.N, r.P50Ms, r.P99Ms = l.Len(), Ms(l.Quantile(0.50)), Ms(l.Quantile(0.99))
}
