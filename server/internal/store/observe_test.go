package store_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"agentplane/server/internal/auth"
	"agentplane/server/internal/store"
)

// commitLog records what the writer reports.
type commitLog struct {
	mu             sync.Mutex
	groups, writes int
	failed         int
	took           time.Duration
}

func (c *commitLog) ObserveCommit(writes, failed int, took time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.groups++
	c.writes += writes
	c.failed += failed
	c.took += took
}

// Every write through the writer is reported once, in the group it was
// committed with, failures apart.
func TestCommitObserver(t *testing.T) {
	var obs commitLog
	s, err := store.OpenTest(t, t.TempDir(), store.WithCommitObserver(&obs))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	obs.mu.Lock()
	obs.groups, obs.writes, obs.failed = 0, 0, 0 // what opening wrote
	obs.mu.Unlock()
	const n = 50
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			_, _ = s.CreateUser(ctx, auth.User{Username: fmt.Sprintf("u%d", i), PasswordHash: "x", Roles: []auth.Role{auth.RoleAdmin}})
		})
	}
	wg.Wait()
	if _, err := s.CreateUser(ctx, auth.User{Username: "u0", PasswordHash: "x", Roles: []auth.Role{auth.RoleAdmin}}); err == nil {
		t.Fatal("a duplicate user was created")
	}
	obs.mu.Lock()
	defer obs.mu.Unlock()
	if obs.writes != n+1 || obs.failed != 1 {
		t.Errorf("observed %d writes, %d failed; want %d and 1", obs.writes, obs.failed, n+1)
	}
	if obs.groups < 2 || obs.groups > n+1 {
		t.Errorf("observed %d groups for %d writes", obs.groups, n+1)
	}
	if obs.took <= 0 {
		t.Errorf("observed commit time %s, want > 0", obs.took)
	}
}
