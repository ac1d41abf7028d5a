package store_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"agentplane/server/internal/enroll"
	"agentplane/server/internal/errs"
	"agentplane/server/internal/host"
)

func TestJoinTokenIsUsedOnce(t *testing.T) {
	ctx := context.Background()
	s := open(t, t.TempDir())
	now := time.Now()
	insert := func(hash, name string, expires time.Time) {
		t.Helper()
		if _, err := s.InsertJoinToken(ctx, enroll.JoinToken{TokenHash: hash, HostName: name, Creator: "admin", CreateTime: now, ExpireTime: expires}); err != nil {
			t.Fatal(err)
		}
	}
	insert("h-any", "", now.Add(time.Hour))
	insert("h-bound", "b", now.Add(time.Hour))
	insert("h-expired", "", now.Add(-time.Second))
	if _, err := s.InsertJoinToken(ctx, enroll.JoinToken{TokenHash: "h-any", ExpireTime: now}); !errors.Is(err, errs.ErrConflict) {
		t.Errorf("a second token with one hash: %v", err)
	}

	// Racing enrollments with one token: exactly one wins.
	const n = 8
	var wg sync.WaitGroup
	errc := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			_, _, err := s.EnrollHost(ctx, "h-any", host.Host{Name: fmt.Sprintf("race-%d", i)}, now, issueAt(now))
			errc <- err
		})
	}
	wg.Wait()
	close(errc)
	won := 0
	for err := range errc {
		switch {
		case err == nil:
			won++
		case !errors.Is(err, enroll.ErrInvalidToken):
			t.Errorf("loser: %v", err)
		}
	}
	if won != 1 {
		t.Fatalf("%d enrollments won with one token", won)
	}
	used, err := s.GetJoinToken(ctx, "h-any")
	if err != nil || used.UsedTime.IsZero() || used.UsedHostID == 0 {
		t.Fatalf("used token %+v, %v", used, err)
	}
	p, _ := s.ListHosts(ctx, host.ListQuery{Page: 1, Size: 100})
	if p.Total != 1 || p.Hosts[0].ID != used.UsedHostID || p.Hosts[0].Status != host.StatusNew {
		t.Fatalf("hosts after the race: %+v", p.Hosts)
	}

	if _, _, err := s.EnrollHost(ctx, "h-expired", host.Host{Name: "x"}, now, issueAt(now)); !errors.Is(err, enroll.ErrInvalidToken) {
		t.Errorf("expired: %v", err)
	}
	if _, _, err := s.EnrollHost(ctx, "h-unknown", host.Host{Name: "x"}, now, issueAt(now)); !errors.Is(err, enroll.ErrInvalidToken) {
		t.Errorf("unknown: %v", err)
	}
	// A token bound to "b" refuses "a", and stays usable for "b".
	if _, _, err := s.EnrollHost(ctx, "h-bound", host.Host{Name: "a"}, now, issueAt(now)); !errors.Is(err, errs.ErrPermissionDenied) {
		t.Errorf("bound to another name: %v", err)
	}
	if h, _, err := s.EnrollHost(ctx, "h-bound", host.Host{Name: "b", InnerIP: "10.0.0.2"}, now, issueAt(now)); err != nil || h.Name != "b" || h.InnerIP != "10.0.0.2" {
		t.Errorf("bound to its name: %+v, %v", h, err)
	}
}

