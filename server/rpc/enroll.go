package rpc

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	hostv1 "agentplane/gen/agentplane/host/v1"
)

// CreateJoinToken creates a single-use join token; the domain checks ADMIN.
// The token is in this answer only.
func (s *hostServer) CreateJoinToken(ctx context.Context, req *hostv1.CreateJoinTokenRequest) (*hostv1.CreateJoinTokenResponse, error) {
	if s.enroll == nil {
		return nil, status.Error(codes.Unimplemented, "enrollment is not configured")
	}
	ttl := req.GetTtl()
	if ttl != nil {
		if err := ttl.CheckValid(); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "ttl: %v", err)
		}
	}
	t, err := s.enroll.CreateJoinToken(ctx, req.GetHostName(), ttl.AsDuration())
	if err != nil {
		return nil, toStatus(ctx, err)
	}
	return &hostv1.CreateJoinTokenResponse{Token: t.Token, HostName: t.HostName, ExpireTime: ts(t.ExpireTime)}, nil
}

// RevokeHost revokes a host's agent identity; the domain checks ADMIN.
func (s *hostServer) RevokeHost(ctx context.Context, req *hostv1.RevokeHostRequest) (*hostv1.RevokeHostResponse, error) {
	if s.enroll == nil {
		return nil, status.Error(codes.Unimplemented, "enrollment is not configured")
	}
	h, err := s.enroll.RevokeHost(ctx, req.GetHostId())
	if err != nil {
		return nil, toStatus(ctx, err)
	}
	return &hostv1.RevokeHostResponse{Host: toHost(h)}, nil
}
