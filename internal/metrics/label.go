package metrics

import "sync"

// Other is the label value that stands for every value past a Bounded's
// limit.
const Other = "other"

// Bounded keeps a label's values bounded whatever its callers pass: the
// first Max distinct values are kept as they are, any later one becomes
// Other. Label values that come from fixed sets (task and subtask names,
// route templates) stay within Max; should a bug or a change feed it an
// unbounded value (an id, a raw path), the series stop growing at Max+1.
// Safe for concurrent use.
type Bounded struct {
	Max  int
	mu   sync.Mutex
	seen map[string]struct{}
}

// NewBounded returns a Bounded keeping max distinct values.
func NewBounded(max int) *Bounded { return &Bounded{Max: max, seen: map[string]struct{}{}} }

// Value returns v if it is one of the first Max distinct values seen, else
// Other.
func (b *Bounded) Value(v string) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.seen[v]; ok {
		return v
	}
	if len(b.seen) >= b.Max {
		return Other
	}
	b.seen[v] = struct{}{}
	return v
}
