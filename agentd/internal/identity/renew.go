package identity

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"time"

	"google.golang.org/grpc"

	agentv1 "agentplane/gen/agentplane/agent/v1"
)

// Renewer is the server over the mTLS connection;
// agentv1.AgentServiceClient satisfies it.
type Renewer interface {
	RenewCertificate(ctx context.Context, in *agentv1.RenewCertificateRequest, opts ...grpc.CallOption) (*agentv1.RenewCertificateResponse, error)
}

var _ Renewer = agentv1.AgentServiceClient(nil)

// MaxCheckEvery is the longest time between two looks at the certificate's
// age.
const MaxCheckEvery = time.Hour

// Due reports whether a certificate should be renewed at now: less than a
// third of its lifetime is left.
func Due(leaf *x509.Certificate, now time.Time) bool {
	life := leaf.NotAfter.Sub(leaf.NotBefore)
	return leaf.NotAfter.Sub(now) < life/3
}

// checkEvery is how long KeepRenewed waits between looks at leaf:
// CheckEvery, else min(lifetime/10, MaxCheckEvery), at least a second.
func (id *Identity) checkEvery(leaf *x509.Certificate) time.Duration {
	if id.cfg.CheckEvery > 0 {
		return id.cfg.CheckEvery
	}
	return max(min(leaf.NotAfter.Sub(leaf.NotBefore)/10, MaxCheckEvery), time.Second)
}

// KeepRenewed renews the certificate through svc (the mTLS connection)
// whenever Due: it looks at once, then every CheckEvery. A renewal
// generates a new key, installs key and certificate together and makes
// them current for the next TLS handshake; connections and streams already
// open are not touched. A failed renewal is logged and retried with
// Backoff. When the certificate expires anyway, KeepRenewed enrolls again
// if there is a join token; otherwise it returns an error wrapping
// ErrExpired. It also returns enrollment's ErrRejected, and nil once ctx is
// done. Call it after Ensure succeeded.
func (id *Identity) KeepRenewed(ctx context.Context, svc Renewer) error {
	rnd := mrand.New(mrand.NewPCG(mrand.Uint64(), mrand.Uint64()))
	failures := 0
	for {
		leaf := id.Certificate()
		if leaf == nil {
			return errors.New("no client certificate: call Ensure first")
		}
		now := id.cfg.Now()
		switch {
		case !now.Before(leaf.NotAfter):
			if id.cfg.JoinToken == "" {
				return expiredError(leaf)
			}
			id.log.Warn().Time("not_after", leaf.NotAfter).Msg("client certificate expired before it was renewed; enrolling again")
			if err := id.enroll(ctx); err != nil {
				if ctx.Err() != nil {
					return nil //nolint:nilerr // stopping: nil once ctx is done, as documented; err is the cancel's
				}
				return err
			}
		case Due(leaf, now):
			if err := id.renew(ctx, svc); err != nil {
				if ctx.Err() != nil {
					return nil //nolint:nilerr // stopping: nil once ctx is done, as documented; err is the cancel's
				}
				wait := id.cfg.Backoff.Delay(failures, rnd)
				failures++
				id.log.Warn().Err(err).Time("not_after", leaf.NotAfter).Dur("retry_in", wait).Msg("cannot renew client certificate")
				if !sleep(ctx, wait) {
					return nil
				}
				continue
			}
			failures = 0
			if next := id.Certificate(); Due(next, id.cfg.Now()) {
				// Looked at again only after checkEvery: no renewal storm.
				id.log.Warn().Time("not_before", next.NotBefore).Time("not_after", next.NotAfter).
					Msg("the renewed client certificate is already due for renewal; the server issues short certificates")
			}
		}
		// After a renewal too: a new certificate is looked at only after
		// checkEvery, however short the server makes it.
		if !sleep(ctx, id.checkEvery(id.Certificate())) {
			return nil
		}
	}
}

// renew gets and installs a certificate for a new key.
func (id *Identity) renew(ctx context.Context, svc Renewer) error {
	hostID := id.HostID()
	key, csr, err := newKeyAndCSR(id.cfg.HostName)
	if err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	resp, err := svc.RenewCertificate(cctx, &agentv1.RenewCertificateRequest{Csr: csr})
	if err != nil {
		return err
	}
	leaf, err := id.checkIssued(resp.GetCertificate(), key, hostID)
	if err != nil {
		return fmt.Errorf("renewal answer: %w", err)
	}
	if err := id.install(key, leaf); err != nil {
		return err
	}
	id.log.Info().Int64("host_id", hostID).Str("serial", leaf.SerialNumber.Text(16)).
		Time("not_after", leaf.NotAfter).Msg("client certificate renewed")
	return nil
}
