// Package testsrv is an in-process AgentService over real TLS on loopback
// for agentd's tests: a test CA, Enroll with one accepted join token,
// RenewCertificate for the calling client certificate, and a minimal Connect
// that hands each stream, with the certificate it was opened with, to the
// test. It knows nothing of the real server.
package testsrv

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	agentv1 "agentplane/gen/agentplane/agent/v1"
)

// Wait bounds every wait of a test on agentd.
const Wait = 10 * time.Second

// RejectMessage is Enroll's message for a wrong join token.
const RejectMessage = "join token is invalid, used or expired"

// Clock is a settable clock; the zero Clock is not usable, see NewClock.
type Clock struct {
	mu sync.Mutex
	t  time.Time
}

// NewClock returns a clock stopped at t.
func NewClock(t time.Time) *Clock { return &Clock{t: t} }

// Now returns the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

// Add moves the clock by d.
func (c *Clock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// Options configure a Server.
type Options struct {
	CA        *CA           // signs and verifies client certificates; required
	ServerCA  *CA           // signs the server's certificate; default CA
	Token     string        // the join token Enroll accepts; in Plaintext mode, the Hello token
	HostID    int64         // assigned at enrollment; default 7
	Lifetime  time.Duration // of issued certificates, from Clock's now; default 1h
	Backdate  time.Duration // issued certificates start this long before Clock's now
	Clock     *Clock        // for issuing and verifying client certificates; default real time
	Plaintext bool          // no TLS: Connect checks the Hello's token
}

// Server is a running test server; it stops at test cleanup.
type Server struct {
	agentv1.UnimplementedAgentServiceServer
	Addr string

	// FailEnrolls and FailRenews are how many of the next calls fail with
	// UNAVAILABLE.
	FailEnrolls, FailRenews atomic.Int32
	// Epoch is the epoch the next Welcome carries (0: none, as a server
	// without epochs).
	Epoch atomic.Int64
	// HoldBegins: while set, go-ahead requests are not answered but put
	// in Reqs, for the test to answer (or not).
	HoldBegins atomic.Bool

	o       Options
	now     func() time.Time
	gs      *grpc.Server
	lis     *trackingListener
	streams chan *Stream

	mu      sync.Mutex
	enrolls int
	renews  int
	issued  []*x509.Certificate
}

// Stream is one accepted Connect stream, after its Hello was answered with a
// Welcome.
type Stream struct {
	Hello      *agentv1.Hello
	Peer       *x509.Certificate            // the client certificate; nil in Plaintext mode
	Reqs       chan *agentv1.ConnectRequest // every message after the Hello except heartbeats and go-ahead requests (each answered: proceed; unless Server.HoldBegins)
	Heartbeats atomic.Int64                 // heartbeats received
	Send       chan *agentv1.ConnectResponse
	Done       chan struct{} // closed when the stream ended
}

// Start runs a Server on 127.0.0.1.
func Start(t testing.TB, o Options) *Server {
	t.Helper()
	if o.ServerCA == nil {
		o.ServerCA = o.CA
	}
	if o.HostID == 0 {
		o.HostID = 7
	}
	if o.Lifetime == 0 {
		o.Lifetime = time.Hour
	}
	now := time.Now
	if o.Clock != nil {
		now = o.Clock.Now
	}
	l, err := new(net.ListenConfig).Listen(t.Context(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{Addr: l.Addr().String(), o: o, now: now, lis: &trackingListener{Listener: l}, streams: make(chan *Stream, 16)}
	var opts []grpc.ServerOption
	if !o.Plaintext {
		opts = append(opts, grpc.Creds(credentials.NewTLS(&tls.Config{
			Certificates: []tls.Certificate{o.ServerCA.ServerCertificate(t)},
			ClientAuth:   tls.VerifyClientCertIfGiven, // Enroll comes without one
			ClientCAs:    o.CA.Pool(),
			Time:         now,
			MinVersion:   tls.VersionTLS12,
		})))
	}
	gs := grpc.NewServer(opts...)
	s.gs = gs
	agentv1.RegisterAgentServiceServer(gs, s)
	go func() { _ = gs.Serve(s.lis) }() // returns once Stop is called
	t.Cleanup(gs.Stop)
	return s
}

// Stop stops the server as a replica that goes away does: the listener is
// closed (its port refuses connections) and every connection and stream
// ends.
func (s *Server) Stop() { s.gs.Stop() }

// Streams delivers the accepted streams, for a test that waits on several
// servers at once; NextStream waits on one.
func (s *Server) Streams() <-chan *Stream { return s.streams }

// Enrolls returns how many enrollments succeeded.
func (s *Server) Enrolls() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.enrolls
}

// Renews returns how many renewals succeeded.
func (s *Server) Renews() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.renews
}

// Issued returns the certificates issued so far, oldest first.
func (s *Server) Issued() []*x509.Certificate {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*x509.Certificate(nil), s.issued...)
}

