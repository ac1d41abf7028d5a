package pki

import (
	"crypto/hkdf"
	"crypto/sha256"
	"crypto/tls"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// ticketInfo labels the HKDF derivation of session ticket keys, so that
// they share nothing with the other uses of the same secret.
const ticketInfo = "agentplane tls session ticket v1"

// ticketWindow is how long one session ticket key issues tickets; a ticket
// stays accepted for one window more.
const ticketWindow = 24 * time.Hour

// SessionTicketKeys returns the TLS session ticket keys for now: the key
// of now's window (a UTC day), which issues tickets, and the key of the
// window before, which still accepts them. Each is HKDF-SHA256 of secret
// for the window's number, so servers sharing secret share their keys.
func SessionTicketKeys(secret []byte, now time.Time) ([][32]byte, error) {
	day := now.Unix() / int64(ticketWindow/time.Second)
	keys := make([][32]byte, 2)
	for i := range keys {
		k, err := hkdf.Key(sha256.New, secret, nil, ticketInfo+" "+strconv.FormatInt(day-int64(i), 10), 32)
		if err != nil {
			return nil, err
		}
		copy(keys[i][:], k)
	}
	return keys, nil
}

// Resumption makes TLS session tickets portable across the replicas of a
// store (see Resumable) and counts the handshakes it serves.
type Resumption struct {
	base   *tls.Config
	secret []byte
	now    func() time.Time

	mu     sync.Mutex
	day    int64
	config *tls.Config // base with the ticket keys of day

	full, resumed atomic.Int64
}

// Resumable returns a copy of c whose session tickets are sealed with the
// keys SessionTicketKeys derives from secret for the current day, picked
// at each connection: a client resumes its session on any server sharing
// secret (every replica of a store shares the access-key sealing key),
// within Go's 7-day ticket lifetime and the keys' two days. A server with
// another secret cannot read the ticket and makes a full handshake. A
// resumed session keeps the client certificate of its full handshake; Go
// refuses to resume it once that certificate has expired or no longer
// verifies against c.ClientCAs, and the application checks that it is not
// revoked at each stream, as for a full handshake. now is the clock
// (nil: time.Now).
func Resumable(c *tls.Config, secret []byte, now func() time.Time) *Resumption {
	if now == nil {
		now = time.Now
	}
	r := &Resumption{base: c.Clone(), secret: secret, now: now}
	verify := r.base.VerifyConnection
	r.base.VerifyConnection = func(cs tls.ConnectionState) error {
		if verify != nil {
			if err := verify(cs); err != nil {
				return err
			}
		}
		if cs.DidResume {
			r.resumed.Add(1)
		} else {
			r.full.Add(1)
		}
		return nil
	}
	return r
}

// Config returns the configuration to serve: it hands each connection the
// configuration with the current day's ticket keys.
func (r *Resumption) Config() *tls.Config {
	c := r.base.Clone()
	c.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) { return r.forNow() }
	return c
}

// Handshakes returns how many handshakes were full and how many resumed a
// session, counted when the client's certificate (if any) is verified.
func (r *Resumption) Handshakes() (full, resumed int64) { return r.full.Load(), r.resumed.Load() }

func (r *Resumption) forNow() (*tls.Config, error) {
	now := r.now()
	day := now.Unix() / int64(ticketWindow/time.Second)
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.config != nil && r.day == day {
		return r.config, nil
	}
	keys, err := SessionTicketKeys(r.secret, now)
	if err != nil {
		return nil, err
	}
	c := r.base.Clone()
	c.SetSessionTicketKeys(keys)
	r.day, r.config = day, c
	return c, nil
}
