package integration_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"fmt"
	"net/http"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	agentv1 "agentplane/gen/agentplane/agent/v1"
	hostv1 "agentplane/gen/agentplane/host/v1"
	taskv1 "agentplane/gen/agentplane/task/v1"
)

// Hardening against the real binaries: an unbound join token cannot clone
// a host's identity (and a bound one re-enrolls it, revoking the old
// certificate), and a gRPC signature covers the request it was made for.

// ---- agent identity: one live certificate holder per host ----

// unboundJoinToken creates a join token bound to no host name, as admin.
func (s *server) unboundJoinToken(t *testing.T) string {
	t.Helper()
	r := s.call(t, http.MethodPost, "/api/v2/agent/joinTokens", admin, map[string]any{"ttlSeconds": 600})
	if r.status != http.StatusOK {
		t.Fatalf("creating an unbound join token: %d %s", r.status, r.body)
	}
	var out struct {
		Token string `json:"token"`
	}
	r.decode(t, &out)
	addSecret(out.Token)
	return out.Token
}

// twin starts a second agentd as a's host name, with a state dir of its own
// (a fresh install, or an impostor) and the join token token.
func (s *server) twin(t *testing.T, a *agentd, token string) *agentd {
	t.Helper()
	b := &agentd{name: a.name, env: []string{"AGENTPLANE_JOIN_TOKEN=" + token}, argv: slices.Clone(a.argv)}
	i := slices.Index(b.argv, "--state-dir")
	b.argv[i+1] = filepath.Join(tempDir(t), "agentd-state")
	b.start(t)
	return b
}

// helloWithCertOf opens an agent stream presenting the client certificate
// in a's state dir and returns the error that ends it (nil: welcomed).
func (s *server) helloWithCertOf(t *testing.T, a *agentd) error {
	t.Helper()
	dir := argValue(t, a.argv, "--state-dir")
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, "agent.crt"), filepath.Join(dir, "agent.key"))
	if err != nil {
		t.Fatalf("agentd %s's certificate: %v", a.name, err)
	}
	return agentHello(t, s.connWithCert(t, cert), &agentv1.Hello{HostId: a.hostID, HostName: a.name})
}

// connWithCert is a connection to the gRPC listener presenting cert.
func (s *server) connWithCert(t *testing.T, cert tls.Certificate) *grpc.ClientConn {
	t.Helper()
	cfg := s.tlsConfig()
	cfg.Certificates = []tls.Certificate{cert}
	cc, err := grpc.NewClient(s.grpcAddr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// newKeyAndCSR returns a new P-256 key and a DER certificate request for
// name with it.
func newKeyAndCSR(t *testing.T, name string) (*ecdsa.PrivateKey, []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: name}}, key)
	if err != nil {
		t.Fatal(err)
	}
	return key, der
}

