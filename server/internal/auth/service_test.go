package auth

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/crypto/bcrypt"

	"agentplane/server/internal/errs"
)

func newTestService(t *testing.T) (*Service, *fakeStore) {
	t.Helper()
	store := newFakeStore()
	return newService(store, zerolog.Nop(), bcrypt.MinCost), store
}

func adminCtx() context.Context {
	return WithPrincipal(context.Background(), Principal{Username: "admin", Roles: []Role{RoleAdmin}})
}

func mustCreate(t *testing.T, s *Service, name, password string, roles ...Role) User {
	t.Helper()
	u, err := s.CreateUser(adminCtx(), name, password, roles)
	if err != nil {
		t.Fatalf("CreateUser(%q): %v", name, err)
	}
	return u
}

func TestAuthenticate(t *testing.T) {
	s, _ := newTestService(t)
	mustCreate(t, s, "alice", "correct horse", RoleHostManager)

	tests := []struct {
		name, user, password string
		wantErr              bool
	}{
		{"ok", "alice", "correct horse", false},
		{"wrong password", "alice", "wrong horse", true},
		{"unknown user", "bob", "correct horse", true},
		{"empty user", "", "correct horse", true},
		{"empty password", "alice", "", true},
		{"password too long", "alice", strings.Repeat("x", 100), true},
	}
	var msgs []string
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := s.Authenticate(context.Background(), tt.user, tt.password)
			if !tt.wantErr {
				if err != nil {
					t.Fatalf("Authenticate: %v", err)
				}
				if p.Username != "alice" || !slices.Equal(p.Roles, []Role{RoleHostManager}) {
					t.Errorf("principal = %+v", p)
				}
				return
			}
			if !errors.Is(err, errs.ErrUnauthenticated) {
				t.Fatalf("error = %v, want ErrUnauthenticated", err)
			}
			msgs = append(msgs, err.Error())
		})
	}
	// The answer must not say whether the user exists.
	for _, m := range msgs {
		if m != msgs[0] {
			t.Errorf("error messages differ: %q vs %q", m, msgs[0])
		}
	}
}

func TestAuthenticateStoreFailure(t *testing.T) {
	s, store := newTestService(t)
	store.failGet = fmt.Errorf("disk on fire")
	_, err := s.Authenticate(context.Background(), "alice", "correct horse")
	if err == nil || errors.Is(err, errs.ErrUnauthenticated) {
		t.Fatalf("error = %v, want a non-authentication error", err)
	}
}

func TestAuthenticateCache(t *testing.T) {
	s, store := newTestService(t)
	mustCreate(t, s, "alice", "correct horse", RoleHostViewer)
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	s.now = func() time.Time { return now }
	ctx := context.Background()

	auth := func(password string) error {
		t.Helper()
		_, err := s.Authenticate(ctx, "alice", password)
		return err
	}
	if err := auth("correct horse"); err != nil {
		t.Fatal(err)
	}
	base := store.lookupCount()
	if err := auth("correct horse"); err != nil {
		t.Fatal(err)
	}
	if got := store.lookupCount(); got != base {
		t.Errorf("cached call looked up the store (%d lookups, want %d)", got, base)
	}
	// A different password is never answered from the cache.
	if err := auth("wrong horse"); !errors.Is(err, errs.ErrUnauthenticated) {
		t.Errorf("wrong password after cache fill: %v", err)
	}
	// Failures are not cached: every wrong try goes to the store.
	before := store.lookupCount()
	_ = auth("wrong horse")
	if store.lookupCount() != before+1 {
		t.Errorf("failed verification was cached")
	}
	// After the TTL, the store is asked again.
	now = now.Add(cacheTTL + time.Second)
	before = store.lookupCount()
	if err := auth("correct horse"); err != nil {
		t.Fatal(err)
	}
	if store.lookupCount() != before+1 {
		t.Errorf("expired entry served from cache")
	}
}

