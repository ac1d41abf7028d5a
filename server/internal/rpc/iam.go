package rpc

import (
	"context"
	"fmt"

	iamv1 "agentplane/gen/agentplane/iam/v1"
	"agentplane/server/internal/api"
	"agentplane/server/internal/audit"
	"agentplane/server/internal/auth"
	"agentplane/server/internal/errs"
)

// iamServer serves IamService; with no AccessKeys the access-key calls are
// UNAVAILABLE, and with Users that cannot create users (not an
// api.UserCreator) so is CreateUser.
type iamServer struct {
	iamv1.UnimplementedIamServiceServer
	keys  api.AccessKeys
	users api.UserCreator
}

var _ iamv1.IamServiceServer = (*iamServer)(nil)

func (s *iamServer) enabled() error {
	if s.keys == nil {
		return fmt.Errorf("access keys are not enabled on this server: %w", errs.ErrUnavailable)
	}
	return nil
}

// CreateUser creates a user (the user service checks that the caller is
// ADMIN and validates the values), as REST's POST /iam/users.
func (s *iamServer) CreateUser(ctx context.Context, req *iamv1.CreateUserRequest) (*iamv1.CreateUserResponse, error) {
	audit.SetTarget(ctx, "user:"+req.GetUsername()[:min(len(req.GetUsername()), 64)])
	if s.users == nil {
		return nil, toStatus(ctx, fmt.Errorf("creating users is not enabled on this server: %w", errs.ErrUnavailable))
	}
	roles := make([]auth.Role, 0, len(req.GetRoles()))
	for _, r := range req.GetRoles() {
		roles = append(roles, auth.Role(r))
	}
	u, err := s.users.CreateUser(ctx, req.GetUsername(), req.GetPassword(), roles)
	if err != nil {
		return nil, toStatus(ctx, err)
	}
	out := &iamv1.User{Id: u.ID, Username: u.Username, CreateTime: ts(u.CreateTime), Roles: make([]string, 0, len(u.Roles))}
	for _, r := range u.Roles {
		out.Roles = append(out.Roles, string(r))
	}
	return &iamv1.CreateUserResponse{User: out}, nil
}

func toAccessKey(k auth.AccessKey) *iamv1.AccessKey {
	return &iamv1.AccessKey{AccessKeyId: k.ID, Username: k.Username, CreateTime: ts(k.CreateTime), LastUsedTime: ts(k.LastUsedTime)}
}

// CreateAccessKey creates a key for the caller, or for another user (ADMIN);
// the answer carries the secret, which is never shown again.
func (s *iamServer) CreateAccessKey(ctx context.Context, req *iamv1.CreateAccessKeyRequest) (*iamv1.CreateAccessKeyResponse, error) {
	if err := s.enabled(); err != nil {
		return nil, toStatus(ctx, err)
	}
	k, secret, err := s.keys.CreateAccessKey(ctx, req.GetUsername())
	if err != nil {
		return nil, toStatus(ctx, err)
	}
	audit.SetTarget(ctx, k.ID)
	return &iamv1.CreateAccessKeyResponse{AccessKey: toAccessKey(k), Secret: secret}, nil
}

// ListAccessKeys lists keys without secrets: the caller's, one user's
// (ADMIN for another), or every user's for an ADMIN asking for none.
func (s *iamServer) ListAccessKeys(ctx context.Context, req *iamv1.ListAccessKeysRequest) (*iamv1.ListAccessKeysResponse, error) {
	if err := s.enabled(); err != nil {
		return nil, toStatus(ctx, err)
	}
	ks, err := s.keys.ListAccessKeys(ctx, req.GetUsername())
	if err != nil {
		return nil, toStatus(ctx, err)
	}
	out := &iamv1.ListAccessKeysResponse{AccessKeys: make([]*iamv1.AccessKey, 0, len(ks))}
	for _, k := range ks {
		out.AccessKeys = append(out.AccessKeys, toAccessKey(k))
	}
	return out, nil
}

// DeleteAccessKey deletes a key: the caller's own, or any for an ADMIN
// (another user's is NOT_FOUND without ADMIN).
func (s *iamServer) DeleteAccessKey(ctx context.Context, req *iamv1.DeleteAccessKeyRequest) (*iamv1.DeleteAccessKeyResponse, error) {
	if err := s.enabled(); err != nil {
		return nil, toStatus(ctx, err)
	}
	id := req.GetAccessKeyId()
	audit.SetTarget(ctx, id[:min(len(id), 64)])
	if id == "" {
		return nil, toStatus(ctx, fmt.Errorf("access_key_id is required: %w", errs.ErrInvalidArgument))
	}
	if err := s.keys.DeleteAccessKey(ctx, id); err != nil {
		return nil, toStatus(ctx, err)
	}
	return &iamv1.DeleteAccessKeyResponse{}, nil
}