// CloseConns drops every TCP connection accepted so far: clients must
// connect (and handshake) again.
func (s *Server) CloseConns() { s.lis.closeAll() }

// NextStream waits for the next accepted stream.
func (s *Server) NextStream(t testing.TB) *Stream {
	t.Helper()
	select {
	case st := <-s.streams:
		return st
	case <-time.After(Wait):
		t.Fatal("no stream from agentd")
		return nil
	}
}

// Enroll implements AgentService.
func (s *Server) Enroll(_ context.Context, req *agentv1.EnrollRequest) (*agentv1.EnrollResponse, error) {
	if s.FailEnrolls.Add(-1) >= 0 {
		return nil, status.Error(codes.Unavailable, "test: try again")
	}
	if req.GetJoinToken() != s.o.Token || s.o.Token == "" {
		return nil, status.Error(codes.Unauthenticated, RejectMessage)
	}
	if req.GetHostName() == "" {
		return nil, status.Error(codes.InvalidArgument, "host_name is required")
	}
	der, err := s.issue(req.GetCsr(), s.o.HostID)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.enrolls++
	s.mu.Unlock()
	return &agentv1.EnrollResponse{HostId: s.o.HostID, Certificate: der, CaCertificates: string(s.o.CA.PEM)}, nil
}

// RenewCertificate implements AgentService.
func (s *Server) RenewCertificate(ctx context.Context, req *agentv1.RenewCertificateRequest) (*agentv1.RenewCertificateResponse, error) {
	cert, err := peerCert(ctx)
	if err != nil {
		return nil, err
	}
	if s.FailRenews.Add(-1) >= 0 {
		return nil, status.Error(codes.Unavailable, "test: try again")
	}
	id, err := hostIDOf(cert)
	if err != nil {
		return nil, status.Error(codes.Unauthenticated, err.Error())
	}
	der, err := s.issue(req.GetCsr(), id)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.renews++
	s.mu.Unlock()
	return &agentv1.RenewCertificateResponse{Certificate: der}, nil
}

func (s *Server) issue(csr []byte, hostID int64) ([]byte, error) {
	now := s.now()
	der, err := s.o.CA.Sign(csr, hostID, now.Add(-s.o.Backdate), now.Add(s.o.Lifetime))
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, "bad csr: "+err.Error())
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	s.mu.Lock()
	s.issued = append(s.issued, c)
	s.mu.Unlock()
	return der, nil
}