func TestVerifyCacheBounded(t *testing.T) {
	c := newVerifyCache(4, time.Minute)
	now := time.Now()
	for i := range 10 {
		c.put(cacheKey(fmt.Sprint("u", i), "pw"), Principal{Username: fmt.Sprint("u", i)}, now)
		if c.len() > 4 {
			t.Fatalf("cache holds %d entries, max 4", c.len())
		}
	}
	if _, ok := c.get(cacheKey("u9", "pw"), now); !ok {
		t.Errorf("newest entry missing")
	}
}

func TestCreateUserValidation(t *testing.T) {
	long := strings.Repeat("a", 65)
	tests := []struct {
		name, user, password string
		roles                []Role
		want                 error
	}{
		{"ok", "bob", "password1", []Role{RoleTaskViewer}, nil},
		{"ok punctuation", "b.o_b-1", "password1", []Role{RoleTaskViewer}, nil},
		{"max username", strings.Repeat("a", 64), "password1", []Role{RoleTaskViewer}, nil},
		{"empty username", "", "password1", []Role{RoleTaskViewer}, errs.ErrInvalidArgument},
		{"long username", long, "password1", []Role{RoleTaskViewer}, errs.ErrInvalidArgument},
		{"bad char", "bob smith", "password1", []Role{RoleTaskViewer}, errs.ErrInvalidArgument},
		{"non-ascii", "böb", "password1", []Role{RoleTaskViewer}, errs.ErrInvalidArgument},
		{"short password", "carol", "short", []Role{RoleTaskViewer}, errs.ErrInvalidArgument},
		{"long password", "carol", strings.Repeat("p", 73), []Role{RoleTaskViewer}, errs.ErrInvalidArgument},
		{"no roles", "carol", "password1", nil, errs.ErrInvalidArgument},
		{"unknown role", "carol", "password1", []Role{"ROOT"}, errs.ErrInvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, _ := newTestService(t)
			_, err := s.CreateUser(adminCtx(), tt.user, tt.password, tt.roles)
			if tt.want == nil && err != nil || tt.want != nil && !errors.Is(err, tt.want) {
				t.Errorf("CreateUser = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestCreateUser(t *testing.T) {
	s, store := newTestService(t)
	u := mustCreate(t, s, "bob", "password1", RoleHostManager, RoleTaskViewer, RoleHostManager)
	if u.ID == 0 || u.CreateTime.IsZero() {
		t.Errorf("user lacks id or create time: %+v", u)
	}
	if u.PasswordHash != "" {
		t.Errorf("returned user carries a password hash")
	}
	if want := []Role{RoleHostManager, RoleTaskViewer}; !slices.Equal(u.Roles, want) {
		t.Errorf("roles = %v, want %v", u.Roles, want)
	}
	stored := store.users["bob"]
	if stored.PasswordHash == "" || strings.Contains(stored.PasswordHash, "password1") {
		t.Errorf("stored hash = %q", stored.PasswordHash)
	}
	if _, err := s.Authenticate(context.Background(), "bob", "password1"); err != nil {
		t.Errorf("new user cannot log in: %v", err)
	}
	if _, err := s.CreateUser(adminCtx(), "bob", "password2", []Role{RoleHostViewer}); !errors.Is(err, errs.ErrConflict) {
		t.Errorf("duplicate user: %v, want ErrConflict", err)
	}
}

func TestCreateUserPermission(t *testing.T) {
	tests := []struct {
		name string
		ctx  context.Context
		want error
	}{
		{"anonymous", context.Background(), errs.ErrUnauthenticated},
		{"host manager", WithPrincipal(context.Background(), Principal{Username: "m", Roles: []Role{RoleHostManager, RoleTaskManager}}), errs.ErrPermissionDenied},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, store := newTestService(t)
			// Permission is checked before validation: even a bad request is refused.
			for _, name := range []string{"eve", ""} {
				if _, err := s.CreateUser(tt.ctx, name, "password1", []Role{RoleAdmin}); !errors.Is(err, tt.want) {
					t.Errorf("CreateUser(%q) = %v, want %v", name, err, tt.want)
				}
			}
			if n, _ := store.CountUsers(context.Background()); n != 0 {
				t.Errorf("user created without permission")
			}
		})
	}
}
