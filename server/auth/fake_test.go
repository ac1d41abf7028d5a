package auth

import (
	"context"
	"fmt"
	"sync"
	"time"

	"agentplane/server/errs"
)

// fakeStore is an in-memory UserStore that counts lookups.
type fakeStore struct {
	mu      sync.Mutex
	users   map[string]User
	nextID  int64
	lookups int
	failGet error // returned by UserByName when set
}

func newFakeStore() *fakeStore { return &fakeStore{users: map[string]User{}} }

func (f *fakeStore) CreateUser(_ context.Context, u User) (User, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.users[u.Username]; ok {
		return User{}, fmt.Errorf("user %q: %w", u.Username, errs.ErrConflict)
	}
	f.nextID++
	u.ID = f.nextID
	u.CreateTime = time.Now()
	f.users[u.Username] = u
	return u, nil
}

func (f *fakeStore) UserByName(_ context.Context, name string) (User, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lookups++
	if f.failGet != nil {
		return User{}, f.failGet
	}
	u, ok := f.users[name]
	if !ok {
		return User{}, fmt.Errorf("user %q: %w", name, errs.ErrNotFound)
	}
	return u, nil
}

func (f *fakeStore) CountUsers(context.Context) (int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return int64(len(f.users)), nil
}

func (f *fakeStore) lookupCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.lookups
}

var _ UserStore = (*fakeStore)(nil)
