package auth

import (
	"context"
	"fmt"
	"sync"
	"time"

	"agentplane/server/internal/errs"
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

// fakeKeys is an in-memory AccessKeyStore.
type fakeKeys struct {
	mu      sync.Mutex
	keys    []AccessKey // in creation order
	touched int
}

func (f *fakeKeys) CreateAccessKey(_ context.Context, k AccessKey, max int) (AccessKey, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, o := range f.keys {
		if o.ID == k.ID {
			return AccessKey{}, fmt.Errorf("access key %q: %w", k.ID, errs.ErrConflict)
		}
		if o.Username == k.Username {
			n++
		}
	}
	if n >= max {
		return AccessKey{}, fmt.Errorf("user %q has %d access keys: %w", k.Username, n, errs.ErrFailedPrecondition)
	}
	f.keys = append(f.keys, k)
	return k, nil
}

func (f *fakeKeys) AccessKeyByID(_ context.Context, id string) (AccessKey, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, k := range f.keys {
		if k.ID == id {
			return k, nil
		}
	}
	return AccessKey{}, fmt.Errorf("access key %q: %w", id, errs.ErrNotFound)
}

func (f *fakeKeys) ListAccessKeys(_ context.Context, username string) ([]AccessKey, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []AccessKey
	for _, k := range f.keys {
		if username == "" || k.Username == username {
			k.SealedSecret = ""
			out = append(out, k)
		}
	}
	return out, nil
}

func (f *fakeKeys) DeleteAccessKey(_ context.Context, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, k := range f.keys {
		if k.ID == id {
			f.keys = append(f.keys[:i], f.keys[i+1:]...)
			return nil
		}
	}
	return fmt.Errorf("access key %q: %w", id, errs.ErrNotFound)
}

func (f *fakeKeys) TouchAccessKey(_ context.Context, id string, at time.Time) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := range f.keys {
		if f.keys[i].ID == id {
			f.keys[i].LastUsedTime = at
			f.touched++
		}
	}
	return nil
}

// sealed returns the stored sealed secret of id.
func (f *fakeKeys) sealed(id string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, k := range f.keys {
		if k.ID == id {
			return k.SealedSecret
		}
	}
	return ""
}

var _ AccessKeyStore = (*fakeKeys)(nil)

// deleteUser removes a user, as an admin tool would.
func (f *fakeStore) deleteUser(name string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.users, name)
}
