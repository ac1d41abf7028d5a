// Package enroll owns agent identity: the join tokens an admin creates, the
// enrollment that exchanges one (with a CSR) for a client certificate bound
// to the host, the renewal of that certificate, and the revocation of a
// host. It knows nothing of gRPC or HTTP; the CA is behind Signer and the
// live agent sessions behind Sessions.
package enroll

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"agentplane/server/internal/audit"
	"agentplane/server/internal/auth"
	"agentplane/server/internal/errs"
	"agentplane/server/internal/host"
	"agentplane/server/internal/pki"
)

// Join token lifetimes.
const (
	DefaultTokenTTL = time.Hour
	MaxTokenTTL     = 24 * time.Hour
)

// maxHostName bounds a host name (the hosts table's column).
const maxHostName = 255

// JoinToken is a single-use enrollment token. The secret itself is only in
// CreateJoinToken's answer; the store keeps its SHA-256 hash.
type JoinToken struct {
	ID         int64
	Token      string // the secret; set only in CreateJoinToken's answer
	TokenHash  string // hex SHA-256 of Token
	HostName   string // the only host name it enrolls; "" for any
	Creator    string
	CreateTime time.Time
	ExpireTime time.Time
	UsedTime   time.Time // zero until used
	UsedHostID int64
}

// Cert is a client certificate the CA issued for a host, as tracked: each
// is revocable by its serial, and the agent stream and renewal accept only
// a tracked certificate that is not revoked.
type Cert struct {
	Serial     string // lowercase hex, as pki.Serial
	HostID     int64
	NotBefore  time.Time
	NotAfter   time.Time
	Source     string // SourceEnroll, SourceRenew or SourceLegacy
	SourceAddr string // the address of the call that got it ("" for legacy)
	CreateTime time.Time
	// FirstUsedTime is when it first opened an agent stream or renewed
	// (zero until then): the host's older certificates are retired then.
	FirstUsedTime time.Time
	RevokeTime    time.Time // zero while valid
}

// Where a tracked certificate came from.
const (
	SourceEnroll = "enroll"
	SourceRenew  = "renew"
	// SourceLegacy: issued before certificates were tracked, recorded when
	// first presented (accepted only for a host with no tracked one).
	SourceLegacy = "legacy"
)

// ErrCertRevoked refuses a client certificate that was revoked (the host
// enrolled again with a token bound to its name, or renewed and used its
// new certificate) or that the server does not know for its host.
var ErrCertRevoked = fmt.Errorf("client certificate revoked or unknown: %w", errs.ErrPermissionDenied)

// ErrInvalidToken is the one answer for an unknown, expired or used join
// token: it says nothing about which, and never repeats the token.
var ErrInvalidToken = fmt.Errorf("join token is invalid, expired or already used: %w", errs.ErrUnauthenticated)

// Store is what the service keeps.
type Store interface {
	// InsertJoinToken stores t (by its hash) and returns its id.
	InsertJoinToken(ctx context.Context, t JoinToken) (int64, error)
	// EnrollHost, in one transaction, uses the join token of hash tokenHash
	// for r.Name (a compare-and-swap on its used time: it must be unused,
	// unexpired at `at`, and bound to r.Name or to no name), finds the host
	// named r.Name or creates it (status NEW), and records the certificate
	// issue returns for it. An existing host that may hold a live
	// certificate (a tracked one unrevoked and unexpired, or none tracked
	// at all) is enrolled only with a token bound to its name, and then
	// every earlier certificate of it is revoked at `at`; revoked says
	// whether any was. ErrInvalidToken for a token unknown, expired or
	// used; ErrPermissionDenied for one bound to another name, an unbound
	// one for a host that may hold a live certificate, or a revoked host.
	// On error nothing is written and the token stays unused.
	EnrollHost(ctx context.Context, tokenHash string, r host.Host, at time.Time, issue func(host.Host) (Cert, error)) (h host.Host, revoked bool, err error)
	// RenewCert records c, issued to the holder of the certificate of
	// serial presented, once presented is checked as UseCertificate does.
	// ErrCertRevoked when it is revoked or unknown.
	RenewCert(ctx context.Context, presented Cert, c Cert, at time.Time) error
	// ListCerts returns the certificates of a host, oldest first.
	ListCerts(ctx context.Context, hostID int64) ([]Cert, error)
	// RevokeCert sets the revoke time of the certificate of serial to at
	// unless it is already revoked, and returns it. ErrNotFound when there
	// is none.
	RevokeCert(ctx context.Context, serial string, at time.Time) (Cert, error)
	GetHost(ctx context.Context, id int64) (*host.Host, error)
	// RevokeHost sets the host's revoke time to at unless it is already
	// revoked, and returns the host. ErrNotFound when there is none.
	RevokeHost(ctx context.Context, id int64, at time.Time) (*host.Host, error)
}

