package api

import (
	"context"
	"time"

	"agentplane/server/internal/auth"
	"agentplane/server/internal/enroll"
	"agentplane/server/internal/host"
)

// UserCreator creates users (auth.Service).
type UserCreator interface {
	CreateUser(ctx context.Context, username, password string, roles []auth.Role) (auth.User, error)
}

// Users checks passwords and creates users (auth.Service).
type Users interface {
	auth.PasswordChecker
	UserCreator
}

// AccessKeyManager creates, lists and deletes access keys
// (auth.AccessKeyService): the caller's own, or any user's for ADMIN.
type AccessKeyManager interface {
	// CreateAccessKey returns the key and its secret, shown once.
	CreateAccessKey(ctx context.Context, username string) (auth.AccessKey, string, error)
	ListAccessKeys(ctx context.Context, username string) ([]auth.AccessKey, error)
	DeleteAccessKey(ctx context.Context, id string) error
}

// AccessKeys verifies signed calls and manages keys (auth.AccessKeyService).
type AccessKeys interface {
	auth.SignatureVerifier
	AccessKeyManager
}

// Enrollment issues join tokens and revokes hosts (enroll.Service); ADMIN
// only.
type Enrollment interface {
	CreateJoinToken(ctx context.Context, hostName string, ttl time.Duration) (enroll.JoinToken, error)
	RevokeHost(ctx context.Context, hostID int64) (*host.Host, error)
}

// AgentEnrollment gives an agent its client certificate (enroll.Service):
// the first one for a join token, then renewals with the current one.
type AgentEnrollment interface {
	Enroll(ctx context.Context, token, hostName string, csrDER []byte, innerIP, machineID, addr string) (hostID int64, certDER, caPEM []byte, err error)
	Renew(ctx context.Context, presented enroll.Cert, csrDER []byte, addr string) ([]byte, error)
}

// Certificates lists and revokes a host's client certificates
// (enroll.Service); ADMIN only.
type Certificates interface {
	ListCertificates(ctx context.Context, hostID int64) ([]enroll.Cert, error)
	RevokeCertificate(ctx context.Context, serial string) (enroll.Cert, error)
}
