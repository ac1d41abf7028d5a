package identity

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"agentplane/agentd/internal/backoff"
	"agentplane/agentd/internal/servers"
	agentv1 "agentplane/gen/agentplane/agent/v1"
)

// callTimeout bounds one Enroll or RenewCertificate call.
const callTimeout = 30 * time.Second

// Ensure makes sure there is a certificate that has not expired: the stored
// one, else one from enrolling with the join token, and that the host id in
// the state dir is the certificate's. (NotBefore is the server's business: it
// verifies with its own clock.) Enrollment retries network errors with
// Backoff until ctx is done (it then returns ctx's error). It returns an
// error wrapping ErrNoJoinToken when there is no certificate and no token,
// ErrExpired when the certificate expired and there is no token, and
// ErrRejected when the server refused the token. Call it before KeepRenewed,
// not concurrently.
func (id *Identity) Ensure(ctx context.Context) error {
	leaf := id.Certificate()
	switch {
	case leaf != nil && id.cfg.Now().Before(leaf.NotAfter):
		return id.syncHostID()
	case id.cfg.JoinToken != "":
		if leaf != nil {
			id.log.Warn().Time("not_after", leaf.NotAfter).Msg("client certificate expired; enrolling again")
		}
		return id.enroll(ctx)
	case leaf != nil:
		return expiredError(leaf)
	default:
		return fmt.Errorf("%w: no client certificate in %s; enroll with --join-token (or $AGENTPLANE_JOIN_TOKEN), a token an admin creates (REST POST /agent/joinTokens, gRPC HostService.CreateJoinToken)",
			ErrNoJoinToken, id.cfg.Dir)
	}
}

func expiredError(leaf *x509.Certificate) error {
	return fmt.Errorf("%w at %s: enroll again with a new join token (--join-token or $AGENTPLANE_JOIN_TOKEN)",
		ErrExpired, leaf.NotAfter.Format(time.RFC3339))
}

// syncHostID stores the certificate's host id in the state dir when it
// differs.
func (id *Identity) syncHostID() error {
	want := id.HostID()
	got, err := id.cfg.HostIDs.HostID()
	if err == nil && got == want {
		return nil
	}
	if err := id.cfg.HostIDs.SetHostID(want); err != nil {
		return fmt.Errorf("storing host id: %w", err)
	}
	return nil
}

// enroll gets a certificate with the join token over a TLS connection that
// verifies the server and presents no certificate, and installs it with a
// new key. It asks the servers of Server in turn (servers.Pool), paced as
// the stream is (backoff.Rounds): any server that answers enrolls; a
// refusal is final, as the servers share one store.
func (id *Identity) enroll(ctx context.Context) error {
	key, csr, err := newKeyAndCSR(id.cfg.HostName)
	if err != nil {
		return err
	}
	rnd := mrand.New(mrand.NewPCG(mrand.Uint64(), mrand.Uint64()))
	pool := servers.NewPool(servers.Config{Entries: id.entries, Creds: credentials.NewTLS(id.serverAuthTLS()),
		ServerName: id.cfg.ServerName, Resolver: id.cfg.Resolver, Rand: rnd, Log: id.log})
	defer pool.Close()
	req := &agentv1.EnrollRequest{JoinToken: id.cfg.JoinToken, HostName: id.cfg.HostName, Csr: csr,
		InnerIpAddress: id.cfg.InnerIP, MachineId: id.cfg.MachineID}
	id.log.Info().Str("server", id.cfg.Server).Str("host_name", id.cfg.HostName).Msg("enrolling")
	pace := backoff.Rounds{Backoff: id.cfg.Backoff}
	var resp *agentv1.EnrollResponse
	for {
		var sc servers.Conn
		resp, sc, err = id.enrollOnce(ctx, pool, req)
		if err == nil {
			id.log.Debug().Str("server", sc.Endpoint.String()).Msg("enrollment answered")
			break
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if s, ok := status.FromError(err); ok && refused(s.Code()) {
			return fmt.Errorf("%w: %s: %s", ErrRejected, s.Code(), s.Message())
		}
		delay := pace.Failed(max(sc.Servers, 1), rnd) // no server named: a whole round failed
		ev := id.log.Warn()
		if handshakeFailed(err) {
			ev = id.log.Error() // a wrong --ca-file or server name; retried, the server may be fixed
		}
		if sc.CC != nil {
			ev = ev.Str("server", sc.Endpoint.String())
		}
		ev.Err(err).Dur("retry_in", delay).Msg("cannot enroll")
		if !sleep(ctx, delay) {
			return ctx.Err()
		}
	}
	leaf, err := id.checkIssued(resp.GetCertificate(), key, resp.GetHostId())
	if err != nil {
		return fmt.Errorf("enrollment answer: %w", err)
	}
	if err := id.install(key, leaf); err != nil {
		return err
	}
	if err := id.syncHostID(); err != nil {
		return err
	}
	id.log.Info().Int64("host_id", resp.GetHostId()).Str("serial", leaf.SerialNumber.Text(16)).
		Time("not_after", leaf.NotAfter).Msg("enrolled")
	return nil
}

// enrollOnce asks the next server of pool to enroll, and returns the
// connection it asked (zero when no entry resolved).
func (id *Identity) enrollOnce(ctx context.Context, pool *servers.Pool, req *agentv1.EnrollRequest) (*agentv1.EnrollResponse, servers.Conn, error) {
	sc, err := pool.Next(ctx)
	if err != nil {
		return nil, sc, err
	}
	cctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	resp, err := agentv1.NewAgentServiceClient(sc.CC).Enroll(cctx, req)
	return resp, sc, err
}

// checkIssued parses an issued certificate and checks that it is for key,
// bound to hostID, and not expired.
func (id *Identity) checkIssued(der []byte, key *ecdsa.PrivateKey, hostID int64) (*x509.Certificate, error) {
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parsing certificate: %w", err)
	}
	if !matches(leaf, key) {
		return nil, errors.New("the certificate is not for the key of the request")
	}
	got, err := HostIDOf(leaf)
	if err != nil {
		return nil, err
	}
	if hostID <= 0 || got != hostID {
		return nil, fmt.Errorf("the certificate names host %d, want %d", got, hostID)
	}
	if !id.cfg.Now().Before(leaf.NotAfter) {
		return nil, fmt.Errorf("the certificate expired at %s", leaf.NotAfter.Format(time.RFC3339))
	}
	return leaf, nil
}

// newKeyAndCSR generates an ECDSA P-256 key and a CSR (DER) for it.
func newKeyAndCSR(hostName string) (*ecdsa.PrivateKey, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generating key: %w", err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: hostName},
	}, key)
	if err != nil {
		return nil, nil, fmt.Errorf("creating certificate request: %w", err)
	}
	return key, csr, nil
}

// refused reports whether a code is the server's final answer to an
// enrollment: retrying cannot help.
func refused(c codes.Code) bool {
	switch c {
	case codes.Unauthenticated, codes.PermissionDenied, codes.InvalidArgument, codes.FailedPrecondition,
		codes.NotFound, codes.AlreadyExists, codes.Unimplemented:
		return true
	}
	return false
}

// handshakeFailed reports whether err is a TLS handshake failure (grpc-go
// reports it only as text).
func handshakeFailed(err error) bool {
	return strings.Contains(err.Error(), "handshake failed")
}

// sleep waits d or until ctx is done; it reports whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