func TestRevokedHost(t *testing.T) {
	ctx := context.Background()
	s := open(t, t.TempDir())
	now := time.Now()
	h, err := s.RegisterHost(ctx, host.Host{Name: "h1"}, now)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.RevokeHost(ctx, 99, now); !errors.Is(err, errs.ErrNotFound) {
		t.Errorf("revoking a missing host: %v", err)
	}
	first := now.Add(-time.Minute).Truncate(time.Millisecond)
	r, err := s.RevokeHost(ctx, h.ID, first)
	if err != nil || !r.RevokeTime.Equal(first) {
		t.Fatalf("revoked: %v, %v", r, err)
	}
	if r, err = s.RevokeHost(ctx, h.ID, now); err != nil || !r.RevokeTime.Equal(first) {
		t.Fatalf("revoked again: revoke time %v (%v), want the first %v", r.RevokeTime, err, first)
	}
	if got, _ := s.GetHost(ctx, h.ID); !got.RevokeTime.Equal(first) {
		t.Errorf("GetHost revoke time %v", got.RevokeTime)
	}
	if _, err := s.RegisterHost(ctx, host.Host{Name: "h1"}, now); !errors.Is(err, errs.ErrPermissionDenied) {
		t.Errorf("a revoked host registered again: %v", err)
	}
	if _, err := s.InsertJoinToken(ctx, enroll.JoinToken{TokenHash: "t", ExpireTime: now.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.EnrollHost(ctx, "t", host.Host{Name: "h1"}, now, issueAt(now)); !errors.Is(err, errs.ErrPermissionDenied) {
		t.Errorf("a revoked host enrolled: %v", err)
	}
	if tok, _ := s.GetJoinToken(ctx, "t"); !tok.UsedTime.IsZero() {
		t.Error("a refused enrollment used the token")
	}
}

var serials atomic.Int64

// issueAt is an EnrollHost issue function: a certificate of a new serial,
// created at now, valid for an hour.
func issueAt(now time.Time) func(host.Host) (enroll.Cert, error) {
	return func(h host.Host) (enroll.Cert, error) {
		return enroll.Cert{Serial: fmt.Sprintf("%x", serials.Add(1)), HostID: h.ID, NotBefore: now, NotAfter: now.Add(time.Hour),
			Source: enroll.SourceEnroll, SourceAddr: "10.0.0.1:1", CreateTime: now}, nil
	}
}

// TestCertificatesTracked: an enrolled host's name needs a bound token,
// which revokes the old certificate; a renewed certificate retires the old
// one at its first use; a certificate issued before tracking is recorded at
// its first use, for a host with none tracked only.
func TestCertificatesTracked(t *testing.T) {
	ctx := context.Background()
	s := open(t, t.TempDir())
	now := time.Now().Truncate(time.Millisecond)
	insert := func(hash, name string) {
		t.Helper()
		if _, err := s.InsertJoinToken(ctx, enroll.JoinToken{TokenHash: hash, HostName: name, Creator: "admin", CreateTime: now, ExpireTime: now.Add(time.Hour)}); err != nil {
			t.Fatal(err)
		}
	}
	insert("t1", "")
	insert("t2", "")
	insert("t3", "h")
	h, revoked, err := s.EnrollHost(ctx, "t1", host.Host{Name: "h"}, now, issueAt(now))
	if err != nil || revoked {
		t.Fatalf("first enrollment: %v (revoked %v)", err, revoked)
	}
	certs, _ := s.ListCerts(ctx, h.ID)
	if len(certs) != 1 || certs[0].Source != enroll.SourceEnroll || certs[0].SourceAddr != "10.0.0.1:1" {
		t.Fatalf("certificates %+v", certs)
	}
	first := certs[0]
	use := func(c enroll.Cert, at time.Time) error {
		return s.UseCertificate(ctx, c.HostID, c.Serial, c.NotBefore, c.NotAfter, at)
	}
	if err := use(first, now); err != nil {
		t.Fatal(err)
	}
	// An unbound token cannot clone it, and stays unused.
	if _, _, err := s.EnrollHost(ctx, "t2", host.Host{Name: "h"}, now, issueAt(now)); !errors.Is(err, errs.ErrPermissionDenied) {
		t.Errorf("unbound token for an enrolled host: %v", err)
	}
	if tok, _ := s.GetJoinToken(ctx, "t2"); !tok.UsedTime.IsZero() {
		t.Error("the refused enrollment used the token")
	}
	// Renewal: both valid until the new one is used.
	later := now.Add(time.Minute)
	renewed := enroll.Cert{Serial: "r1", HostID: h.ID, NotBefore: later, NotAfter: later.Add(time.Hour), Source: enroll.SourceRenew, CreateTime: later}
	if err := s.RenewCert(ctx, first, renewed, later); err != nil {
		t.Fatal(err)
	}
	if err := use(first, later); err != nil {
		t.Errorf("the old certificate before the new one is used: %v", err)
	}
	if err := use(renewed, later.Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := use(first, later.Add(2*time.Second)); !errors.Is(err, enroll.ErrCertRevoked) {
		t.Errorf("the old certificate after the new one was used: %v", err)
	}
	if err := s.RenewCert(ctx, first, enroll.Cert{Serial: "r2", HostID: h.ID, CreateTime: later}, later); !errors.Is(err, enroll.ErrCertRevoked) {
		t.Errorf("renewing with a retired certificate: %v", err)
	}
	// A bound token re-enrolls and revokes.
	again := later.Add(time.Minute)
	if _, revoked, err := s.EnrollHost(ctx, "t3", host.Host{Name: "h"}, again, issueAt(again)); err != nil || !revoked {
		t.Fatalf("bound re-enrollment: %v (revoked %v)", err, revoked)
	}
	if err := use(renewed, again); !errors.Is(err, enroll.ErrCertRevoked) {
		t.Errorf("the certificate before re-enrollment: %v", err)
	}
	// Unknown serials: refused for a host with tracked certificates,
	// recorded as legacy for one without.
	if err := use(enroll.Cert{Serial: "forged", HostID: h.ID}, again); !errors.Is(err, enroll.ErrCertRevoked) {
		t.Errorf("an unknown serial: %v", err)
	}
	old, err := s.RegisterHost(ctx, host.Host{Name: "old"}, now)
	if err != nil {
		t.Fatal(err)
	}
	if err := use(enroll.Cert{Serial: "l1", HostID: old.ID}, now); err != nil {
		t.Errorf("a legacy certificate: %v", err)
	}
	if err := use(enroll.Cert{Serial: "l2", HostID: old.ID}, now); !errors.Is(err, enroll.ErrCertRevoked) {
		t.Errorf("a second legacy certificate: %v", err)
	}
	if certs, _ := s.ListCerts(ctx, old.ID); len(certs) != 1 || certs[0].Source != enroll.SourceLegacy {
		t.Errorf("legacy certificates %+v", certs)
	}
}
