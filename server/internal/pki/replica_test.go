package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"testing"

	"agentplane/server/internal/errs"
)

// A replica's certificate verifies against the CA as a client certificate
// and names the replica; it never passes for an agent's (HostID), nor an
// agent's for a replica's.
func TestReplicaCertificate(t *testing.T) {
	a := load(t, Config{Dir: t.TempDir()})
	c, err := a.ReplicaCertificate("node-1:7070")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Leaf.Verify(x509.VerifyOptions{Roots: a.ClientCAs(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatal(err)
	}
	if id, err := ReplicaID(c.Leaf); err != nil || id != "node-1:7070" {
		t.Fatalf("ReplicaID = %q, %v", id, err)
	}
	if _, err := HostID(c.Leaf); !errors.Is(err, errs.ErrUnauthenticated) {
		t.Fatalf("HostID of a replica's certificate: %v, want ErrUnauthenticated", err)
	}
	agent := signAgent(t, a, 42, "h42")
	if _, err := ReplicaID(agent); !errors.Is(err, errs.ErrUnauthenticated) {
		t.Fatalf("ReplicaID of an agent's certificate: %v, want ErrUnauthenticated", err)
	}
	if _, err := a.ReplicaCertificate(""); !errors.Is(err, errs.ErrInvalidArgument) {
		t.Fatalf("empty id: %v", err)
	}
}

func signAgent(t *testing.T, a *Authority, id int64, name string) *x509.Certificate {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := a.SignClient(csr(t, key), id, name)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
