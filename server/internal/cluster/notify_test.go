package cluster_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"agentplane/server/internal/cluster"
)

// Task changes noted in a burst reach each live peer merged: every id
// arrives, in far fewer calls than changes, at most one call per Every.
func TestNotifyCoalesces(t *testing.T) {
	c := newCluster(t, "a", "b", "c")
	n := cluster.NewNotifier(cluster.NotifierConfig{Peers: c.nodes["a"].peers, Every: 20 * time.Millisecond, Log: zerolog.Nop()})
	defer n.Close()
	// a reads the registry at most once per ListEvery, from its start: the
	// burst goes to the peers a knows live, so it waits to know b and c.
	eventually(t, "a to see b and c live", func() bool {
		live, err := c.nodes["a"].peers.Live(context.Background())
		return err == nil && len(live) == 2
	})
	began := time.Now()
	const changes = 2000
	for i := range changes {
		n.Changed([]int64{int64(i % 500), int64(i % 500)}) // 500 distinct ids
	}
	burst := time.Since(began)
	for _, id := range []string{"b", "c"} {
		p := c.nodes[id]
		eventually(t, "every id on "+id, func() bool {
			p.mu.Lock()
			defer p.mu.Unlock()
			got := slices.Clone(p.notified)
			slices.Sort(got)
			return len(slices.Compact(got)) == 500
		})
		p.mu.Lock()
		calls, ids := p.calls, len(p.notified)
		p.mu.Unlock()
		// One call may start at once, then at most one per 20ms.
		if most := 2 + int((time.Since(began))/(20*time.Millisecond)); calls > most || calls >= changes/10 {
			t.Fatalf("%s got %d calls (%d ids) for %d changes over %s; want at most %d", id, calls, ids, changes, burst, most)
		}
	}
	if a := c.nodes["a"]; len(a.notified) != 0 {
		t.Fatal("a notified itself")
	}
}
