package rpc

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	hostv1 "agentplane/gen/agentplane/host/v1"
	"agentplane/server/internal/enroll"
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

// ListHostCertificates lists a host's client certificates; the domain
// checks ADMIN.
func (s *hostServer) ListHostCertificates(ctx context.Context, req *hostv1.ListHostCertificatesRequest) (*hostv1.ListHostCertificatesResponse, error) {
	if s.enroll == nil {
		return nil, status.Error(codes.Unimplemented, "enrollment is not configured")
	}
	cs, err := s.enroll.ListCertificates(ctx, req.GetHostId())
	if err != nil {
		return nil, toStatus(ctx, err)
	}
	out := &hostv1.ListHostCertificatesResponse{Certificates: make([]*hostv1.Certificate, len(cs))}
	for i, c := range cs {
		out.Certificates[i] = toCertificate(c)
	}
	return out, nil
}

// RevokeCertificate revokes one client certificate; the domain checks
// ADMIN.
func (s *hostServer) RevokeCertificate(ctx context.Context, req *hostv1.RevokeCertificateRequest) (*hostv1.RevokeCertificateResponse, error) {
	if s.enroll == nil {
		return nil, status.Error(codes.Unimplemented, "enrollment is not configured")
	}
	c, err := s.enroll.RevokeCertificate(ctx, req.GetSerial())
	if err != nil {
		return nil, toStatus(ctx, err)
	}
	return &hostv1.RevokeCertificateResponse{Certificate: toCertificate(c)}, nil
}

func toCertificate(c enroll.Cert) *hostv1.Certificate {
	return &hostv1.Certificate{
		Serial: c.Serial, HostId: c.HostID, NotBefore: ts(c.NotBefore), NotAfter: ts(c.NotAfter), Source: c.Source,
		SourceAddress: c.SourceAddr, CreateTime: ts(c.CreateTime), FirstUsedTime: ts(c.FirstUsedTime), RevokeTime: ts(c.RevokeTime),
	}
}
