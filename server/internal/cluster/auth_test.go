package cluster_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	agentv1 "agentplane/gen/agentplane/agent/v1"
	hostv1 "agentplane/gen/agentplane/host/v1"
	replicav1 "agentplane/gen/agentplane/replica/v1"
)

// dial connects to addr over TLS, presenting cert when set.
func dial(t *testing.T, c *cluster3, addr string, cert *tls.Certificate) *grpc.ClientConn {
	t.Helper()
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(c.ca.CAPEM())
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: roots}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return cc
}

// ReplicaService takes only a replica's certificate: an agent's, or none,
// is refused; and the agent stream refuses a replica's certificate.
func TestReplicaServiceTakesOnlyReplicas(t *testing.T) {
	c := newCluster(t, "a")
	a := c.nodes["a"]
	ag := c.host("h1", time.Second)
	replicaCert, err := c.ca.ReplicaCertificate("b")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for name, cert := range map[string]*tls.Certificate{"an agent's certificate": &ag.cert, "no certificate": nil} {
		cl := replicav1.NewReplicaServiceClient(dial(t, c, a.addr, cert))
		if _, err := cl.Notify(ctx, &replicav1.NotifyRequest{TaskIds: []int64{1}}); status.Code(err) != codes.Unauthenticated {
			t.Fatalf("Notify with %s: %v, want Unauthenticated", name, err)
		}
		if _, err := cl.Ack(ctx, &replicav1.AckRequest{HostId: ag.hostID, SubtaskId: 1, Attempt: 1}); status.Code(err) != codes.Unauthenticated {
			t.Fatalf("Ack with %s: %v, want Unauthenticated", name, err)
		}
		s, err := cl.Dispatch(ctx)
		if err == nil {
			_ = s.Send(&replicav1.DispatchRequest{Msg: &replicav1.DispatchRequest_Command{Command: &replicav1.Command{HostId: ag.hostID, SubtaskId: 1, Attempt: 1,
				Action: &replicav1.Command_StopAgent{StopAgent: &replicav1.StopAgent{}}}}})
			_, err = s.Recv()
		}
		if status.Code(err) != codes.Unauthenticated {
			t.Fatalf("Dispatch with %s: %v, want Unauthenticated", name, err)
		}
	}
	a.mu.Lock()
	notified := len(a.notified)
	a.mu.Unlock()
	if notified != 0 {
		t.Fatalf("refused Notify calls reached the engine: %d ids", notified)
	}
	cl := replicav1.NewReplicaServiceClient(dial(t, c, a.addr, &replicaCert))
	if _, err := cl.Notify(ctx, &replicav1.NotifyRequest{TaskIds: []int64{7}}); err != nil {
		t.Fatalf("Notify with a replica's certificate: %v", err)
	}
	// The agent stream: a replica's certificate is not an agent's.
	stream, err := agentv1.NewAgentServiceClient(dial(t, c, a.addr, &replicaCert)).Connect(ctx)
	if err == nil {
		_ = stream.Send(&agentv1.ConnectRequest{Kind: &agentv1.ConnectRequest_Hello{Hello: &agentv1.Hello{HostName: "b"}}})
		_, err = stream.Recv()
	}
	if status.Code(err) != codes.Unauthenticated {
		t.Fatalf("agent stream with a replica's certificate: %v, want Unauthenticated", err)
	}
	// A user's service: a certificate is no user's credentials.
	if _, err := hostv1.NewHostServiceClient(dial(t, c, a.addr, &replicaCert)).ListHosts(ctx, &hostv1.ListHostsRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("ListHosts with a replica's certificate: %v, want Unauthenticated", err)
	}
}