// Signer is the CA (pki.Authority).
type Signer interface {
	// SignClient signs a CSR (DER) into a client certificate for the host;
	// ErrInvalidArgument for a bad CSR.
	SignClient(csrDER []byte, hostID int64, hostName string) ([]byte, error)
	// CAPEM is what an agent trusts to verify the server.
	CAPEM() []byte
}

// Sessions ends a revoked host's live agent stream (fleet.Fleet).
type Sessions interface {
	Revoke(hostID int64)
	// RevokeCertificates ends the host's live stream unless it was opened
	// with the certificate of serial keep.
	RevokeCertificates(hostID int64, keep string)
	// EndCertificate ends the host's live stream if it was opened with
	// the certificate of serial.
	EndCertificate(hostID int64, serial string)
}

// Config wires a Service. Store, Signer and Sessions are required.
type Config struct {
	Store    Store
	Signer   Signer
	Sessions Sessions
	Log      zerolog.Logger
	// Now is the clock; default time.Now.
	Now func() time.Time
}

// Service is the agent identity service.
type Service struct {
	cfg Config
}

// New returns a Service.
func New(cfg Config) *Service {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Service{cfg: cfg}
}

// CreateJoinToken creates a single-use join token valid for ttl (0: one
// hour; at most 24 hours), bound to hostName unless it is empty. The
// returned token's secret is shown only here. Needs ADMIN.
func (s *Service) CreateJoinToken(ctx context.Context, hostName string, ttl time.Duration) (JoinToken, error) {
	if err := auth.Require(ctx, auth.RoleAdmin); err != nil {
		return JoinToken{}, err
	}
	if ttl == 0 {
		ttl = DefaultTokenTTL
	}
	if ttl < time.Second || ttl > MaxTokenTTL {
		return JoinToken{}, fmt.Errorf("join token ttl %s: must be 1s..%s: %w", ttl, MaxTokenTTL, errs.ErrInvalidArgument)
	}
	if len(hostName) > maxHostName {
		return JoinToken{}, fmt.Errorf("host name of %d bytes: at most %d: %w", len(hostName), maxHostName, errs.ErrInvalidArgument)
	}
	var raw [32]byte
	_, _ = rand.Read(raw[:])
	p, _ := auth.FromContext(ctx)
	now := s.cfg.Now()
	t := JoinToken{
		Token: base64.RawURLEncoding.EncodeToString(raw[:]), HostName: hostName, Creator: p.Username,
		CreateTime: now, ExpireTime: now.Add(ttl),
	}
	t.TokenHash = HashToken(t.Token)
	id, err := s.cfg.Store.InsertJoinToken(ctx, t)
	if err != nil {
		return JoinToken{}, fmt.Errorf("storing a join token: %w", err)
	}
	t.ID = id
	audit.SetTarget(ctx, fmt.Sprintf("join_token:%d", id))
	ev := s.cfg.Log.Info().Int64("join_token_id", id).Str("creator", p.Username).Time("expire_time", t.ExpireTime)
	if hostName != "" {
		ev = ev.Str("host_name", hostName)
	}
	ev.Msg("join token created")
	return t, nil
}

