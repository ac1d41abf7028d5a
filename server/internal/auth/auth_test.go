package auth

import (
	"context"
	"errors"
	"testing"

	"agentplane/server/internal/errs"
)

func TestHas(t *testing.T) {
	tests := []struct {
		held []Role
		want Role
		ok   bool
	}{
		{[]Role{RoleAdmin}, RoleHostManager, true},
		{[]Role{RoleAdmin}, RoleTaskViewer, true},
		{[]Role{RoleHostManager}, RoleHostManager, true},
		{[]Role{RoleHostManager}, RoleHostViewer, true},
		{[]Role{RoleHostManager}, RoleTaskViewer, false},
		{[]Role{RoleHostManager}, RoleAdmin, false},
		{[]Role{RoleHostViewer}, RoleHostManager, false},
		{[]Role{RoleTaskManager}, RoleTaskViewer, true},
		{[]Role{RoleTaskViewer, RoleHostViewer}, RoleHostViewer, true},
		{nil, RoleHostViewer, false},
	}
	for _, tt := range tests {
		t.Run(string(tt.want), func(t *testing.T) {
			if got := (Principal{Username: "u", Roles: tt.held}).Has(tt.want); got != tt.ok {
				t.Errorf("%v.Has(%s) = %v, want %v", tt.held, tt.want, got, tt.ok)
			}
		})
	}
}

func TestParseRole(t *testing.T) {
	for _, r := range Roles {
		if got, err := ParseRole(string(r)); err != nil || got != r {
			t.Errorf("ParseRole(%q) = %q, %v", r, got, err)
		}
	}
	for _, s := range []string{"", "admin", "ROOT"} {
		if _, err := ParseRole(s); !errors.Is(err, errs.ErrInvalidArgument) {
			t.Errorf("ParseRole(%q) error = %v, want ErrInvalidArgument", s, err)
		}
	}
}

func TestRequire(t *testing.T) {
	tests := []struct {
		name string
		ctx  context.Context
		role Role
		want error
	}{
		{"no principal", context.Background(), RoleHostViewer, errs.ErrUnauthenticated},
		{"lacks role", WithPrincipal(context.Background(), Principal{Username: "v", Roles: []Role{RoleHostViewer}}), RoleHostManager, errs.ErrPermissionDenied},
		{"holds role", WithPrincipal(context.Background(), Principal{Username: "m", Roles: []Role{RoleHostManager}}), RoleHostManager, nil},
		{"admin implies", WithPrincipal(context.Background(), Principal{Username: "a", Roles: []Role{RoleAdmin}}), RoleTaskManager, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Require(tt.ctx, tt.role)
			if tt.want == nil && err != nil || tt.want != nil && !errors.Is(err, tt.want) {
				t.Errorf("Require = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestCheckAgentToken(t *testing.T) {
	tests := []struct {
		want, got string
		ok        bool
	}{
		{"abc", "abc", true},
		{"abc", "abd", false},
		{"abc", "abcd", false},
		{"abc", "", false},
		{"", "", false},
	}
	for _, tt := range tests {
		if got := CheckAgentToken(tt.want, tt.got); got != tt.ok {
			t.Errorf("CheckAgentToken(%q, %q) = %v, want %v", tt.want, tt.got, got, tt.ok)
		}
	}
}
