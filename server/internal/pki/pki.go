// Package pki owns the server's certificates: the CA that signs agent client
// certificates and verifies them, and the server certificate both listeners
// present. By default both live in the data dir and are created at first
// start; an operator may bring their own instead. It signs agents' CSRs into
// client certificates bound to a host id (URI SAN agentplane://hosts/<id>)
// and reads that id back from a verified peer certificate. Resumable makes
// the gRPC listener's TLS session tickets valid on every replica sharing a
// secret.
package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/rs/zerolog"
)

// Files in the data dir. Keys are written 0600, the CA certificate 0644.
const (
	CACertFile     = "ca.crt"
	CAKeyFile      = "ca.key"
	ServerCertFile = "server.crt"
	ServerKeyFile  = "server.key"
)

// Validity of what Load creates.
const (
	CAValidity     = 10 * 365 * 24 * time.Hour
	ServerValidity = 365 * 24 * time.Hour
	// DefaultAgentCertTTL is the validity of an agent's client certificate
	// when Config leaves it zero.
	DefaultAgentCertTTL = 720 * time.Hour
	// serverRenewBefore: a generated server certificate this close to its
	// end is replaced at start.
	serverRenewBefore = 30 * 24 * time.Hour
	// backdate covers clocks slightly behind ours.
	backdate = 5 * time.Minute
)

// Config says where the certificates come from.
type Config struct {
	// Dir is the data dir: the generated CA and server certificate live there.
	Dir string
	// CACertFile and CAKeyFile, both or neither, name a user-provided CA (PEM)
	// that signs and verifies agent certificates instead of the generated one.
	CACertFile, CAKeyFile string
	// ServerCertFile and ServerKeyFile, both or neither, name a user-provided
	// server certificate (PEM; the file may hold its chain after the leaf) and
	// its key, used as they are.
	ServerCertFile, ServerKeyFile string
	// Hosts are the DNS names and IP addresses a generated server certificate
	// must cover; Load regenerates one that lacks any of them.
	Hosts []string
	// AgentCertTTL is the validity of agent client certificates; default
	// DefaultAgentCertTTL.
	AgentCertTTL time.Duration
	Log          zerolog.Logger
	// Now is the clock; default time.Now.
	Now func() time.Time
}

// Authority is the loaded CA and server certificate. It is safe for
// concurrent use.
type Authority struct {
	cfg        Config
	ca         *x509.Certificate
	caKey      crypto.Signer
	pool       *x509.CertPool
	bundle     []byte // PEM: what an agent trusts for the server
	server     tls.Certificate
	serverLeaf *x509.Certificate
}

