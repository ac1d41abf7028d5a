// Package auth owns users, roles and credentials: who a caller is
// (authentication) and what they may do (authorization). Credentials are
// passwords (Service) and OCP access keys, whose signed requests it verifies
// (AccessKeyService, StringToSign); a Throttle slows down and locks out
// callers that keep failing. Authenticator decides who a caller is from the
// Credentials an adapter extracted at the edge; the adapter puts the
// Principal in the context, and domain services call Require.
package auth

import (
	"context"
	"fmt"
	"time"

	"agentplane/server/internal/errs"
)

// Role is a permission, as in OCP.
type Role string

// Roles. ADMIN implies every other; a MANAGER role implies its VIEWER.
const (
	RoleAdmin       Role = "ADMIN"
	RoleHostManager Role = "HOST_MANAGER"
	RoleHostViewer  Role = "HOST_VIEWER"
	RoleTaskManager Role = "TASK_MANAGER"
	RoleTaskViewer  Role = "TASK_VIEWER"
)

// Roles lists every role.
var Roles = []Role{RoleAdmin, RoleHostManager, RoleHostViewer, RoleTaskManager, RoleTaskViewer}

// ParseRole returns the role named s, or an ErrInvalidArgument error.
func ParseRole(s string) (Role, error) {
	for _, r := range Roles {
		if string(r) == s {
			return r, nil
		}
	}
	return "", fmt.Errorf("unknown role %q: %w", s, errs.ErrInvalidArgument)
}

// implies maps a role to the roles it also grants.
var implies = map[Role][]Role{
	RoleAdmin:       Roles,
	RoleHostManager: {RoleHostViewer},
	RoleTaskManager: {RoleTaskViewer},
}

// Principal is an authenticated caller.
type Principal struct {
	Username    string
	Roles       []Role
	AccessKeyID string // the access key that signed the request; empty for a password
	Addr        string // the caller's network address (ip:port), for audit and throttling
}

// Has reports whether the principal holds role r, directly or implied.
func (p Principal) Has(r Role) bool {
	for _, held := range p.Roles {
		if held == r {
			return true
		}
		for _, implied := range implies[held] {
			if implied == r {
				return true
			}
		}
	}
	return false
}

// User is a stored user. PasswordHash is a bcrypt hash; it never leaves the
// server.
type User struct {
	ID           int64
	Username     string
	PasswordHash string
	Roles        []Role
	CreateTime   time.Time
}

type principalKey struct{}

// WithPrincipal returns a context that carries p.
func WithPrincipal(ctx context.Context, p Principal) context.Context {
	return context.WithValue(ctx, principalKey{}, p)
}

// FromContext returns the principal ctx carries, if any.
func FromContext(ctx context.Context) (Principal, bool) {
	p, ok := ctx.Value(principalKey{}).(Principal)
	return p, ok
}

// Require returns nil when ctx carries a principal holding role r; an
// ErrUnauthenticated error when it carries none; an ErrPermissionDenied error
// naming the role otherwise.
func Require(ctx context.Context, r Role) error {
	p, ok := FromContext(ctx)
	if !ok {
		return fmt.Errorf("no credentials: %w", errs.ErrUnauthenticated)
	}
	if !p.Has(r) {
		return fmt.Errorf("user %q lacks role %s: %w", p.Username, r, errs.ErrPermissionDenied)
	}
	return nil
}