// TestRenewalRetiresTheOldCertificate: a renewed certificate and the one
// it renews both work until the new one is first used; then the old one
// is refused, on the stream and for renewal. An admin lists a host's
// certificates and revokes one by serial, which ends its stream.
func TestRenewalRetiresTheOldCertificate(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	name := "it-renewal"
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	key, csr := newKeyAndCSR(t, name)
	resp, err := agentv1.NewAgentServiceClient(s.conn(t)).Enroll(ctx, &agentv1.EnrollRequest{JoinToken: s.joinToken(t, name), HostName: name, Csr: csr})
	if err != nil {
		t.Fatalf("Enroll: %v", err)
	}
	first := tls.Certificate{Certificate: [][]byte{resp.GetCertificate()}, PrivateKey: key}
	hello := &agentv1.Hello{HostId: resp.GetHostId(), HostName: name}
	if err := agentHello(t, s.connWithCert(t, first), hello); err != nil {
		t.Fatalf("the enrolled certificate: %v", err)
	}
	key2, csr2 := newKeyAndCSR(t, name)
	renewed, err := agentv1.NewAgentServiceClient(s.connWithCert(t, first)).RenewCertificate(ctx, &agentv1.RenewCertificateRequest{Csr: csr2})
	if err != nil {
		t.Fatalf("RenewCertificate: %v", err)
	}
	second := tls.Certificate{Certificate: [][]byte{renewed.GetCertificate()}, PrivateKey: key2}
	if err := agentHello(t, s.connWithCert(t, first), hello); err != nil {
		t.Errorf("the old certificate before the new one is used: %v", err)
	}
	if err := agentHello(t, s.connWithCert(t, second), hello); err != nil {
		t.Fatalf("the renewed certificate: %v", err)
	}
	wantGRPCCode(t, "the old certificate once the new one was used", agentHello(t, s.connWithCert(t, first), hello), codes.PermissionDenied)
	_, csr3 := newKeyAndCSR(t, name)
	_, err = agentv1.NewAgentServiceClient(s.connWithCert(t, first)).RenewCertificate(ctx, &agentv1.RenewCertificateRequest{Csr: csr3})
	wantGRPCCode(t, "renewing with the retired certificate", err, codes.PermissionDenied)

	// An admin lists them and revokes the live one by serial: its open
	// stream ends, and it is refused.
	hosts := hostv1.NewHostServiceClient(s.conn(t))
	list, err := hosts.ListHostCertificates(withCreds(ctx, admin), &hostv1.ListHostCertificatesRequest{HostId: resp.GetHostId()})
	if err != nil {
		t.Fatalf("ListHostCertificates: %v", err)
	}
	cs := list.GetCertificates()
	if len(cs) != 2 || cs[0].GetRevokeTime() == nil || cs[1].GetRevokeTime() != nil || cs[0].GetSource() != "enroll" ||
		cs[1].GetSource() != "renew" || !strings.HasPrefix(cs[1].GetSourceAddress(), "127.0.0.1:") {
		t.Fatalf("certificates %v", cs)
	}
	sctx, scancel := context.WithCancel(ctx)
	defer scancel()
	stream, err := agentv1.NewAgentServiceClient(s.connWithCert(t, second)).Connect(sctx)
	if err == nil {
		err = stream.Send(&agentv1.ConnectRequest{Kind: &agentv1.ConnectRequest_Hello{Hello: hello}})
	}
	if err == nil {
		_, err = stream.Recv() // the welcome
	}
	if err != nil {
		t.Fatalf("a stream of the renewed certificate: %v", err)
	}
	if _, err := hosts.RevokeCertificate(withCreds(ctx, admin), &hostv1.RevokeCertificateRequest{Serial: cs[1].GetSerial()}); err != nil {
		t.Fatalf("RevokeCertificate: %v", err)
	}
	for err == nil {
		_, err = stream.Recv()
	}
	wantGRPCCode(t, "the stream of the revoked certificate", err, codes.PermissionDenied)
	wantGRPCCode(t, "the revoked certificate", agentHello(t, s.connWithCert(t, second), hello), codes.PermissionDenied)

	ev := s.auditEvents(t, fmt.Sprintf("hostId=%d&size=100", resp.GetHostId())).Contents
	wantEvent(t, ev, "the renewal, naming its certificate", func(e auditEventJSON) bool {
		return e.Operation == "/agentplane.agent.v1.AgentService/RenewCertificate" && e.Outcome == "OK" &&
			strings.HasPrefix(e.Target, "certificate:") && e.SourceAddress != ""
	})
	wantEvent(t, ev, "the revocation", func(e auditEventJSON) bool {
		return e.Operation == "/agentplane.host.v1.HostService/RevokeCertificate" && e.Outcome == "OK" &&
			e.Target == "certificate:"+cs[1].GetSerial() && e.Username == "admin"
	})
}

