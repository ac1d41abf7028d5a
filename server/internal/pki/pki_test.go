package pki

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"agentplane/server/internal/errs"
)

func load(t *testing.T, cfg Config) *Authority {
	t.Helper()
	cfg.Log = zerolog.Nop()
	a, err := Load(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func mode(t *testing.T, path string) os.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

func read(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestLoadCreatesThenReuses(t *testing.T) {
	dir := t.TempDir()
	hosts := []string{"localhost", "127.0.0.1", "::1", "agentplane.example", "10.1.2.3", "0.0.0.0", "[::]", "[fe80::1%eth0]"}
	a := load(t, Config{Dir: dir, Hosts: hosts})

	for file, want := range map[string]os.FileMode{CACertFile: 0o644, CAKeyFile: 0o600, ServerCertFile: 0o600, ServerKeyFile: 0o600} {
		if got := mode(t, filepath.Join(dir, file)); got != want {
			t.Errorf("%s mode %v, want %v", file, got, want)
		}
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 4 {
		t.Errorf("data dir holds %d entries, want the 4 files (no temporary left)", len(entries))
	}
	ca := a.CA()
	if !ca.IsCA || ca.PublicKeyAlgorithm != x509.ECDSA || ca.PublicKey.(*ecdsa.PublicKey).Curve != elliptic.P256() {
		t.Errorf("CA: IsCA %v, key %v", ca.IsCA, ca.PublicKeyAlgorithm)
	}
	if d := ca.NotAfter.Sub(ca.NotBefore); d < CAValidity || d > CAValidity+time.Hour {
		t.Errorf("CA valid for %s", d)
	}
	leaf := a.ServerCertificate().Leaf
	if d := leaf.NotAfter.Sub(leaf.NotBefore); d < ServerValidity || d > ServerValidity+time.Hour {
		t.Errorf("server certificate valid for %s", d)
	}
	for _, h := range []string{"localhost", "127.0.0.1", "::1", "agentplane.example", "10.1.2.3", "fe80::1"} {
		if err := leaf.VerifyHostname(h); err != nil {
			t.Errorf("server certificate does not cover %s: %v", h, err)
		}
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: a.ClientCAs(), DNSName: "agentplane.example"}); err != nil {
		t.Errorf("server certificate does not verify against the CA: %v", err)
	}
	fp := a.Fingerprint()
	if len(fp) != 32*3-1 || strings.ToUpper(fp) != fp || strings.Count(fp, ":") != 31 {
		t.Errorf("fingerprint %q", fp)
	}

	caPEM, serverPEM := read(t, filepath.Join(dir, CACertFile)), read(t, filepath.Join(dir, ServerCertFile))
	b := load(t, Config{Dir: dir, Hosts: hosts})
	if b.Fingerprint() != fp || !bytes.Equal(b.CAPEM(), caPEM) {
		t.Error("the CA changed on the second load")
	}
	if !bytes.Equal(read(t, filepath.Join(dir, ServerCertFile)), serverPEM) {
		t.Error("the server certificate was regenerated though nothing changed")
	}

	// A host it lacks: a new server certificate from the same CA.
	c := load(t, Config{Dir: dir, Hosts: append(hosts, "new.example")})
	if c.Fingerprint() != fp {
		t.Error("the CA changed")
	}
	if err := c.ServerCertificate().Leaf.VerifyHostname("new.example"); err != nil {
		t.Errorf("regenerated certificate: %v", err)
	}
	if mode(t, filepath.Join(dir, ServerKeyFile)) != 0o600 {
		t.Error("regenerated key is not 0600")
	}
}

func TestLoadRegeneratesAnExpiredServerCertificate(t *testing.T) {
	dir := t.TempDir()
	past := time.Now().Add(-2 * ServerValidity)
	old := load(t, Config{Dir: dir, Hosts: []string{"localhost"}, Now: func() time.Time { return past }})
	a := load(t, Config{Dir: dir, Hosts: []string{"localhost"}})
	if a.Fingerprint() != old.Fingerprint() {
		t.Error("the CA changed")
	}
	if leaf := a.ServerCertificate().Leaf; !leaf.NotAfter.After(time.Now().Add(ServerValidity - time.Hour)) {
		t.Errorf("server certificate still ends %s", leaf.NotAfter)
	}
}

func TestLoadRefusesHalfACA(t *testing.T) {
	dir := t.TempDir()
	load(t, Config{Dir: dir})
	if err := os.Remove(filepath.Join(dir, CAKeyFile)); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(Config{Dir: dir, Log: zerolog.Nop()}); err == nil || !strings.Contains(err.Error(), CAKeyFile) {
		t.Fatalf("Load with ca.crt but no ca.key = %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, CAKeyFile)); err == nil {
		t.Fatal("Load wrote a new CA key next to the old certificate")
	}
}

func TestUserProvidedMaterial(t *testing.T) {
	own := t.TempDir()
	mine := load(t, Config{Dir: own, Hosts: []string{"localhost", "server.example"}})
	for _, bad := range []Config{
		{CACertFile: filepath.Join(own, CACertFile)},
		{CAKeyFile: filepath.Join(own, CAKeyFile)},
		{ServerCertFile: filepath.Join(own, ServerCertFile)},
		{ServerKeyFile: filepath.Join(own, ServerKeyFile)},
		{CACertFile: filepath.Join(own, CACertFile), CAKeyFile: filepath.Join(own, ServerKeyFile)},     // key of another cert
		{CACertFile: filepath.Join(own, ServerCertFile), CAKeyFile: filepath.Join(own, ServerKeyFile)}, // not a CA
	} {
		bad.Dir = t.TempDir()
		if _, err := Load(bad); err == nil {
			t.Errorf("Load(%+v) succeeded", bad)
		}
	}

	// The operator's CA: the data dir gets a server certificate it signed, and
	// no CA of its own.
	dir := t.TempDir()
	a := load(t, Config{Dir: dir, CACertFile: filepath.Join(own, CACertFile), CAKeyFile: filepath.Join(own, CAKeyFile), Hosts: []string{"localhost"}})
	if a.Fingerprint() != mine.Fingerprint() {
		t.Error("not the given CA")
	}
	if _, err := os.Stat(filepath.Join(dir, CAKeyFile)); err == nil {
		t.Error("a CA key was created beside a given CA")
	}
	if err := a.ServerCertificate().Leaf.CheckSignatureFrom(mine.CA()); err != nil {
		t.Errorf("server certificate not signed by the given CA: %v", err)
	}

	// The operator's server certificate: used as it is, and the generated
	// server certificate of another CA is replaced when that CA is given.
	dir2 := t.TempDir()
	b := load(t, Config{Dir: dir2, ServerCertFile: filepath.Join(own, ServerCertFile), ServerKeyFile: filepath.Join(own, ServerKeyFile)})
	if !bytes.Equal(b.ServerCertificate().Certificate[0], mine.ServerCertificate().Certificate[0]) {
		t.Error("not the given server certificate")
	}
	if b.Fingerprint() == mine.Fingerprint() {
		t.Error("the data dir's CA is the other dir's")
	}
	if _, err := os.Stat(filepath.Join(dir2, ServerCertFile)); err == nil {
		t.Error("a server certificate was generated beside a given one")
	}
	before := read(t, filepath.Join(dir, ServerCertFile))
	load(t, Config{Dir: dir, Hosts: []string{"localhost"}}) // dir's own CA now: its server certificate is stale
	if bytes.Equal(read(t, filepath.Join(dir, ServerCertFile)), before) {
		t.Error("a server certificate signed by another CA was kept")
	}
}

// csr makes a CSR for key; its subject and SANs try to claim another host,
// which the signed certificate must not repeat.
func csr(t *testing.T, key crypto.Signer) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject:  pkix.Name{CommonName: "someone-else"},
		DNSNames: []string{"evil.example"},
		URIs:     []*url.URL{HostURI(999)},
	}, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func TestSignClient(t *testing.T) {
	a := load(t, Config{Dir: t.TempDir(), AgentCertTTL: 48 * time.Hour})
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	_, ed, _ := ed25519.GenerateKey(rand.Reader)
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	tampered := csr(t, p256)
	tampered[len(tampered)-3] ^= 0xff

	tests := []struct {
		name string
		csr  []byte
		ok   bool
	}{
		{"ECDSA P-256", csr(t, p256), true},
		{"Ed25519", csr(t, ed), true},
		{"ECDSA P-384", csr(t, p384), false},
		{"RSA", csr(t, rsaKey), false},
		{"tampered", tampered, false},
		{"garbage", []byte("not a csr"), false},
		{"empty", nil, false},
	}
	serials := map[string]bool{}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			der, err := a.SignClient(tt.csr, 42, "host-a")
			if !tt.ok {
				if !errors.Is(err, errs.ErrInvalidArgument) {
					t.Fatalf("SignClient = %v, want ErrInvalidArgument", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			c, err := x509.ParseCertificate(der)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := c.Verify(x509.VerifyOptions{Roots: a.ClientCAs(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
				t.Fatalf("does not verify as a client certificate: %v", err)
			}
			if _, err := c.Verify(x509.VerifyOptions{Roots: a.ClientCAs(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err == nil {
				t.Error("verifies as a server certificate")
			}
			if c.Subject.CommonName != "host-a" || len(c.URIs) != 1 || c.URIs[0].String() != "agentplane://hosts/42" || len(c.DNSNames) != 0 {
				t.Errorf("CN %q, URIs %v, DNS %v", c.Subject.CommonName, c.URIs, c.DNSNames)
			}
			if id, err := HostID(c); err != nil || id != 42 {
				t.Errorf("HostID = %d, %v", id, err)
			}
			if d := c.NotAfter.Sub(c.NotBefore); d < 48*time.Hour || d > 49*time.Hour {
				t.Errorf("valid for %s", d)
			}
			if c.SerialNumber.BitLen() < 64 || c.SerialNumber.BitLen() > 128 || serials[c.SerialNumber.String()] {
				t.Errorf("serial %v", c.SerialNumber)
			}
			serials[c.SerialNumber.String()] = true
		})
	}
	if _, err := a.SignClient(csr(t, p256), 0, "h"); !errors.Is(err, errs.ErrInvalidArgument) {
		t.Errorf("host id 0: %v", err)
	}
}

func TestHostID(t *testing.T) {
	u := func(s string) *url.URL {
		v, err := url.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	tests := []struct {
		uris []*url.URL
		want int64
	}{
		{[]*url.URL{u("agentplane://hosts/7")}, 7},
		{[]*url.URL{u("spiffe://example/x"), u("agentplane://hosts/9223372036854775807")}, 9223372036854775807},
		{nil, 0},
		{[]*url.URL{u("agentplane://hosts/7"), u("agentplane://hosts/8")}, 0},
		{[]*url.URL{u("agentplane://hosts/7"), u("agentplane://hosts/7")}, 0},
		{[]*url.URL{u("agentplane://users/7")}, 0},
		{[]*url.URL{u("agentplane://hosts/0")}, 0},
		{[]*url.URL{u("agentplane://hosts/07")}, 0},
		{[]*url.URL{u("agentplane://hosts/-7")}, 0},
		{[]*url.URL{u("agentplane://hosts/7/x")}, 0},
		{[]*url.URL{u("agentplane://hosts/7?x=1")}, 0},
		{[]*url.URL{u("agentplane://hosts/99999999999999999999")}, 0},
	}
	for _, tt := range tests {
		got, err := HostID(&x509.Certificate{URIs: tt.uris})
		if got != tt.want || (tt.want == 0) != errors.Is(err, errs.ErrUnauthenticated) {
			t.Errorf("HostID(%v) = %d, %v; want %d", tt.uris, got, err, tt.want)
		}
	}
}

// TestMutualTLSHandshake runs real TLS over loopback: a client trusting
// CAPEM reaches the server by name and address, and the server verifies the
// client certificate the CA signed and reads its host; a client without one
// is let in (enrollment) with no verified chain.
func TestMutualTLSHandshake(t *testing.T) {
	a := load(t, Config{Dir: t.TempDir(), Hosts: []string{"localhost", "127.0.0.1"}})
	lis, err := tls.Listen("tcp", "127.0.0.1:0", a.MutualTLSConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	type seen struct {
		id  int64
		err error
	}
	got := make(chan seen, 1)
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			tc := c.(*tls.Conn)
			err = tc.Handshake()
			var s seen
			if err == nil {
				if leaf := VerifiedLeaf(tc.ConnectionState()); leaf != nil {
					s.id, s.err = HostID(leaf)
				}
			} else {
				s.err = err
			}
			_, _ = io.WriteString(tc, "x")
			tc.Close()
			got <- s
		}
	}()
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(a.CAPEM()) {
		t.Fatal("CAPEM holds no certificate")
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := a.SignClient(csr(t, key), 5, "host-5")
	if err != nil {
		t.Fatal(err)
	}
	client := tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	dial := func(name string, certs []tls.Certificate) seen {
		t.Helper()
		c, err := tls.Dial("tcp", lis.Addr().String(), &tls.Config{RootCAs: roots, ServerName: name, Certificates: certs, MinVersion: tls.VersionTLS12})
		if err != nil {
			t.Fatalf("dial %s: %v", name, err)
		}
		_, _ = io.ReadAll(c)
		c.Close()
		return <-got
	}
	if s := dial("localhost", []tls.Certificate{client}); s.err != nil || s.id != 5 {
		t.Fatalf("with a client certificate: host %d, %v", s.id, s.err)
	}
	if s := dial("127.0.0.1", nil); s.err != nil || s.id != 0 {
		t.Fatalf("without a client certificate: host %d, %v", s.id, s.err)
	}
	// A certificate from another CA is refused in the handshake.
	other := load(t, Config{Dir: t.TempDir()})
	der, _ = other.SignClient(csr(t, key), 5, "host-5")
	c, err := tls.Dial("tcp", lis.Addr().String(), &tls.Config{RootCAs: roots, ServerName: "localhost", MinVersion: tls.VersionTLS12,
		Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}})
	if err == nil {
		_, _ = io.ReadAll(c) // TLS 1.3: the refusal arrives after the client's handshake
		c.Close()
	}
	if s := <-got; s.err == nil {
		t.Fatalf("a client certificate of another CA was accepted (host %d)", s.id)
	}
}
