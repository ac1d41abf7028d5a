package auth

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/crypto/bcrypt"

	"agentplane/server/internal/errs"
)

// UserStore is what auth needs from the store.
type UserStore interface {
	// CreateUser stores u and returns it with ID and CreateTime set; an
	// ErrConflict error (wrapped) when the username exists.
	CreateUser(ctx context.Context, u User) (User, error)
	// UserByName returns the user named username; an ErrNotFound error
	// (wrapped) when there is none.
	UserByName(ctx context.Context, username string) (User, error)
	// CountUsers returns the number of stored users.
	CountUsers(ctx context.Context) (int64, error)
}

// Limits on credentials.
const (
	MaxUsernameLen = 64
	MinPasswordLen = 8
	MaxPasswordLen = 72 // bcrypt ignores bytes past 72
)

// Cache of successful verifications.
const (
	cacheTTL  = time.Minute
	cacheSize = 1024
)

// ErrBadCredentials is the one answer to a failed login: it does not say
// whether the user exists.
var ErrBadCredentials = errs.WithMessage(fmt.Errorf("invalid username or password: %w", errs.ErrUnauthenticated),
	"Invalid username or password.")

// Service authenticates users and manages them. It is safe for concurrent
// use.
type Service struct {
	store UserStore
	log   zerolog.Logger
	cache *verifyCache
	cost  int    // bcrypt cost
	dummy []byte // hash compared against for unknown users, so they cost as much as known ones
	now   func() time.Time
}

// NewService returns a Service over store.
func NewService(store UserStore, log zerolog.Logger) *Service {
	return newService(store, log, bcrypt.DefaultCost)
}

func newService(store UserStore, log zerolog.Logger, cost int) *Service {
	dummy, err := bcrypt.GenerateFromPassword([]byte("agentplane-dummy-password"), cost)
	if err != nil {
		panic(fmt.Sprintf("auth: hashing dummy password: %v", err)) // only on an invalid cost
	}
	return &Service{
		store: store,
		log:   log,
		cache: newVerifyCache(cacheSize, cacheTTL),
		cost:  cost,
		dummy: dummy,
		now:   time.Now,
	}
}

// Authenticate checks username and password and returns the caller's
// Principal. Wrong credentials give an ErrUnauthenticated error that does not
// say whether the user exists; a store failure is returned as is (wrapped).
// Successful checks are cached in memory for a minute (keyed by a hash, never
// the plaintext), so a user created or changed since then is seen within
// that time.
func (s *Service) Authenticate(ctx context.Context, username, password string) (Principal, error) {
	if username == "" || len(password) > MaxPasswordLen {
		return Principal{}, ErrBadCredentials
	}
	key := cacheKey(username, password)
	if p, ok := s.cache.get(key, s.now()); ok {
		return p, nil
	}
	u, err := s.store.UserByName(ctx, username)
	if errors.Is(err, errs.ErrNotFound) {
		_ = bcrypt.CompareHashAndPassword(s.dummy, []byte(password))
		return Principal{}, ErrBadCredentials
	}
	if err != nil {
		return Principal{}, fmt.Errorf("authenticating user: %w", err)
	}
	if bcrypt.CompareHashAndPassword([]byte(u.PasswordHash), []byte(password)) != nil {
		return Principal{}, ErrBadCredentials
	}
	p := Principal{Username: u.Username, Roles: slices.Clone(u.Roles)}
	s.cache.put(key, p, s.now())
	return p, nil
}

// CreateUser creates a user with a bcrypt hash of password. The caller in ctx
// must hold ADMIN (ErrUnauthenticated / ErrPermissionDenied otherwise). A
// username that is not 1..64 characters of [A-Za-z0-9_.-], a password that is
// not 8..72 bytes, or roles that are empty or unknown give an
// ErrInvalidArgument error; duplicate roles are dropped. An existing username
// gives an ErrConflict error. The returned user has no PasswordHash.
func (s *Service) CreateUser(ctx context.Context, username, password string, roles []Role) (User, error) {
	if err := Require(ctx, RoleAdmin); err != nil {
		return User{}, fmt.Errorf("creating user: %w", err)
	}
	if err := ValidateUsername(username); err != nil {
		return User{}, err
	}
	if err := ValidatePassword(password); err != nil {
		return User{}, err
	}
	roles, err := normalizeRoles(roles)
	if err != nil {
		return User{}, err
	}
	u, err := s.createUser(ctx, username, password, roles)
	if err != nil {
		return User{}, err
	}
	s.log.Info().Str("username", u.Username).Int64("user_id", u.ID).Msg("user created")
	return u, nil
}

func (s *Service) createUser(ctx context.Context, username, password string, roles []Role) (User, error) {
	hash, err := bcrypt.GenerateFromPassword([]byte(password), s.cost)
	if err != nil {
		return User{}, fmt.Errorf("hashing password: %w", err)
	}
	u, err := s.store.CreateUser(ctx, User{Username: username, PasswordHash: string(hash), Roles: roles})
	if err != nil {
		return User{}, fmt.Errorf("creating user %q: %w", username, err)
	}
	u.PasswordHash = ""
	return u, nil
}

// ValidateUsername returns an ErrInvalidArgument error unless name is 1..64
// characters of [A-Za-z0-9_.-].
func ValidateUsername(name string) error {
	if name == "" || len(name) > MaxUsernameLen {
		return fmt.Errorf("username must be 1..%d characters long: %w", MaxUsernameLen, errs.ErrInvalidArgument)
	}
	for _, c := range name {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '.' || c == '-'
		if !ok {
			return fmt.Errorf("username may only contain letters, digits, '_', '.' and '-': %w", errs.ErrInvalidArgument)
		}
	}
	return nil
}

// ValidatePassword returns an ErrInvalidArgument error unless password is
// 8..72 bytes long.
func ValidatePassword(password string) error {
	if len(password) < MinPasswordLen || len(password) > MaxPasswordLen {
		return fmt.Errorf("password must be %d..%d bytes long: %w", MinPasswordLen, MaxPasswordLen, errs.ErrInvalidArgument)
	}
	return nil
}

// normalizeRoles checks that roles is non-empty and every role is known, and
// drops duplicates, keeping the first occurrence's order.
func normalizeRoles(roles []Role) ([]Role, error) {
	if len(roles) == 0 {
		return nil, fmt.Errorf("at least one role is required: %w", errs.ErrInvalidArgument)
	}
	out := make([]Role, 0, len(roles))
	for _, r := range roles {
		if _, err := ParseRole(string(r)); err != nil {
			return nil, err
		}
		if !slices.Contains(out, r) {
			out = append(out, r)
		}
	}
	return out, nil
}
