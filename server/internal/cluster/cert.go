package cluster

import (
	"crypto/tls"
	"sync"
	"time"
)

// Signer signs this replica's client certificate (pki.Authority).
type Signer interface {
	ReplicaCertificate(id string) (tls.Certificate, error)
}

// SelfCertificate returns what Peers present to the other replicas
// (pki.Authority.PeerTLSConfig's cert): replica id's client certificate,
// signed by s when first needed and again once half its validity has
// passed, so a replica that runs for months never presents an expired one.
func SelfCertificate(s Signer, id string) func() (*tls.Certificate, error) {
	var mu sync.Mutex
	var cur *tls.Certificate
	return func() (*tls.Certificate, error) {
		mu.Lock()
		defer mu.Unlock()
		if cur != nil && cur.Leaf != nil {
			half := cur.Leaf.NotBefore.Add(cur.Leaf.NotAfter.Sub(cur.Leaf.NotBefore) / 2)
			if time.Now().Before(half) {
				return cur, nil
			}
		}
		c, err := s.ReplicaCertificate(id)
		if err != nil {
			return nil, err
		}
		cur = &c
		return cur, nil
	}
}