// Load loads the CA and the server certificate, creating in cfg.Dir what is
// not user-provided and missing. A generated server certificate is
// regenerated when it is expired or about to, lacks one of cfg.Hosts, was not
// signed by the current CA, or does not match its key. Load never
// overwrites a CA: a data dir with only one of ca.crt and ca.key is an error.
func Load(cfg Config) (*Authority, error) {
	if cfg.AgentCertTTL <= 0 {
		cfg.AgentCertTTL = DefaultAgentCertTTL
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if (cfg.CACertFile == "") != (cfg.CAKeyFile == "") {
		return nil, errors.New("a CA needs both its certificate and its key (--ca-cert and --ca-key)")
	}
	if (cfg.ServerCertFile == "") != (cfg.ServerKeyFile == "") {
		return nil, errors.New("a server certificate needs both the certificate and its key (--tls-cert and --tls-key)")
	}
	a := &Authority{cfg: cfg}
	if err := a.loadCA(); err != nil {
		return nil, err
	}
	if err := a.loadServer(); err != nil {
		return nil, err
	}
	a.pool = x509.NewCertPool()
	a.pool.AddCert(a.ca)
	a.bundle = pemCert(a.ca.Raw)
	// A user-provided server certificate may come from another CA: agents
	// trust its chain too (the root itself may have to be given to agentd).
	for _, der := range a.server.Certificate[1:] {
		if c, err := x509.ParseCertificate(der); err == nil && c.IsCA && !c.Equal(a.ca) {
			a.bundle = append(a.bundle, pemCert(der)...)
		}
	}
	return a, nil
}

func (a *Authority) loadCA() error {
	if a.cfg.CACertFile != "" {
		ca, key, err := loadPair(a.cfg.CACertFile, a.cfg.CAKeyFile)
		if err != nil {
			return fmt.Errorf("CA: %w", err)
		}
		if !ca.IsCA || ca.KeyUsage&x509.KeyUsageCertSign == 0 && ca.KeyUsage != 0 {
			return fmt.Errorf("CA certificate %s is not a CA that may sign certificates", a.cfg.CACertFile)
		}
		a.ca, a.caKey = ca, key
		return nil
	}
	certPath, keyPath := filepath.Join(a.cfg.Dir, CACertFile), filepath.Join(a.cfg.Dir, CAKeyFile)
	certOK, keyOK := exists(certPath), exists(keyPath)
	switch {
	case certOK && keyOK:
		warnMode(a.cfg.Log, keyPath)
		ca, key, err := loadPair(certPath, keyPath)
		if err != nil {
			return fmt.Errorf("CA: %w", err)
		}
		a.ca, a.caKey = ca, key
		return nil
	case certOK != keyOK:
		return fmt.Errorf("data dir %s holds only one of %s and %s: restore the other or remove both to create a new CA (agents enrolled with the old one must enroll again)",
			a.cfg.Dir, CACertFile, CAKeyFile)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	now := a.cfg.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "agentplane CA", Organization: []string{"agentplane"}},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(CAValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return fmt.Errorf("creating the CA: %w", err)
	}
	// The key first: a crash between the two leaves a key without a
	// certificate, which Load reports instead of silently replacing.
	if err := writeKey(keyPath, key); err != nil {
		return err
	}
	if err := writeFile(certPath, pemCert(der), 0o644); err != nil {
		return err
	}
	a.ca, _ = x509.ParseCertificate(der)
	a.caKey = key
	a.cfg.Log.Info().Str("file", certPath).Str("ca_fingerprint", Fingerprint(a.ca)).Msg("created the CA")
	return nil
}

func (a *Authority) loadServer() error {
	if a.cfg.ServerCertFile != "" {
		c, err := tls.LoadX509KeyPair(a.cfg.ServerCertFile, a.cfg.ServerKeyFile)
		if err != nil {
			return fmt.Errorf("server certificate: %w", err)
		}
		a.server, a.serverLeaf = c, c.Leaf
		if now := a.cfg.Now(); now.After(c.Leaf.NotAfter) {
			a.cfg.Log.Warn().Str("file", a.cfg.ServerCertFile).Time("not_after", c.Leaf.NotAfter).Msg("the server certificate has expired")
		}
		return nil
	}
	certPath, keyPath := filepath.Join(a.cfg.Dir, ServerCertFile), filepath.Join(a.cfg.Dir, ServerKeyFile)
	reason := "none yet"
	if exists(certPath) || exists(keyPath) {
		warnMode(a.cfg.Log, keyPath)
		c, err := tls.LoadX509KeyPair(certPath, keyPath)
		if err == nil {
			if reason = a.staleServer(c.Leaf); reason == "" {
				a.server, a.serverLeaf = c, c.Leaf
				return nil
			}
		} else {
			reason = err.Error()
		}
	}
	if err := a.createServer(certPath, keyPath); err != nil {
		return err
	}
	a.cfg.Log.Info().Str("file", certPath).Str("reason", reason).Strs("hosts", a.serverLeaf.DNSNames).
		Str("ips", fmt.Sprint(a.serverLeaf.IPAddresses)).Time("not_after", a.serverLeaf.NotAfter).Msg("created the server certificate")
	return nil
}

// staleServer says why a generated server certificate must be replaced, or
// "" when it may stay.
func (a *Authority) staleServer(c *x509.Certificate) string {
	now := a.cfg.Now()
	if now.Add(serverRenewBefore).After(c.NotAfter) {
		return "expired or about to expire"
	}
	if err := c.CheckSignatureFrom(a.ca); err != nil {
		return "not signed by the current CA"
	}
	for _, h := range a.cfg.Hosts {
		if h = normHost(h); h != "" && c.VerifyHostname(h) != nil {
			return "does not cover " + h
		}
	}
	return ""
}

func (a *Authority) createServer(certPath, keyPath string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	now := a.cfg.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: "agentplane-server", Organization: []string{"agentplane"}},
		NotBefore:    now.Add(-backdate),
		NotAfter:     minTime(now.Add(ServerValidity), a.ca.NotAfter),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, h := range a.cfg.Hosts {
		h = normHost(h)
		if h == "" {
			continue
		}
		if ip := net.ParseIP(h); ip != nil {
			if !slices.ContainsFunc(tmpl.IPAddresses, ip.Equal) {
				tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
			}
		} else if !slices.Contains(tmpl.DNSNames, h) {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.ca, key.Public(), a.caKey)
	if err != nil {
		return fmt.Errorf("creating the server certificate: %w", err)
	}
	if err := writeKey(keyPath, key); err != nil {
		return err
	}
	if err := writeFile(certPath, pemCert(der), 0o600); err != nil {
		return err
	}
	leaf, _ := x509.ParseCertificate(der)
	a.server = tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
	a.serverLeaf = leaf
	return nil
}

// normHost returns h without brackets or zone, lower-cased; "" for a
// wildcard address, which no certificate can name.
func normHost(h string) string {
	h = strings.ToLower(strings.Trim(strings.TrimSpace(h), "[]"))
	if i := strings.IndexByte(h, '%'); i >= 0 {
		h = h[:i]
	}
	if ip := net.ParseIP(h); ip != nil {
		if ip.IsUnspecified() {
			return ""
		}
		return ip.String()
	}
	return h
}

// CA returns the CA certificate.
func (a *Authority) CA() *x509.Certificate { return a.ca }

// CAPEM returns the certificates (PEM) an agent trusts to verify the server:
// the CA, and the CA certificates of a user-provided server certificate's
// chain.
func (a *Authority) CAPEM() []byte { return slices.Clone(a.bundle) }

// ClientCAs returns the pool that verifies agent client certificates.
func (a *Authority) ClientCAs() *x509.CertPool { return a.pool }

// ServerCertificate returns the certificate both listeners present.
func (a *Authority) ServerCertificate() tls.Certificate { return a.server }

// Fingerprint returns the CA's SHA-256 fingerprint, as openssl prints it.
func (a *Authority) Fingerprint() string { return Fingerprint(a.ca) }

// TLSConfig is for the REST listener: the server certificate, TLS 1.2 or
// later, no client certificates.
func (a *Authority) TLSConfig() *tls.Config {
	return &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{a.server}}
}