// HashToken returns the hex SHA-256 of a join token, as stored.
func HashToken(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

// Enroll exchanges a join token and a CSR (DER) for the host's identity:
// the token is used (once: of concurrent calls with one token, one wins),
// the host named hostName is found or registered, and the CSR signed into a
// client certificate bound to it, tracked by its serial. It returns the
// host id, the certificate (DER) and the CA certificates (PEM) to trust for
// the server. A host that may hold a live certificate is enrolled only
// with a token bound to its name; its earlier certificates are then
// revoked and its live agent stream ended. addr is the caller's address,
// recorded with the certificate. ErrInvalidArgument for a missing name or
// a bad CSR (the token is not used); ErrInvalidToken (ErrUnauthenticated)
// for a token unknown, expired or used; ErrPermissionDenied for a token
// bound to another host name, an unbound token for an enrolled host, or a
// revoked host.
func (s *Service) Enroll(ctx context.Context, token, hostName string, csrDER []byte, innerIP, machineID, addr string) (hostID int64, certDER, caPEM []byte, err error) {
	audit.SetActor(ctx, "agent:"+hostName)
	if hostName == "" || len(hostName) > maxHostName {
		return 0, nil, nil, fmt.Errorf("host name must be 1..%d bytes: %w", maxHostName, errs.ErrInvalidArgument)
	}
	if token == "" {
		return 0, nil, nil, ErrInvalidToken
	}
	// Checked before the token is used, so a bad request does not burn it.
	if _, err := pki.ParseCSR(csrDER); err != nil {
		return 0, nil, nil, err
	}
	now := s.cfg.Now()
	var der []byte
	var c Cert
	issue := func(h host.Host) (Cert, error) {
		var err error
		der, c, err = s.sign(csrDER, h, SourceEnroll, addr, now)
		return c, err
	}
	h, revoked, err := s.cfg.Store.EnrollHost(ctx, HashToken(token), host.Host{Name: hostName, InnerIP: innerIP, MachineID: machineID}, now, issue)
	log := s.cfg.Log.With().Str("host_name", hostName).Str("source", addr).Logger()
	if err != nil {
		if errors.Is(err, errs.ErrUnauthenticated) || errors.Is(err, errs.ErrPermissionDenied) {
			log.Warn().Err(err).Msg("enrollment refused")
		}
		return 0, nil, nil, err
	}
	audit.SetHost(ctx, h.ID)
	audit.SetTarget(ctx, "certificate:"+c.Serial)
	if revoked {
		// After the store, as RevokeHost: a stream of an old certificate
		// that was checked before the write is ended here.
		s.cfg.Sessions.RevokeCertificates(h.ID, c.Serial)
		log.Warn().Int64("host_id", h.ID).Str("serial", c.Serial).Msg("agent enrolled again; its earlier certificates are revoked")
		return h.ID, der, s.cfg.Signer.CAPEM(), nil
	}
	log.Info().Int64("host_id", h.ID).Str("serial", c.Serial).Msg("agent enrolled")
	return h.ID, der, s.cfg.Signer.CAPEM(), nil
}

// sign signs csrDER for h and returns the certificate and its record.
func (s *Service) sign(csrDER []byte, h host.Host, source, addr string, now time.Time) ([]byte, Cert, error) {
	der, err := s.cfg.Signer.SignClient(csrDER, h.ID, h.Name)
	if err != nil {
		return nil, Cert{}, err
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, Cert{}, fmt.Errorf("reading the certificate just signed: %w", err)
	}
	return der, Cert{
		Serial: pki.Serial(leaf), HostID: h.ID, NotBefore: leaf.NotBefore, NotAfter: leaf.NotAfter,
		Source: source, SourceAddr: addr, CreateTime: now,
	}, nil
}

// Renew signs a new CSR (DER) for the host of the client certificate the
// caller presented (presented: its host id, serial and validity), and
// records the new certificate; the presented one stays valid until the new
// one is first used, so an agent that loses the answer is not locked out.
// addr is the caller's address. ErrPermissionDenied when the host is
// revoked or gone, or the presented certificate revoked or unknown
// (ErrCertRevoked); ErrInvalidArgument for a bad CSR.
func (s *Service) Renew(ctx context.Context, presented Cert, csrDER []byte, addr string) ([]byte, error) {
	hostID := presented.HostID
	audit.SetHost(ctx, hostID)
	h, err := s.cfg.Store.GetHost(ctx, hostID)
	if errors.Is(err, errs.ErrNotFound) {
		return nil, fmt.Errorf("certificate of host %d, which does not exist: %w", hostID, errs.ErrPermissionDenied)
	}
	if err != nil {
		return nil, err
	}
	audit.SetActor(ctx, "agent:"+h.Name)
	if !h.RevokeTime.IsZero() {
		return nil, fmt.Errorf("host %d is revoked: %w", hostID, errs.ErrPermissionDenied)
	}
	now := s.cfg.Now()
	der, c, err := s.sign(csrDER, *h, SourceRenew, addr, now)
	if err != nil {
		return nil, err
	}
	if err := s.cfg.Store.RenewCert(ctx, presented, c, now); err != nil {
		if errors.Is(err, errs.ErrPermissionDenied) {
			s.cfg.Log.Warn().Err(err).Int64("host_id", h.ID).Str("serial", presented.Serial).Str("source", addr).Msg("certificate renewal refused")
		}
		return nil, err
	}
	audit.SetTarget(ctx, "certificate:"+c.Serial)
	s.cfg.Log.Info().Int64("host_id", h.ID).Str("host_name", h.Name).Str("serial", c.Serial).
		Str("previous_serial", presented.Serial).Str("source", addr).Msg("agent certificate renewed")
	return der, nil
}

// RevokeHost refuses the host's agentd from now on: its revoke time is set
// (kept if already set), its live stream ends at once, and its next
// connection, renewal and enrollment are refused. It returns the host.
// Needs ADMIN; ErrNotFound when there is no such host.
func (s *Service) RevokeHost(ctx context.Context, hostID int64) (*host.Host, error) {
	if err := auth.Require(ctx, auth.RoleAdmin); err != nil {
		return nil, err
	}
	if hostID <= 0 {
		return nil, fmt.Errorf("host id %d: must be positive: %w", hostID, errs.ErrInvalidArgument)
	}
	audit.SetHost(ctx, hostID)
	h, err := s.cfg.Store.RevokeHost(ctx, hostID, s.cfg.Now())
	if err != nil {
		return nil, err
	}
	// After the store: a connection that read the host before the write has
	// its session installed by now (the fleet serialises the two), and is
	// ended here; any later one sees the revoke time.
	s.cfg.Sessions.Revoke(hostID)
	p, _ := auth.FromContext(ctx)
	s.cfg.Log.Warn().Int64("host_id", hostID).Str("host_name", h.Name).Str("by", p.Username).Msg("host revoked")
	return h, nil
}

// ListCertificates returns the client certificates issued to a host,
// oldest first. Needs ADMIN; ErrNotFound when there is no such host.
func (s *Service) ListCertificates(ctx context.Context, hostID int64) ([]Cert, error) {
	if err := auth.Require(ctx, auth.RoleAdmin); err != nil {
		return nil, err
	}
	if hostID <= 0 {
		return nil, fmt.Errorf("host id %d: must be positive: %w", hostID, errs.ErrInvalidArgument)
	}
	if _, err := s.cfg.Store.GetHost(ctx, hostID); err != nil {
		return nil, err
	}
	return s.cfg.Store.ListCerts(ctx, hostID)
}

// RevokeCertificate revokes one client certificate by its serial (hex, any
// case): a stream opened with it ends at once, and it is refused from then
// on. The host is not revoked. Needs ADMIN; ErrNotFound when the server
// issued no certificate of that serial.
func (s *Service) RevokeCertificate(ctx context.Context, serial string) (Cert, error) {
	if err := auth.Require(ctx, auth.RoleAdmin); err != nil {
		return Cert{}, err
	}
	n, ok := new(big.Int).SetString(strings.TrimPrefix(strings.ToLower(strings.TrimSpace(serial)), "0x"), 16)
	if !ok || n.Sign() <= 0 {
		return Cert{}, fmt.Errorf("certificate serial %.80q: want a positive hex number: %w", serial, errs.ErrInvalidArgument)
	}
	serial = n.Text(16)
	audit.SetTarget(ctx, "certificate:"+serial)
	c, err := s.cfg.Store.RevokeCert(ctx, serial, s.cfg.Now())
	if err != nil {
		return Cert{}, err
	}
	audit.SetHost(ctx, c.HostID)
	// After the store, as RevokeHost.
	s.cfg.Sessions.EndCertificate(c.HostID, serial)
	p, _ := auth.FromContext(ctx)
	s.cfg.Log.Warn().Int64("host_id", c.HostID).Str("serial", serial).Str("by", p.Username).Msg("certificate revoked")
	return c, nil
}
