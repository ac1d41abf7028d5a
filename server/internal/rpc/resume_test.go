package rpc

import (
	"bytes"
	"crypto/tls"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"

	agentv1 "agentplane/gen/agentplane/agent/v1"
	hostv1 "agentplane/gen/agentplane/host/v1"
	"agentplane/server/internal/pki"
)

// A resumed TLS session keeps the client certificate of its full
// handshake, but the stream checks it as for a full handshake: a revoked
// certificate is refused on a resumed session.
func TestResumedSessionOfARevokedCertificateIsRefused(t *testing.T) {
	var resume *pki.Resumption
	e := newTLSEnvWith(t, func(ca *pki.Authority) *tls.Config {
		resume = pki.Resumable(ca.MutualTLSConfig(), bytes.Repeat([]byte{3}, 32), nil)
		return resume.Config()
	})
	a := e.enroll(t, "host-a")
	_, before := resume.Handshakes()

	// agentd's way: one session cache for every connection.
	agentTLS := &tls.Config{RootCAs: e.roots, ServerName: "localhost", MinVersion: tls.VersionTLS12,
		Certificates: []tls.Certificate{a.cert}, ClientSessionCache: tls.NewLRUClientSessionCache(4)}
	dial := func() *grpc.ClientConn {
		t.Helper()
		conn, err := grpc.NewClient("passthrough:///"+e.addr, grpc.WithTransportCredentials(credentials.NewTLS(agentTLS)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return conn
	}
	resumed := func() int64 {
		_, r := resume.Handshakes()
		return r - before
	}

	conn := dial()
	stream, id, err := connectAs(t, conn, &agentv1.Hello{HostName: "host-a"})
	checkCode(t, err, codes.OK, "")
	if id != a.id || resumed() != 0 {
		t.Fatalf("welcome for host %d, %d resumed handshakes", id, resumed())
	}
	_ = stream.CloseSend()
	conn.Close()

	// A reconnect resumes, and is welcomed.
	conn = dial()
	stream, id, err = connectAs(t, conn, &agentv1.Hello{HostName: "host-a"})
	checkCode(t, err, codes.OK, "")
	if id != a.id || resumed() != 1 {
		t.Fatalf("reconnect: welcome for host %d, %d resumed handshakes, want 1", id, resumed())
	}

	hc := hostv1.NewHostServiceClient(e.dial(t, nil))
	certs, err := hc.ListHostCertificates(as(t, "admin"), &hostv1.ListHostCertificatesRequest{HostId: a.id})
	checkCode(t, err, codes.OK, "")
	if len(certs.GetCertificates()) != 1 {
		t.Fatalf("certificates %v", certs.GetCertificates())
	}
	_, err = hc.RevokeCertificate(as(t, "admin"), &hostv1.RevokeCertificateRequest{Serial: certs.GetCertificates()[0].GetSerial()})
	checkCode(t, err, codes.OK, "")
	_ = stream.CloseSend()
	conn.Close()

	// The next reconnect resumes its TLS session, and is refused.
	conn = dial()
	_, _, err = connectAs(t, conn, &agentv1.Hello{HostName: "host-a"})
	checkCode(t, err, codes.PermissionDenied, "revoked")
	if resumed() != 2 {
		t.Fatalf("%d resumed handshakes, want 2: the refusal was not on a resumed session", resumed())
	}
	_, csr := csrKey(t)
	_, err = agentv1.NewAgentServiceClient(conn).RenewCertificate(plain(t), &agentv1.RenewCertificateRequest{Csr: csr})
	checkCode(t, err, codes.PermissionDenied, "revoked")
}
