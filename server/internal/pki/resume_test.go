package pki

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"io"
	"sync/atomic"
	"testing"
	"time"
)

func TestSessionTicketKeys(t *testing.T) {
	secret, other := bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32)
	day := time.Date(2026, 12, 3, 13, 0, 0, 0, time.UTC)
	keys := func(s []byte, at time.Time) [][32]byte {
		t.Helper()
		k, err := SessionTicketKeys(s, at)
		if err != nil || len(k) != 2 {
			t.Fatalf("keys: %d, %v", len(k), err)
		}
		return k
	}
	today, again := keys(secret, day), keys(secret, day.Add(10*time.Hour))
	if today[0] != again[0] || today[1] != again[1] {
		t.Fatal("keys differ within a day")
	}
	if today[0] == today[1] {
		t.Fatal("today's key is yesterday's")
	}
	if tomorrow := keys(secret, day.Add(24*time.Hour)); tomorrow[1] != today[0] || tomorrow[0] == today[0] {
		t.Fatal("tomorrow's previous key is not today's key")
	}
	if o := keys(other, day); o[0] == today[0] || o[1] == today[1] {
		t.Fatal("another secret gives the same keys")
	}
}

// resumeServer serves r's configuration on loopback: each connection gets
// one byte (after the session ticket) and is closed.
func resumeServer(t *testing.T, r *Resumption) string {
	t.Helper()
	lis, err := tls.Listen("tcp", "127.0.0.1:0", r.Config())
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			_ = c.SetDeadline(time.Now().Add(time.Minute))
			_, _ = c.Write([]byte{1})
			_, _ = io.Copy(io.Discard, c)
			c.Close()
		}
	}()
	t.Cleanup(func() {
		lis.Close()
		<-done
	})
	return lis.Addr().String()
}

func TestResumableAcrossServersSharingTheSecret(t *testing.T) {
	a := load(t, Config{Dir: t.TempDir(), Hosts: []string{"localhost", "127.0.0.1"}})
	secret, other := bytes.Repeat([]byte{7}, 32), bytes.Repeat([]byte{8}, 32)
	var clock atomic.Int64
	clock.Store(time.Now().Unix())
	now := func() time.Time { return time.Unix(clock.Load(), 0) }
	r1, r2 := Resumable(a.MutualTLSConfig(), secret, now), Resumable(a.MutualTLSConfig(), secret, now)
	r3 := Resumable(a.MutualTLSConfig(), other, now)
	s1, s2, s3 := resumeServer(t, r1), resumeServer(t, r2), resumeServer(t, r3)

	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(a.CAPEM())
	// One client cache, as agentd keeps: the key is the server name, the
	// same for every replica here.
	client := &tls.Config{RootCAs: roots, ServerName: "localhost", MinVersion: tls.VersionTLS12,
		ClientSessionCache: tls.NewLRUClientSessionCache(4)}
	dial := func(addr string) bool {
		t.Helper()
		c, err := tls.Dial("tcp", addr, client)
		if err != nil {
			t.Fatalf("dial %s: %v", addr, err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(time.Minute))
		if _, err := io.ReadFull(c, make([]byte, 1)); err != nil { // and the ticket before it
			t.Fatal(err)
		}
		return c.ConnectionState().DidResume
	}
	check := func(r *Resumption, full, resumed int64) {
		t.Helper()
		if f, res := r.Handshakes(); f != full || res != resumed {
			t.Fatalf("handshakes: %d full, %d resumed; want %d, %d", f, res, full, resumed)
		}
	}

	if dial(s1) {
		t.Fatal("first connection resumed")
	}
	check(r1, 1, 0)
	if !dial(s2) {
		t.Fatal("a ticket of r1 was not resumed by r2, which shares the secret")
	}
	check(r2, 0, 1)
	if dial(s3) {
		t.Fatal("a ticket of r2 was resumed by r3, with another secret")
	}
	check(r3, 1, 0) // a full handshake, connected

	if dial(s1) { // r3's ticket: full again
		t.Fatal("a ticket of r3 was resumed by r1")
	}
	// The next day, yesterday's ticket is still accepted; two days on, no
	// more.
	clock.Add(24 * 3600)
	if !dial(s2) {
		t.Fatal("yesterday's ticket was not resumed")
	}
	clock.Add(2 * 24 * 3600)
	if dial(s1) {
		t.Fatal("a ticket of two days ago was resumed")
	}
	check(r1, 3, 0)
	check(r2, 0, 2)
}
