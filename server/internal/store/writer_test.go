package store_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"agentplane/server/internal/auth"
	"agentplane/server/internal/host"
	"agentplane/server/internal/task"
)

// Concurrent writes share transactions; one that fails (a duplicate user)
// is undone alone, the others commit, and a canceled caller's write is not
// made. Everything committed survives a reopen.
func TestGroupCommitIsolatesFailedWrites(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	ctx := context.Background()
	const n = 200
	var wg sync.WaitGroup
	errs := make([]error, 2*n)
	for i := range n {
		wg.Go(func() {
			_, errs[i] = s.CreateUser(ctx, auth.User{Username: fmt.Sprintf("user-%d", i), PasswordHash: "x", Roles: []auth.Role{auth.RoleAdmin}})
		})
		wg.Go(func() {
			_, errs[n+i] = s.CreateUser(ctx, auth.User{Username: "dup", PasswordHash: "x", Roles: []auth.Role{auth.RoleAdmin}})
		})
	}
	wg.Wait()
	dups := 0
	for i, err := range errs {
		switch {
		case i < n && err != nil:
			t.Fatalf("distinct user %d: %v", i, err)
		case i >= n && err == nil:
			dups++
		}
	}
	if dups != 1 {
		t.Fatalf("%d duplicate users created, want 1", dups)
	}
	canceled, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := s.CreateUser(canceled, auth.User{Username: "late", PasswordHash: "x", Roles: []auth.Role{auth.RoleAdmin}}); err == nil {
		t.Fatal("a write with a canceled context succeeded")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateUser(ctx, auth.User{Username: "closed", PasswordHash: "x"}); err == nil {
		t.Fatal("a write after Close succeeded")
	}
	s2 := open(t, dir)
	deadline, cancel2 := context.WithTimeout(ctx, 10*time.Second)
	defer cancel2()
	if c, err := s2.CountUsers(deadline); err != nil || c != n+1 {
		t.Fatalf("%d users after reopen (%v), want %d", c, err, n+1)
	}
}

// A write of several statements that fails half way (a task inserted, then
// its host's lock taken by another task) leaves nothing behind, while the
// writes grouped with it commit.
func TestGroupCommitUndoesAFailedWriteWhole(t *testing.T) {
	s := open(t, t.TempDir())
	ctx := context.Background()
	const hosts, tries = 20, 5
	ids := make([]int64, hosts)
	for i := range ids {
		h, err := s.RegisterHost(ctx, host.Host{Name: fmt.Sprintf("h%d", i)}, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		ids[i] = h.ID
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	created := map[int64]int{}
	for _, id := range ids {
		for range tries {
			wg.Go(func() {
				_, _, err := s.CreateTask(ctx, withSubtasks(plan(id)))
				mu.Lock()
				defer mu.Unlock()
				if err == nil {
					created[id]++
				}
			})
		}
	}
	wg.Wait()
	for _, id := range ids {
		if created[id] != 1 {
			t.Fatalf("host %d: %d tasks created, want 1", id, created[id])
		}
	}
	page, err := s.ListTasks(ctx, task.ListQuery{Page: 1, Size: 2000})
	if err != nil {
		t.Fatal(err)
	}
	if page.Total != hosts {
		t.Fatalf("%d tasks stored, want %d: the refused ones left rows behind", page.Total, hosts)
	}
	for _, tk := range page.Tasks {
		if len(tk.Subtasks) != 2 {
			t.Fatalf("task %d has %d subtasks", tk.ID, len(tk.Subtasks))
		}
	}
}