// TestEnrollExistingName: a join token bound to no name cannot enroll the
// name of a host that holds a live certificate (the host's agentd keeps its
// one stream); a token bound to the name re-enrolls it: the old
// certificate is revoked, its stream ends, and it is refused on reconnect,
// while the new agentd serves the host. The audit names the serials and
// source addresses.
func TestEnrollExistingName(t *testing.T) {
	t.Parallel()
	s, _, _, a := fleetOfOne(t, time.Second)

	impostor := s.twin(t, a, s.unboundJoinToken(t))
	waitFor(t, 30*time.Second, "the impostor agentd to give up", impostor.proc.exited)
	if log := impostor.proc.log(); !strings.Contains(log, "PermissionDenied") || !strings.Contains(log, "bound to") {
		t.Errorf("the impostor's enrollment was not refused naming a bound token:\n%s", tail(impostor.proc.logPath, 20))
	}
	if err := s.helloWithCertOf(t, a); err != nil {
		t.Fatalf("the first agentd's certificate after the refused clone: %v", err)
	}
	if n := countLines(s.proc.log(), "agent stream ended by the server", "replaced"); n > 1 {
		t.Errorf("the host's stream was replaced %d times (once by the test's own hello)", n)
	}

	// A token bound to the name re-enrolls it.
	linesBefore := countLines(a.proc.log(), "connection to server lost", "revoked")
	fresh := s.twin(t, a, s.joinToken(t, a.name))
	waitFor(t, 30*time.Second, "the first agentd's stream to end on revocation", func() bool {
		return countLines(a.proc.log(), "connection to server lost", "revoked") > linesBefore
	})
	s.waitHost(t, a.name, 30*time.Second, "ONLINE again", func(h hostJSON) bool { return h.Status == "ONLINE" })
	wantGRPCCode(t, "the first agentd's revoked certificate", s.helloWithCertOf(t, a), codes.PermissionDenied)
	// Still refused after it retried on its own, while the new agentd
	// holds the host.
	waitFor(t, 30*time.Second, "the first agentd to be refused again", func() bool {
		return countLines(a.proc.log(), "connection to server lost", "revoked") > linesBefore+1 || a.proc.exited()
	})
	if h := s.getHost(t, a.hostID); h.Status != "ONLINE" {
		t.Errorf("host %d is %s after the old agentd retried, want ONLINE", a.hostID, h.Status)
	}
	if n := countLines(fresh.proc.log(), "connection to server lost"); n != 0 {
		t.Errorf("the re-enrolled agentd lost its stream %d times", n)
	}
	fresh.hostID = a.hostID
	if err := s.helloWithCertOf(t, fresh); err != nil {
		t.Errorf("the re-enrolled agentd's certificate: %v", err)
	}

	ev := s.auditEvents(t, fmt.Sprintf("hostId=%d&size=100", a.hostID)).Contents
	wantEvent(t, ev, "the re-enrollment, naming its certificate", func(e auditEventJSON) bool {
		return e.Operation == "/agentplane.agent.v1.AgentService/Enroll" && e.Outcome == "OK" &&
			strings.HasPrefix(e.Target, "certificate:") && strings.HasPrefix(e.SourceAddress, "127.0.0.1:")
	})
	all := s.auditEvents(t, "size=100").Contents
	wantEvent(t, all, "the refused clone", func(e auditEventJSON) bool {
		return e.Operation == "/agentplane.agent.v1.AgentService/Enroll" && e.Outcome == "PERMISSION_DENIED" &&
			e.Username == "agent:"+a.name && e.SourceAddress != ""
	})
}

// ---- gRPC signatures cover the request ----

// grpcSignedReq signs a call of method with request req as grpcSigned does,
// with the request's digest in x-ocp-content-sha256: the lowercase hex
// SHA-256 of its deterministic protobuf serialization.
func grpcSignedReq(ctx context.Context, k accessKey, authority, method string, req proto.Message, date time.Time, ocp map[string]string) (context.Context, string) {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(req)
	if err != nil {
		panic(err)
	}
	sum := sha256.Sum256(b)
	m := map[string]string{"x-ocp-content-sha256": hex.EncodeToString(sum[:])}
	for k, v := range ocp {
		m[k] = v
	}
	return grpcSigned(ctx, k, authority, method, date, m)
}

