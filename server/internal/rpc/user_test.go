package rpc

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"google.golang.org/grpc/codes"

	iamv1 "agentplane/gen/agentplane/iam/v1"
	"agentplane/server/internal/auth"
	"agentplane/server/internal/errs"
)

// creatingUsers are the fake users that can also create users, checking
// the caller's role as auth.Service does.
type creatingUsers struct{ apiUsers }

func (creatingUsers) CreateUser(ctx context.Context, username, password string, roles []auth.Role) (auth.User, error) {
	if err := auth.Require(ctx, auth.RoleAdmin); err != nil {
		return auth.User{}, fmt.Errorf("creating user: %w", err)
	}
	if password == "" {
		return auth.User{}, fmt.Errorf("password is required: %w", errs.ErrInvalidArgument)
	}
	return auth.User{ID: 9, Username: username, PasswordHash: "never-sent", Roles: roles, CreateTime: time.Unix(1, 0)}, nil
}

func TestCreateUser(t *testing.T) {
	ic := iamv1.NewIamServiceClient(serveBufconn(t, Config{Hosts: &apiHosts{}, Tasks: &apiTasks{}, Users: creatingUsers{}, Log: zerolog.Nop()}))
	r, err := ic.CreateUser(as(t, "admin"), &iamv1.CreateUserRequest{Username: "ops", Password: "ops-password", Roles: []string{"HOST_MANAGER"}})
	checkCode(t, err, codes.OK, "")
	if u := r.GetUser(); u.GetId() != 9 || u.GetUsername() != "ops" || !slices.Equal(u.GetRoles(), []string{"HOST_MANAGER"}) || u.GetCreateTime().GetSeconds() != 1 {
		t.Errorf("created %v", u)
	}
	_, err = ic.CreateUser(as(t, "viewer"), &iamv1.CreateUserRequest{Username: "x", Password: "x-password"})
	checkCode(t, err, codes.PermissionDenied, "")
	_, err = ic.CreateUser(as(t, "admin"), &iamv1.CreateUserRequest{Username: "x"})
	checkCode(t, err, codes.InvalidArgument, "password is required")

	// Users that cannot create users: UNAVAILABLE, not a panic.
	plain := iamv1.NewIamServiceClient(serveBufconn(t, Config{Hosts: &apiHosts{}, Tasks: &apiTasks{}, Users: apiUsers{}, Log: zerolog.Nop()}))
	_, err = plain.CreateUser(as(t, "admin"), &iamv1.CreateUserRequest{Username: "x", Password: "x-password"})
	checkCode(t, err, codes.Unavailable, "not enabled")
}
