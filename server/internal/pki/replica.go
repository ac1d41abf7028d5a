package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"net/url"
	"strings"
	"time"
	"unicode/utf8"

	"agentplane/server/internal/errs"
)

// A replica's client certificate names it with the URI SAN
// agentplane://replicas/<id> (the id path-escaped) and nothing else: no
// host URI, so the agent stream refuses it (HostID), and an agent's
// certificate never passes ReplicaID. Users authenticate with credentials,
// never with a certificate.
const replicaURIHost = "replicas"

// ReplicaCertTTL is the validity of a replica's client certificate; the
// replica signs itself a new one when half of it has passed
// (ReplicaCertificate is cheap to call again).
const ReplicaCertTTL = 24 * time.Hour

// ReplicaURI returns the URI SAN of replica id.
func ReplicaURI(id string) *url.URL {
	return &url.URL{Scheme: HostURIScheme, Host: replicaURIHost, Path: "/" + id}
}

// ReplicaCertificate signs, with the CA's key every replica holds, a fresh
// key's client certificate for replica id: CN "agentplane replica <id>",
// URI SAN agentplane://replicas/<id>, extended key usage client auth,
// valid ReplicaCertTTL (never past the CA's end).
func (a *Authority) ReplicaCertificate(id string) (tls.Certificate, error) {
	if id == "" || !utf8.ValidString(id) {
		return tls.Certificate{}, fmt.Errorf("replica certificate for id %q: %w", id, errs.ErrInvalidArgument)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	now := a.cfg.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: "agentplane replica " + id, Organization: []string{"agentplane replicas"}},
		NotBefore:    now.Add(-backdate),
		NotAfter:     minTime(now.Add(ReplicaCertTTL), a.ca.NotAfter),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		URIs:         []*url.URL{ReplicaURI(id)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.ca, key.Public(), a.caKey)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("signing the certificate of replica %q: %w", id, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, nil
}

// ReplicaID returns the replica a client certificate names: its one URI
// SAN agentplane://replicas/<id>, with no other agentplane URI (an agent's
// certificate is never a replica's). The caller must have verified the
// certificate against the CA. ErrUnauthenticated otherwise.
func ReplicaID(c *x509.Certificate) (string, error) {
	var id string
	for _, u := range c.URIs {
		if u.Scheme != HostURIScheme {
			continue
		}
		s, ok := strings.CutPrefix(u.Path, "/")
		if u.Host != replicaURIHost || !ok || s == "" || id != "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" || u.Opaque != "" {
			return "", fmt.Errorf("client certificate %q is not a replica's: %w", c.Subject.CommonName, errs.ErrUnauthenticated)
		}
		id = s
	}
	if id == "" {
		return "", fmt.Errorf("client certificate %q names no agentplane replica: %w", c.Subject.CommonName, errs.ErrUnauthenticated)
	}
	return id, nil
}

// PeerTLSConfig returns the TLS configuration a replica dials its peers
// with: it verifies their server certificate against what agents trust
// (CAPEM's certificates) and presents, through cert, this replica's client
// certificate.
func (a *Authority) PeerTLSConfig(cert func() (*tls.Certificate, error)) *tls.Config {
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(a.bundle)
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		RootCAs:    roots,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return cert()
		},
	}
}