// TestSignatureCoversRequest: a captured gRPC signature replayed with
// another request (StopAgent of another host; WatchTask of another task) is
// refused UNAUTHENTICATED and acts on nothing; the request it was made for
// passes; a signed call without the digest is refused.
func TestSignatureCoversRequest(t *testing.T) {
	t.Parallel()
	bin := grpcurl(t)
	s, _, _, a := fleetOfOne(t, time.Second)
	operator := &creds{"sigop", "sigop-password-1"}
	s.createUser(t, operator, "HOST_MANAGER", "TASK_VIEWER")
	k := s.createAccessKey(t, operator.user)
	var sent []string
	cc := s.conn(t)
	hosts := hostv1.NewHostServiceClient(cc)
	tasks := taskv1.NewTaskServiceClient(cc)
	const stopMethod = "/agentplane.host.v1.HostService/StopAgent"
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	// Captured: a signature for StopAgent of a host that does not exist.
	unknown := &hostv1.StopAgentRequest{HostId: a.hostID + 1000}
	sctx, authz := grpcSignedReq(ctx, k, s.grpcAddr, stopMethod, unknown, time.Now(), nil)
	sent = append(sent, authz)
	_, err := hosts.StopAgent(sctx, unknown)
	wantGRPCCode(t, "the signed stop of an unknown host", err, codes.NotFound)
	tasksBefore := s.countTasks(t, fmt.Sprintf("hostId=%d", a.hostID))
	// Replayed for the real host.
	_, err = hosts.StopAgent(sctx, &hostv1.StopAgentRequest{HostId: a.hostID})
	wantGRPCCode(t, "the signature replayed for another host", err, codes.Unauthenticated)
	if n := s.countTasks(t, fmt.Sprintf("hostId=%d", a.hostID)); n != tasksBefore {
		t.Errorf("the replayed signature created a task: %d tasks, were %d", n, tasksBefore)
	}
	// The digest header rewritten to match the new request: the
	// signature no longer matches.
	mine := &hostv1.StopAgentRequest{HostId: a.hostID}
	b, _ := proto.MarshalOptions{Deterministic: true}.Marshal(mine)
	sum := sha256.Sum256(b)
	md, _ := metadata.FromOutgoingContext(sctx)
	md = md.Copy()
	md.Set("x-ocp-content-sha256", hex.EncodeToString(sum[:]))
	_, err = hosts.StopAgent(metadata.NewOutgoingContext(ctx, md), mine)
	wantGRPCCode(t, "the digest rewritten after signing", err, codes.Unauthenticated)
	// Signed without a digest at all.
	sctx, authz = grpcSigned(ctx, k, s.grpcAddr, stopMethod, time.Now(), nil)
	sent = append(sent, authz)
	_, err = hosts.StopAgent(sctx, mine)
	wantGRPCCode(t, "a signature without the request digest", err, codes.Unauthenticated)
	if n := s.countTasks(t, fmt.Sprintf("hostId=%d", a.hostID)); n != tasksBefore {
		t.Errorf("refused calls created tasks: %d tasks, were %d", n, tasksBefore)
	}

	// The right one passes.
	sctx, authz = grpcSignedReq(ctx, k, s.grpcAddr, stopMethod, mine, time.Now(), map[string]string{"x-ocp-request-id": "it-sig-1"})
	sent = append(sent, authz)
	resp, err := hosts.StopAgent(sctx, mine)
	if err != nil {
		t.Fatalf("the signed StopAgent: %v", err)
	}
	taskID := resp.GetTask().GetId()

	// A server stream covers its one request.
	const watchMethod = "/agentplane.task.v1.TaskService/WatchTask"
	watchOther := &taskv1.WatchTaskRequest{Id: taskID + 1000}
	sctx, authz = grpcSignedReq(ctx, k, s.grpcAddr, watchMethod, watchOther, time.Now(), nil)
	sent = append(sent, authz)
	ws, err := tasks.WatchTask(sctx, &taskv1.WatchTaskRequest{Id: taskID})
	if err == nil {
		_, err = ws.Recv()
	}
	wantGRPCCode(t, "a WatchTask signature replayed for another task", err, codes.Unauthenticated)
	watch := &taskv1.WatchTaskRequest{Id: taskID}
	sctx, authz = grpcSignedReq(ctx, k, s.grpcAddr, watchMethod, watch, time.Now(), nil)
	sent = append(sent, authz)
	ws, err = tasks.WatchTask(sctx, watch)
	if err == nil {
		_, err = ws.Recv()
	}
	if err != nil {
		t.Errorf("the signed WatchTask: %v", err)
	}
	s.waitFinal(t, taskID)

	// grpcurl, as the README says: the digest of the request given as
	// JSON (here converted by protojson, as buf convert would), the date,
	// and the signature over them, all as -H metadata.
	reqJSON := fmt.Sprintf(`{"id": %d}`, a.hostID)
	var get hostv1.GetHostRequest
	if err := protojson.Unmarshal([]byte(reqJSON), &get); err != nil {
		t.Fatal(err)
	}
	gctx, authz := grpcSignedReq(ctx, k, s.grpcAddr, "/agentplane.host.v1.HostService/GetHost", &get, time.Now(), nil)
	sent = append(sent, authz)
	gmd, _ := metadata.FromOutgoingContext(gctx)
	args := []string{"-cacert", s.caFile}
	for _, name := range []string{"date", "x-ocp-content-sha256", "authorization"} {
		args = append(args, "-H", name+": "+gmd.Get(name)[0])
	}
	gctx, gcancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer gcancel()
	out, err := exec.CommandContext(gctx, bin, append(args, "-d", reqJSON, s.grpcAddr, "agentplane.host.v1.HostService/GetHost")...).CombinedOutput()
	if err != nil || !strings.Contains(string(out), a.name) {
		t.Errorf("grpcurl signed GetHost: %v\n%s", err, out)
	}
	other := fmt.Sprintf(`{"id": %d}`, a.hostID+1)
	out, err = exec.CommandContext(gctx, bin, append(args, "-d", other, s.grpcAddr, "agentplane.host.v1.HostService/GetHost")...).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "Unauthenticated") {
		t.Errorf("grpcurl with the signature replayed for another host: %v\n%s", err, out)
	}

	ev := s.auditEvents(t, "size=100").Contents
	wantEvent(t, ev, "the refused replay", func(e auditEventJSON) bool {
		return e.Operation == stopMethod && e.Outcome == "UNAUTHENTICATED" && strings.Contains(e.Message, "x-ocp-content-sha256")
	})
	for _, v := range sent {
		addSecret(v)
	}
	checkLogLacks(t, s.proc, sent)
}