// MutualTLSConfig is for the gRPC listener: as TLSConfig, and a client
// certificate, when one is given, must verify against the CA (agents
// present one; API callers and enrolling agents do not).
func (a *Authority) MutualTLSConfig() *tls.Config {
	c := a.TLSConfig()
	c.ClientAuth = tls.VerifyClientCertIfGiven
	c.ClientCAs = a.pool
	return c
}

// Fingerprint returns the SHA-256 fingerprint of c, upper-case hex pairs
// joined by colons (openssl x509 -noout -fingerprint -sha256).
func Fingerprint(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	var b strings.Builder
	for i, x := range sum {
		if i > 0 {
			b.WriteByte(':')
		}
		fmt.Fprintf(&b, "%02X", x)
	}
	return b.String()
}

// serial returns a random positive 128-bit serial number.
func serial() *big.Int {
	for {
		var b [16]byte
		_, _ = rand.Read(b[:])
		if n := new(big.Int).SetBytes(b[:]); n.Sign() > 0 {
			return n
		}
	}
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

func pemCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// loadPair reads a PEM certificate (the first in the file) and its PEM
// private key, and checks that they match.
func loadPair(certPath, keyPath string) (*x509.Certificate, crypto.Signer, error) {
	cb, err := os.ReadFile(certPath)
	if err != nil {
		return nil, nil, err
	}
	block, _ := pem.Decode(cb)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, nil, fmt.Errorf("%s: no PEM certificate", certPath)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", certPath, err)
	}
	kb, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, nil, err
	}
	key, err := parseKey(kb)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", keyPath, err)
	}
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(cert.PublicKey) {
		return nil, nil, fmt.Errorf("%s does not match the key in %s", certPath, keyPath)
	}
	return cert, key, nil
}

// parseKey reads a PEM private key: PKCS #8, SEC 1 (EC) or PKCS #1 (RSA).
func parseKey(b []byte) (crypto.Signer, error) {
	for {
		var block *pem.Block
		block, b = pem.Decode(b)
		if block == nil {
			return nil, errors.New("no PEM private key")
		}
		var k any
		var err error
		switch block.Type {
		case "PRIVATE KEY":
			k, err = x509.ParsePKCS8PrivateKey(block.Bytes)
		case "EC PRIVATE KEY":
			k, err = x509.ParseECPrivateKey(block.Bytes)
		case "RSA PRIVATE KEY":
			k, err = x509.ParsePKCS1PrivateKey(block.Bytes)
		default:
			continue // e.g. EC PARAMETERS
		}
		if err != nil {
			return nil, err
		}
		switch k := k.(type) {
		case *ecdsa.PrivateKey, *rsa.PrivateKey, ed25519.PrivateKey:
			return k.(crypto.Signer), nil
		}
		return nil, fmt.Errorf("unsupported private key type %T", k)
	}
}

func writeKey(path string, key crypto.Signer) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	return writeFile(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
}

// writeFile writes data to path atomically (a temporary file renamed over
// it) with the given mode.
func writeFile(path string, data []byte, mode os.FileMode) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*") // mode 0600
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	return nil
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return !errors.Is(err, fs.ErrNotExist)
}

// warnMode logs when a key file in the data dir is readable by others.
func warnMode(log zerolog.Logger, path string) {
	if fi, err := os.Stat(path); err == nil && fi.Mode().Perm()&0o077 != 0 {
		log.Warn().Str("file", path).Str("mode", fi.Mode().Perm().String()).Msg("private key readable by others; chmod 600 it")
	}
}