// Connect implements AgentService.
func (s *Server) Connect(stream agentv1.AgentService_ConnectServer) error {
	ctx := stream.Context()
	hostID := s.o.HostID
	var cert *x509.Certificate
	if !s.o.Plaintext {
		c, err := peerCert(ctx)
		if err != nil {
			return err
		}
		if hostID, err = hostIDOf(c); err != nil {
			return status.Error(codes.Unauthenticated, err.Error())
		}
		cert = c
	}
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	if s.o.Plaintext && first.GetHello().GetToken() != s.o.Token {
		return status.Error(codes.Unauthenticated, "bad token")
	}
	if err := stream.Send(&agentv1.ConnectResponse{Kind: &agentv1.ConnectResponse_Welcome{Welcome: &agentv1.Welcome{
		HostId: hostID, HeartbeatInterval: durationpb.New(50 * time.Millisecond), Epoch: s.Epoch.Load(),
	}}}); err != nil {
		return err
	}
	st := &Stream{Hello: first.GetHello(), Peer: cert, Reqs: make(chan *agentv1.ConnectRequest, 1024),
		Send: make(chan *agentv1.ConnectResponse), Done: make(chan struct{})}
	defer close(st.Done)
	select {
	case s.streams <- st:
	case <-ctx.Done():
		return ctx.Err()
	}
	recvDone := make(chan struct{})
	go func() {
		defer close(recvDone)
		for {
			m, err := stream.Recv()
			if err != nil {
				return
			}
			if m.GetHeartbeat() != nil {
				st.Heartbeats.Add(1)
				continue
			}
			if b := m.GetBegin(); b != nil && !s.HoldBegins.Load() { // every command may proceed
				a := &agentv1.CommandBeginAnswer{SubtaskId: b.GetSubtaskId(), Attempt: b.GetAttempt(), Proceed: true}
				select {
				case st.Send <- &agentv1.ConnectResponse{Kind: &agentv1.ConnectResponse_BeginAnswer{BeginAnswer: a}}:
				case <-ctx.Done():
					return
				}
				continue
			}
			select {
			case st.Reqs <- m:
			case <-ctx.Done():
				return
			}
		}
	}()
	for {
		select {
		case m := <-st.Send:
			if err := stream.Send(m); err != nil {
				return err
			}
		case <-recvDone:
			return nil
		case <-ctx.Done():
			<-recvDone
			return ctx.Err()
		}
	}
}

// peerCert returns the verified client certificate of a call.
func peerCert(ctx context.Context) (*x509.Certificate, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil, status.Error(codes.Unauthenticated, "no peer")
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(ti.State.VerifiedChains) == 0 || len(ti.State.VerifiedChains[0]) == 0 {
		return nil, status.Error(codes.Unauthenticated, "client certificate required")
	}
	return ti.State.VerifiedChains[0][0], nil
}

func hostIDOf(c *x509.Certificate) (int64, error) {
	for _, u := range c.URIs {
		if u.Scheme == "agentplane" && u.Host == "hosts" && len(u.Path) > 1 {
			return strconv.ParseInt(u.Path[1:], 10, 64)
		}
	}
	return 0, errors.New("no host URI in the client certificate")
}

// trackingListener remembers accepted connections so that a test can drop
// them.
type trackingListener struct {
	net.Listener
	mu    sync.Mutex
	conns []net.Conn
}

func (l *trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.mu.Lock()
		l.conns = append(l.conns, c)
		l.mu.Unlock()
	}
	return c, err
}

func (l *trackingListener) closeAll() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range l.conns {
		c.Close()
	}
	l.conns = nil
}

// Push sends m to agentd on the stream.
func (st *Stream) Push(t testing.TB, m *agentv1.ConnectResponse) {
	t.Helper()
	select {
	case st.Send <- m:
	case <-time.After(Wait):
		t.Fatal("cannot send to agentd")
	}
}

// Next returns the next message (not a heartbeat) from agentd.
func (st *Stream) Next(t testing.TB) *agentv1.ConnectRequest {
	t.Helper()
	select {
	case m := <-st.Reqs:
		return m
	case <-time.After(Wait):
		t.Fatal("no message from agentd")
		return nil
	}
}

// Poll waits until cond holds, or fails the test after Wait.
func Poll(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(Wait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// String names a certificate by serial, for test messages.
func String(c *x509.Certificate) string {
	if c == nil {
		return "<none>"
	}
	return fmt.Sprintf("serial %s", c.SerialNumber.Text(16))
}
