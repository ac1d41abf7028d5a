package pki

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"net/url"
	"strconv"
	"strings"

	"agentplane/server/internal/errs"
)

// HostURIScheme and hostURIHost form the URI SAN that binds a client
// certificate to a host: agentplane://hosts/<id>.
const (
	HostURIScheme = "agentplane"
	hostURIHost   = "hosts"
)

// HostURI returns the URI SAN of host id.
func HostURI(id int64) *url.URL {
	return &url.URL{Scheme: HostURIScheme, Host: hostURIHost, Path: "/" + strconv.FormatInt(id, 10)}
}

// ParseCSR parses a PKCS #10 request (DER) and checks its signature and its
// key: ECDSA P-256 or Ed25519. Its subject and extensions are ignored: the
// server decides what the certificate says. ErrInvalidArgument otherwise.
func ParseCSR(der []byte) (*x509.CertificateRequest, error) {
	if len(der) == 0 {
		return nil, fmt.Errorf("no certificate signing request: %w", errs.ErrInvalidArgument)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, fmt.Errorf("malformed certificate signing request: %w: %w", err, errs.ErrInvalidArgument)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("certificate signing request signature: %w: %w", err, errs.ErrInvalidArgument)
	}
	switch k := csr.PublicKey.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() {
			return nil, fmt.Errorf("certificate signing request key: ECDSA on %s; want P-256 or Ed25519: %w", k.Curve.Params().Name, errs.ErrInvalidArgument)
		}
	case ed25519.PublicKey:
	default:
		return nil, fmt.Errorf("certificate signing request key: %T; want ECDSA P-256 or Ed25519: %w", k, errs.ErrInvalidArgument)
	}
	return csr, nil
}

// SignClient signs csrDER (checked as ParseCSR does) into a client
// certificate (DER) for host id hostID named hostName: CN hostName, URI SAN
// agentplane://hosts/<id>, extended key usage client auth, a random 128-bit
// serial, valid for the configured agent certificate TTL (never past the
// CA's end). ErrInvalidArgument for a bad CSR.
func (a *Authority) SignClient(csrDER []byte, hostID int64, hostName string) ([]byte, error) {
	if hostID <= 0 || hostName == "" {
		return nil, fmt.Errorf("signing for host %d %q: %w", hostID, hostName, errs.ErrInvalidArgument)
	}
	csr, err := ParseCSR(csrDER)
	if err != nil {
		return nil, err
	}
	now := a.cfg.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: hostName, Organization: []string{"agentplane agents"}},
		NotBefore:    now.Add(-backdate),
		NotAfter:     minTime(now.Add(a.cfg.AgentCertTTL), a.ca.NotAfter),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		URIs:         []*url.URL{HostURI(hostID)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.ca, csr.PublicKey, a.caKey)
	if err != nil {
		return nil, fmt.Errorf("signing the certificate of host %d: %w", hostID, err)
	}
	return der, nil
}

// HostID returns the host id a client certificate is bound to: its one URI
// SAN agentplane://hosts/<id>. The caller must have verified the
// certificate (a TLS handshake against ClientCAs). ErrUnauthenticated when
// it names no host or more than one.
func HostID(c *x509.Certificate) (int64, error) {
	var id int64
	for _, u := range c.URIs {
		if u.Scheme != HostURIScheme {
			continue
		}
		n, ok := parseHostPath(u)
		if !ok || id != 0 {
			return 0, fmt.Errorf("client certificate %q: malformed or repeated host URI %q: %w", c.Subject.CommonName, u, errs.ErrUnauthenticated)
		}
		id = n
	}
	if id == 0 {
		return 0, fmt.Errorf("client certificate %q names no agentplane host: %w", c.Subject.CommonName, errs.ErrUnauthenticated)
	}
	return id, nil
}

// Serial returns c's serial number as the server records it: lowercase hex
// without leading zeros (as agentd logs it).
func Serial(c *x509.Certificate) string { return c.SerialNumber.Text(16) }

// VerifiedLeaf returns the client certificate a TLS handshake verified
// (against ClientCAs), or nil when the peer presented none.
func VerifiedLeaf(st tls.ConnectionState) *x509.Certificate {
	if len(st.VerifiedChains) == 0 || len(st.VerifiedChains[0]) == 0 {
		return nil
	}
	return st.VerifiedChains[0][0]
}

func parseHostPath(u *url.URL) (int64, bool) {
	if u.Host != hostURIHost || u.User != nil || u.RawQuery != "" || u.Fragment != "" || u.Opaque != "" {
		return 0, false
	}
	s, ok := strings.CutPrefix(u.Path, "/")
	if !ok || s == "" || s[0] == '0' || s[0] == '+' {
		return 0, false
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 {
		return 0, false
	}
	return n, true
}
