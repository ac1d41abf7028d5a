package rpc

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"net"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/types/known/durationpb"

	agentv1 "agentplane/gen/agentplane/agent/v1"
	hostv1 "agentplane/gen/agentplane/host/v1"
	"agentplane/server/internal/enroll"
	"agentplane/server/internal/fleet"
	"agentplane/server/internal/pki"
	"agentplane/server/internal/store"
)

// tlsEnv is the real thing over loopback TLS: the CA in a temporary data
// dir, SQLite, the fleet without a bootstrap token, and the enroll service;
// the host and task APIs are the fakes of service_test.go.
type tlsEnv struct {
	addr  string
	ca    *pki.Authority
	st    *store.Store
	roots *x509.CertPool
}

func newTLSEnv(t *testing.T) *tlsEnv {
	t.Helper()
	return newTLSEnvWith(t, (*pki.Authority).MutualTLSConfig)
}

// newTLSEnvWith is newTLSEnv with the gRPC listener's TLS configuration
// made by serverTLS from the CA.
func newTLSEnvWith(t *testing.T, serverTLS func(*pki.Authority) *tls.Config) *tlsEnv {
	t.Helper()
	dir := t.TempDir()
	st, err := store.Open(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	ca, err := pki.Load(pki.Config{Dir: dir, Hosts: []string{"localhost", "127.0.0.1"}, Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	f := fleet.New(fleet.Config{Registry: st, Logs: st, Certs: st, Log: zerolog.Nop()})
	svc := enroll.New(enroll.Config{Store: st, Signer: ca, Sessions: f, Log: zerolog.Nop()})
	srv := NewServer(Config{Hosts: &apiHosts{}, Tasks: &apiTasks{}, Users: apiUsers{}, Fleet: f, Enroll: svc, Log: zerolog.Nop()},
		grpc.Creds(credentials.NewTLS(serverTLS(ca))))
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(lis)
	}()
	t.Cleanup(func() {
		f.Close()
		srv.Stop()
		<-done
	})
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(ca.CAPEM())
	return &tlsEnv{addr: lis.Addr().String(), ca: ca, st: st, roots: roots}
}

// dial connects over TLS, verifying the server as "localhost", presenting
// cert when it is not nil.
func (e *tlsEnv) dial(t *testing.T, cert *tls.Certificate) *grpc.ClientConn {
	t.Helper()
	cfg := &tls.Config{RootCAs: e.roots, ServerName: "localhost", MinVersion: tls.VersionTLS12}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	conn, err := grpc.NewClient("passthrough:///"+e.addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// agent is an enrolled host: its id and client certificate.
type agent struct {
	id   int64
	name string
	cert tls.Certificate
}

// csrKey returns a new key and its CSR.
func csrKey(t *testing.T) (*ecdsa.PrivateKey, []byte) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	return key, der
}

// enroll gets a join token as admin over gRPC and enrolls name with it, on a
// connection without a client certificate.
func (e *tlsEnv) enroll(t *testing.T, name string) agent {
	t.Helper()
	conn := e.dial(t, nil)
	tok, err := hostv1.NewHostServiceClient(conn).CreateJoinToken(as(t, "admin"), &hostv1.CreateJoinTokenRequest{
		HostName: name, Ttl: durationpb.New(10 * time.Minute),
	})
	if err != nil {
		t.Fatal(err)
	}
	if tok.GetHostName() != name || tok.GetToken() == "" || time.Until(tok.GetExpireTime().AsTime()) > 10*time.Minute {
		t.Fatalf("token %v", tok)
	}
	key, csr := csrKey(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := agentv1.NewAgentServiceClient(conn).Enroll(ctx, &agentv1.EnrollRequest{
		JoinToken: tok.GetToken(), HostName: name, Csr: csr, InnerIpAddress: "10.0.0.1",
	})
	if err != nil {
		t.Fatalf("enroll %s: %v", name, err)
	}
	if res.GetHostId() <= 0 || res.GetCaCertificates() != string(e.ca.CAPEM()) {
		t.Fatalf("enrolled: host %d", res.GetHostId())
	}
	return agent{id: res.GetHostId(), name: name, cert: tls.Certificate{Certificate: [][]byte{res.GetCertificate()}, PrivateKey: key}}
}

// plain returns a call context with no credentials.
func plain(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// connectAs opens an agent stream and sends hello; it returns the stream and
// the first answer's error (nil: a Welcome for host welcome).
func connectAs(t *testing.T, conn *grpc.ClientConn, hello *agentv1.Hello) (stream agentv1.AgentService_ConnectClient, welcome int64, err error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	stream, err = agentv1.NewAgentServiceClient(conn).Connect(ctx)
	if err != nil {
		return nil, 0, err
	}
	if err := stream.Send(&agentv1.ConnectRequest{Kind: &agentv1.ConnectRequest_Hello{Hello: hello}}); err != nil {
		_, err = stream.Recv()
		return stream, 0, err
	}
	m, err := stream.Recv()
	return stream, m.GetWelcome().GetHostId(), err
}

func TestAgentIdentityOverMutualTLS(t *testing.T) {
	e := newTLSEnv(t)
	a, b := e.enroll(t, "host-a"), e.enroll(t, "host-b")
	connA := e.dial(t, &a.cert)

	t.Run("own host", func(t *testing.T) {
		stream, id, err := connectAs(t, connA, &agentv1.Hello{HostName: "host-a", HostId: a.id, InstallHome: "/x"})
		checkCode(t, err, codes.OK, "")
		if id != a.id {
			t.Fatalf("welcome for host %d, want %d", id, a.id)
		}
		_ = stream.CloseSend()
		h, err := e.st.GetHost(context.Background(), a.id)
		if err != nil || h.InstallHome != "/x" {
			t.Fatalf("host %+v, %v", h, err)
		}
	})
	t.Run("first hello without a host id", func(t *testing.T) {
		stream, id, err := connectAs(t, connA, &agentv1.Hello{HostName: "host-a"})
		checkCode(t, err, codes.OK, "")
		if id != a.id {
			t.Fatalf("welcome for host %d, want %d", id, a.id)
		}
		_ = stream.CloseSend()
	})
	t.Run("hello for another host name", func(t *testing.T) {
		_, _, err := connectAs(t, connA, &agentv1.Hello{HostName: "host-b"})
		checkCode(t, err, codes.PermissionDenied, "certificate of host")
	})
	t.Run("hello for another host id", func(t *testing.T) {
		_, _, err := connectAs(t, connA, &agentv1.Hello{HostName: "host-a", HostId: b.id})
		checkCode(t, err, codes.PermissionDenied, "certificate of host")
	})
	t.Run("no client certificate", func(t *testing.T) {
		_, _, err := connectAs(t, e.dial(t, nil), &agentv1.Hello{HostName: "host-a", Token: "anything"})
		checkCode(t, err, codes.Unauthenticated, "client certificate")
	})
	t.Run("renew", func(t *testing.T) {
		key, csr := csrKey(t)
		res, err := agentv1.NewAgentServiceClient(e.dial(t, &b.cert)).RenewCertificate(plain(t), &agentv1.RenewCertificateRequest{Csr: csr})
		checkCode(t, err, codes.OK, "")
		c, err := x509.ParseCertificate(res.GetCertificate())
		if err != nil {
			t.Fatal(err)
		}
		if id, err := pki.HostID(c); err != nil || id != b.id || c.Subject.CommonName != "host-b" {
			t.Fatalf("renewed certificate of host %d %q (%v), want %d", id, c.Subject.CommonName, err, b.id)
		}
		renewed := tls.Certificate{Certificate: [][]byte{res.GetCertificate()}, PrivateKey: key}
		stream, id, err := connectAs(t, e.dial(t, &renewed), &agentv1.Hello{HostName: "host-b", HostId: b.id})
		checkCode(t, err, codes.OK, "")
		if id != b.id {
			t.Fatalf("welcome with the renewed certificate for host %d", id)
		}
		_ = stream.CloseSend()
		_, err = agentv1.NewAgentServiceClient(e.dial(t, nil)).RenewCertificate(plain(t), &agentv1.RenewCertificateRequest{Csr: csr})
		checkCode(t, err, codes.Unauthenticated, "client certificate")
	})
	t.Run("join tokens need ADMIN", func(t *testing.T) {
		hc := hostv1.NewHostServiceClient(e.dial(t, nil))
		_, err := hc.CreateJoinToken(as(t, "manager"), &hostv1.CreateJoinTokenRequest{})
		checkCode(t, err, codes.PermissionDenied, "ADMIN")
		_, err = hc.RevokeHost(as(t, "manager"), &hostv1.RevokeHostRequest{HostId: a.id})
		checkCode(t, err, codes.PermissionDenied, "ADMIN")
		_, err = hc.CreateJoinToken(as(t, "admin"), &hostv1.CreateJoinTokenRequest{Ttl: durationpb.New(25 * time.Hour)})
		checkCode(t, err, codes.InvalidArgument, "ttl")
	})
	t.Run("a used join token", func(t *testing.T) {
		conn := e.dial(t, nil)
		tok, err := hostv1.NewHostServiceClient(conn).CreateJoinToken(as(t, "admin"), &hostv1.CreateJoinTokenRequest{})
		checkCode(t, err, codes.OK, "")
		_, csr := csrKey(t)
		ac := agentv1.NewAgentServiceClient(conn)
		_, err = ac.Enroll(plain(t), &agentv1.EnrollRequest{JoinToken: tok.GetToken(), HostName: "host-c", Csr: csr})
		checkCode(t, err, codes.OK, "")
		_, err = ac.Enroll(plain(t), &agentv1.EnrollRequest{JoinToken: tok.GetToken(), HostName: "host-d", Csr: csr})
		checkCode(t, err, codes.Unauthenticated, "join token is invalid, expired or already used")
	})
}

func TestRevokeEndsTheStreamAndRefusesTheHost(t *testing.T) {
	e := newTLSEnv(t)
	a, b := e.enroll(t, "host-a"), e.enroll(t, "host-b")
	connA := e.dial(t, &a.cert)
	streamA, _, err := connectAs(t, connA, &agentv1.Hello{HostName: "host-a"})
	checkCode(t, err, codes.OK, "")
	streamB, _, err := connectAs(t, e.dial(t, &b.cert), &agentv1.Hello{HostName: "host-b"})
	checkCode(t, err, codes.OK, "")

	res, err := hostv1.NewHostServiceClient(e.dial(t, nil)).RevokeHost(as(t, "admin"), &hostv1.RevokeHostRequest{HostId: a.id})
	checkCode(t, err, codes.OK, "")
	if res.GetHost().GetId() != a.id || res.GetHost().GetRevokeTime() == nil {
		t.Fatalf("revoked host %v", res.GetHost())
	}
	_, err = streamA.Recv()
	checkCode(t, err, codes.PermissionDenied, "revoked")

	_, _, err = connectAs(t, connA, &agentv1.Hello{HostName: "host-a"})
	checkCode(t, err, codes.PermissionDenied, "revoked")
	_, csr := csrKey(t)
	_, err = agentv1.NewAgentServiceClient(connA).RenewCertificate(plain(t), &agentv1.RenewCertificateRequest{Csr: csr})
	checkCode(t, err, codes.PermissionDenied, "revoked")

	// The other host's stream goes on.
	if err := streamB.Send(&agentv1.ConnectRequest{Kind: &agentv1.ConnectRequest_Heartbeat{Heartbeat: &agentv1.Heartbeat{}}}); err != nil {
		t.Fatalf("host-b's stream: %v", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		h, err := e.st.GetHost(context.Background(), a.id)
		if err != nil {
			t.Fatal(err)
		}
		if h.Status == "OFFLINE" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("revoked host is %s", h.Status)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if h, _ := e.st.GetHost(context.Background(), b.id); h.Status != "ONLINE" {
		t.Fatalf("host-b is %s", h.Status)
	}
}
