package identity

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"agentplane/agentd/internal/testsrv"
)

// handshake is what a server saw of one TLS connection.
type handshake struct {
	resumed bool
	serial  string
}

// startMTLS serves mutual TLS on loopback with the fixture's CA (Go's own
// session ticket keys) and reports each connection's handshake.
func startMTLS(t *testing.T, f *fixture) (string, <-chan handshake) {
	t.Helper()
	lis, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{f.ca.ServerCertificate(t)}, ClientAuth: tls.RequireAndVerifyClientCert,
		ClientCAs: f.ca.Pool(), MinVersion: tls.VersionTLS13,
	})
	if err != nil {
		t.Fatal(err)
	}
	seen := make(chan handshake, 8)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			serve(c.(*tls.Conn), seen)
		}
	}()
	t.Cleanup(func() {
		lis.Close()
		<-done
	})
	return lis.Addr().String(), seen
}

// serve completes the handshake, reports it, sends one byte and waits for
// the client to close.
func serve(c *tls.Conn, seen chan<- handshake) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(testsrv.Wait))
	if err := c.HandshakeContext(context.Background()); err != nil {
		return
	}
	cs := c.ConnectionState()
	seen <- handshake{resumed: cs.DidResume, serial: cs.PeerCertificates[0].SerialNumber.String()}
	if _, err := c.Write([]byte{1}); err != nil {
		return
	}
	_, _ = io.Copy(io.Discard, c)
}

// dialOnce connects with conf, reads the server's byte (and with it the
// session ticket sent before it), closes, and returns what the server saw.
func dialOnce(t *testing.T, addr string, conf *tls.Config, seen <-chan handshake) handshake {
	t.Helper()
	d := tls.Dialer{Config: conf}
	ctx, cancel := context.WithTimeout(context.Background(), testsrv.Wait)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(testsrv.Wait))
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
		t.Fatal(err)
	}
	select {
	case h := <-seen:
		return h
	case <-ctx.Done():
		t.Fatal("the server saw no handshake")
		return handshake{}
	}
}

func TestClientTLSResumesUntilTheCertificateChanges(t *testing.T) {
	f := newFixture(t, testsrv.Options{Token: "good"})
	id := f.open("good")
	if err := ensure(t, id); err != nil {
		t.Fatal(err)
	}
	addr, seen := startMTLS(t, f)
	first := id.Certificate().SerialNumber.String()

	if h := dialOnce(t, addr, id.ClientTLS(), seen); h.resumed || h.serial != first {
		t.Fatalf("first connection %+v, want a full handshake with %s", h, first)
	}
	// A reconnect (another config of the same Identity, as after a restart
	// of the connection) resumes, and the server has the same certificate.
	for range 2 {
		if h := dialOnce(t, addr, id.ClientTLS(), seen); !h.resumed || h.serial != first {
			t.Fatalf("reconnect %+v, want resumed with %s", h, first)
		}
	}

	// A new certificate: no session of the old one is resumed.
	key, csr, err := newKeyAndCSR("h1")
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	der, err := f.ca.Sign(csr, id.HostID(), now.Add(-time.Minute), now.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	if err := id.install(key, leaf); err != nil {
		t.Fatal(err)
	}
	renewed := leaf.SerialNumber.String()
	if h := dialOnce(t, addr, id.ClientTLS(), seen); h.resumed || h.serial != renewed {
		t.Fatalf("after the certificate changed %+v, want a full handshake with %s", h, renewed)
	}
	if h := dialOnce(t, addr, id.ClientTLS(), seen); !h.resumed || h.serial != renewed {
		t.Fatalf("then %+v, want resumed with %s", h, renewed)
	}
}
