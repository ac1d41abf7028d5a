package enroll_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"agentplane/server/internal/auth"
	"agentplane/server/internal/enroll"
	"agentplane/server/internal/errs"
	"agentplane/server/internal/host"
	"agentplane/server/internal/pki"
	"agentplane/server/internal/store"
)

// sessions is a hand-written enroll.Sessions.
type sessions struct {
	mu      sync.Mutex
	revoked []int64
	kept    map[int64]string // RevokeCertificates: host id → the serial kept
	ended   []string         // EndCertificate: the serials
}

func (s *sessions) EndCertificate(_ int64, serial string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ended = append(s.ended, serial)
}

func (s *sessions) RevokeCertificates(id int64, keep string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.kept == nil {
		s.kept = map[int64]string{}
	}
	s.kept[id] = keep
}

func (s *sessions) Revoke(id int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.revoked = append(s.revoked, id)
}

type env struct {
	svc      *enroll.Service
	st       *store.Store
	ca       *pki.Authority
	sessions *sessions
	now      time.Time
	mu       sync.Mutex
}

func (e *env) clock() time.Time {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.now
}

func (e *env) advance(d time.Duration) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.now = e.now.Add(d)
}

func newEnv(t *testing.T) *env {
	t.Helper()
	dir := t.TempDir()
	st, err := store.Open(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	ca, err := pki.Load(pki.Config{Dir: dir, Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	e := &env{st: st, ca: ca, sessions: &sessions{}, now: time.Now()}
	e.svc = enroll.New(enroll.Config{Store: st, Signer: ca, Sessions: e.sessions, Log: zerolog.Nop(), Now: e.clock})
	return e
}

func as(role auth.Role) context.Context {
	return auth.WithPrincipal(context.Background(), auth.Principal{Username: "u-" + string(role), Roles: []auth.Role{role}})
}

var admin = as(auth.RoleAdmin)

func newCSR(t *testing.T) []byte {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func (e *env) token(t *testing.T, hostName string, ttl time.Duration) string {
	t.Helper()
	tok, err := e.svc.CreateJoinToken(admin, hostName, ttl)
	if err != nil {
		t.Fatal(err)
	}
	return tok.Token
}

func TestCreateJoinToken(t *testing.T) {
	e := newEnv(t)
	tok, err := e.svc.CreateJoinToken(admin, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := base64.RawURLEncoding.DecodeString(tok.Token)
	if err != nil || len(raw) != 32 {
		t.Fatalf("token %q: %d bytes, %v", tok.Token, len(raw), err)
	}
	if !tok.ExpireTime.Equal(e.clock().Add(time.Hour)) || tok.Creator != "u-ADMIN" || tok.ID == 0 {
		t.Errorf("token %+v", tok)
	}
	stored, err := e.st.GetJoinToken(context.Background(), enroll.HashToken(tok.Token))
	if err != nil || stored.ID != tok.ID || stored.Token != "" {
		t.Errorf("stored %+v, %v", stored, err)
	}
	bound, err := e.svc.CreateJoinToken(admin, "h1", 24*time.Hour)
	if err != nil || bound.HostName != "h1" || bound.Token == tok.Token {
		t.Errorf("bound token %+v, %v", bound, err)
	}
	tests := []struct {
		name string
		ctx  context.Context
		host string
		ttl  time.Duration
		want error
	}{
		{"host manager", as(auth.RoleHostManager), "", 0, errs.ErrPermissionDenied},
		{"no principal", context.Background(), "", 0, errs.ErrUnauthenticated},
		{"ttl over 24h", admin, "", 24*time.Hour + time.Second, errs.ErrInvalidArgument},
		{"negative ttl", admin, "", -time.Second, errs.ErrInvalidArgument},
		{"long name", admin, strings.Repeat("h", 256), 0, errs.ErrInvalidArgument},
	}
	for _, tt := range tests {
		if _, err := e.svc.CreateJoinToken(tt.ctx, tt.host, tt.ttl); !errors.Is(err, tt.want) {
			t.Errorf("%s: %v, want %v", tt.name, err, tt.want)
		}
	}
}

func TestEnroll(t *testing.T) {
	e := newEnv(t)
	tok := e.token(t, "", 0)
	id, certDER, caPEM, err := e.svc.Enroll(context.Background(), tok, "h1", newCSR(t), "10.0.0.1", "m-1", "10.9.9.9:1")
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(certDER)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := pki.HostID(cert); err != nil || got != id || cert.Subject.CommonName != "h1" {
		t.Errorf("certificate of host %d (%v), CN %q; enrolled host %d", got, err, cert.Subject.CommonName, id)
	}
	if string(caPEM) != string(e.ca.CAPEM()) {
		t.Error("CA bundle is not the CA's")
	}
	h, err := e.st.GetHost(context.Background(), id)
	if err != nil || h.Name != "h1" || h.InnerIP != "10.0.0.1" || h.MachineID != "m-1" || h.Status != host.StatusNew {
		t.Fatalf("host %+v, %v", h, err)
	}

	// Used: the same generic refusal as an unknown token, never echoing it.
	for name, token := range map[string]string{"used": tok, "unknown": "bm9wZQ", "empty": ""} {
		_, _, _, err := e.svc.Enroll(context.Background(), token, "h2", newCSR(t), "", "", "10.9.9.9:1")
		if !errors.Is(err, errs.ErrUnauthenticated) || err.Error() != enroll.ErrInvalidToken.Error() {
			t.Errorf("%s token: %v", name, err)
		}
		if token != "" && strings.Contains(err.Error(), token) {
			t.Errorf("%s token: the error repeats the token", name)
		}
	}

	// A bad CSR does not burn the token.
	tok2 := e.token(t, "", 0)
	if _, _, _, err := e.svc.Enroll(context.Background(), tok2, "h2", []byte("junk"), "", "", "10.9.9.9:1"); !errors.Is(err, errs.ErrInvalidArgument) {
		t.Errorf("bad CSR: %v", err)
	}
	if _, _, _, err := e.svc.Enroll(context.Background(), tok2, "", newCSR(t), "", "", "10.9.9.9:1"); !errors.Is(err, errs.ErrInvalidArgument) {
		t.Errorf("no host name: %v", err)
	}
	// Enrolling an existing host again (its state dir was lost) needs a
	// token bound to its name; it keeps its id, and revokes the old
	// certificate (its stream is ended).
	if _, _, _, err := e.svc.Enroll(context.Background(), tok2, "h1", newCSR(t), "10.0.0.9", "m-1", "10.9.9.9:1"); !errors.Is(err, errs.ErrPermissionDenied) || !strings.Contains(err.Error(), "bound to its name") {
		t.Errorf("re-enrolled with an unbound token: %v", err)
	}
	again, der, _, err := e.svc.Enroll(context.Background(), e.token(t, "h1", 0), "h1", newCSR(t), "10.0.0.9", "m-1", "10.9.9.9:1")
	if err != nil || again != id {
		t.Fatalf("re-enrolled as host %d (%v), want %d", again, err, id)
	}
	e.sessions.mu.Lock()
	if kept := e.sessions.kept[id]; kept != presented(t, der).Serial {
		t.Errorf("streams ended but the one of serial %q, want the new certificate's", kept)
	}
	e.sessions.mu.Unlock()
	if err := e.st.UseCertificate(context.Background(), id, presented(t, certDER).Serial, time.Time{}, time.Time{}, e.clock()); !errors.Is(err, enroll.ErrCertRevoked) {
		t.Errorf("the first certificate after re-enrollment: %v", err)
	}
}

// presented is the record of a certificate (DER) as the adapter reads it
// from a handshake.
func presented(t *testing.T, der []byte) enroll.Cert {
	t.Helper()
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	id, _ := pki.HostID(c)
	return enroll.Cert{Serial: pki.Serial(c), HostID: id, NotBefore: c.NotBefore, NotAfter: c.NotAfter}
}

func TestEnrollTokenExpiresAndBindsAName(t *testing.T) {
	e := newEnv(t)
	short := e.token(t, "", time.Minute)
	bound := e.token(t, "b", 0)
	e.advance(time.Minute)
	if _, _, _, err := e.svc.Enroll(context.Background(), short, "a", newCSR(t), "", "", "10.9.9.9:1"); !errors.Is(err, enroll.ErrInvalidToken) {
		t.Errorf("expired token: %v", err)
	}
	if _, _, _, err := e.svc.Enroll(context.Background(), bound, "a", newCSR(t), "", "", "10.9.9.9:1"); !errors.Is(err, errs.ErrPermissionDenied) {
		t.Errorf("token bound to b, used for a: %v", err)
	}
	if _, _, _, err := e.svc.Enroll(context.Background(), bound, "b", newCSR(t), "", "", "10.9.9.9:1"); err != nil {
		t.Errorf("token bound to b, used for b: %v", err)
	}
}

func TestConcurrentEnrollWithOneToken(t *testing.T) {
	e := newEnv(t)
	tok := e.token(t, "", 0)
	csr := newCSR(t)
	const n = 2
	errc := make(chan error, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			<-start
			_, _, _, err := e.svc.Enroll(context.Background(), tok, "same", csr, "", "", "10.9.9.9:1")
			errc <- err
		})
	}
	close(start)
	wg.Wait()
	close(errc)
	ok := 0
	for err := range errc {
		if err == nil {
			ok++
		} else if !errors.Is(err, enroll.ErrInvalidToken) {
			t.Errorf("loser: %v", err)
		}
	}
	if ok != 1 {
		t.Fatalf("%d of %d enrollments with one token succeeded", ok, n)
	}
}

func TestRevokeAndRenew(t *testing.T) {
	e := newEnv(t)
	id, first, _, err := e.svc.Enroll(context.Background(), e.token(t, "", 0), "h1", newCSR(t), "", "", "10.9.9.9:1")
	if err != nil {
		t.Fatal(err)
	}
	der, err := e.svc.Renew(context.Background(), presented(t, first), newCSR(t), "10.9.9.9:2")
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	if got, _ := pki.HostID(c); got != id || c.Subject.CommonName != "h1" {
		t.Errorf("renewed certificate of host %d %q", got, c.Subject.CommonName)
	}
	if _, err := e.svc.Renew(context.Background(), enroll.Cert{HostID: 999, Serial: "1"}, newCSR(t), ""); !errors.Is(err, errs.ErrPermissionDenied) {
		t.Errorf("renewing for a missing host: %v", err)
	}

	if _, err := e.svc.RevokeHost(as(auth.RoleHostManager), id); !errors.Is(err, errs.ErrPermissionDenied) {
		t.Errorf("revoke as HOST_MANAGER: %v", err)
	}
	if _, err := e.svc.RevokeHost(admin, 999); !errors.Is(err, errs.ErrNotFound) {
		t.Errorf("revoke a missing host: %v", err)
	}
	h, err := e.svc.RevokeHost(admin, id)
	if err != nil || h.RevokeTime.IsZero() {
		t.Fatalf("revoked %+v, %v", h, err)
	}
	e.sessions.mu.Lock()
	if len(e.sessions.revoked) != 1 || e.sessions.revoked[0] != id {
		t.Errorf("sessions revoked: %v", e.sessions.revoked)
	}
	e.sessions.mu.Unlock()
	if _, err := e.svc.Renew(context.Background(), presented(t, der), newCSR(t), ""); !errors.Is(err, errs.ErrPermissionDenied) {
		t.Errorf("renew of a revoked host: %v", err)
	}
	if _, _, _, err := e.svc.Enroll(context.Background(), e.token(t, "", 0), "h1", newCSR(t), "", "", "10.9.9.9:1"); !errors.Is(err, errs.ErrPermissionDenied) {
		t.Errorf("enroll of a revoked host: %v", err)
	}
}

func TestListAndRevokeCertificates(t *testing.T) {
	e := newEnv(t)
	id, der, _, err := e.svc.Enroll(context.Background(), e.token(t, "", 0), "h1", newCSR(t), "", "", "10.9.9.9:1")
	if err != nil {
		t.Fatal(err)
	}
	serial := presented(t, der).Serial
	if _, err := e.svc.ListCertificates(as(auth.RoleHostManager), id); !errors.Is(err, errs.ErrPermissionDenied) {
		t.Errorf("list as HOST_MANAGER: %v", err)
	}
	if _, err := e.svc.ListCertificates(admin, 999); !errors.Is(err, errs.ErrNotFound) {
		t.Errorf("list of a missing host: %v", err)
	}
	cs, err := e.svc.ListCertificates(admin, id)
	if err != nil || len(cs) != 1 || cs[0].Serial != serial || cs[0].Source != enroll.SourceEnroll || cs[0].SourceAddr != "10.9.9.9:1" {
		t.Fatalf("certificates %+v, %v", cs, err)
	}
	if _, err := e.svc.RevokeCertificate(as(auth.RoleHostManager), serial); !errors.Is(err, errs.ErrPermissionDenied) {
		t.Errorf("revoke as HOST_MANAGER: %v", err)
	}
	for _, bad := range []string{"", "zz", "-1", "0"} {
		if _, err := e.svc.RevokeCertificate(admin, bad); !errors.Is(err, errs.ErrInvalidArgument) {
			t.Errorf("revoke serial %q: %v", bad, err)
		}
	}
	if _, err := e.svc.RevokeCertificate(admin, "abc"); !errors.Is(err, errs.ErrNotFound) {
		t.Errorf("revoke an unknown serial: %v", err)
	}
	c, err := e.svc.RevokeCertificate(admin, "0x"+strings.ToUpper(serial))
	if err != nil || c.Serial != serial || c.RevokeTime.IsZero() || c.HostID != id {
		t.Fatalf("revoked %+v, %v", c, err)
	}
	e.sessions.mu.Lock()
	if len(e.sessions.ended) != 1 || e.sessions.ended[0] != serial {
		t.Errorf("streams ended: %v", e.sessions.ended)
	}
	e.sessions.mu.Unlock()
	if err := e.st.UseCertificate(context.Background(), id, serial, time.Time{}, time.Time{}, e.clock()); !errors.Is(err, enroll.ErrCertRevoked) {
		t.Errorf("the revoked certificate: %v", err)
	}
	// The host is not revoked: an unbound token enrolls it again, since it
	// holds no live certificate.
	if _, _, _, err := e.svc.Enroll(context.Background(), e.token(t, "", 0), "h1", newCSR(t), "", "", ""); err != nil {
		t.Errorf("enrolling again once the only certificate is revoked: %v", err)
	}
}
