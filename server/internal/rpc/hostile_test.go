package rpc

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	agentv1 "agentplane/gen/agentplane/agent/v1"
	hostv1 "agentplane/gen/agentplane/host/v1"
	"agentplane/server/internal/enroll"
	"agentplane/server/internal/fleet"
	"agentplane/server/internal/host"
	"agentplane/server/internal/pki"
	"agentplane/server/internal/store"
)

// A misbehaving agentd must not crash the server or affect another host.
// Each case runs the real server over loopback mutual TLS (pki, enroll,
// fleet, SQLite) with a well-behaved host connected the whole time; at the
// end that host is ONLINE, its stream never ended, and a stop dispatched
// to it succeeds.

// hostileEnv is tlsEnv with its fleet at hand, its limits chosen, and the
// server's log captured.
type hostileEnv struct {
	*tlsEnv
	fleet *fleet.Fleet
	logs  *syncBuf
}

type hostileConfig struct {
	limits       AgentLimits
	maxRecvBytes int
	fleet        fleet.Config // the bounds; the rest is filled in
}

func newHostileEnv(t *testing.T, c hostileConfig) *hostileEnv {
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
	logs := &syncBuf{}
	log := zerolog.New(logs)
	fc := c.fleet
	fc.Registry, fc.Logs, fc.Log = st, st, log
	f := fleet.New(fc)
	svc := enroll.New(enroll.Config{Store: st, Signer: ca, Sessions: f, Log: zerolog.Nop()})
	srv := NewServer(Config{
		Hosts: &apiHosts{}, Tasks: &apiTasks{}, Users: apiUsers{}, Fleet: f, Enroll: svc, Log: log,
		MaxRecvBytes: c.maxRecvBytes, AgentLimits: c.limits,
	}, grpc.Creds(credentials.NewTLS(ca.MutualTLSConfig())))
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
	roots := x509Pool(ca)
	return &hostileEnv{tlsEnv: &tlsEnv{addr: lis.Addr().String(), ca: ca, st: st, roots: roots}, fleet: f, logs: logs}
}

// testAgent is one agent stream: received commands and acks go to cmds and
// acks; ended receives the stream's end.
type testAgent struct {
	agent
	stream agentv1.AgentService_ConnectClient
	sendMu sync.Mutex
	cmds   chan *agentv1.Command
	acks   chan *agentv1.ResultAck
	ended  chan error // buffered 1
}

// openAgent opens a stream with a 60 s deadline on conn and sends hello; it
// returns the first answer's error (nil: a Welcome came, and a goroutine
// now reads the stream).
func openAgent(t *testing.T, conn *grpc.ClientConn, a agent, hello *agentv1.Hello) (*testAgent, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	stream, err := agentv1.NewAgentServiceClient(conn).Connect(ctx)
	if err != nil {
		return nil, err
	}
	ta := &testAgent{agent: a, stream: stream, cmds: make(chan *agentv1.Command, 16), acks: make(chan *agentv1.ResultAck, 64), ended: make(chan error, 1)}
	if err := ta.send(&agentv1.ConnectRequest{Kind: &agentv1.ConnectRequest_Hello{Hello: hello}}); err != nil {
		_, err = stream.Recv()
		return ta, err
	}
	m, err := stream.Recv()
	if err != nil {
		return ta, err
	}
	if m.GetWelcome().GetHostId() != a.id {
		t.Fatalf("welcome %v, want host %d", m, a.id)
	}
	go func() {
		for {
			m, err := stream.Recv()
			if err != nil {
				ta.ended <- err
				return
			}
			switch {
			case m.GetCommand() != nil:
				ta.cmds <- m.GetCommand()
			case m.GetAck() != nil:
				ta.acks <- m.GetAck()
			}
		}
	}()
	return ta, nil
}

// connectAgent opens a's stream on a connection of its own, with its own
// certificate and an honest Hello.
func (e *hostileEnv) connectAgent(t *testing.T, a agent) *testAgent {
	t.Helper()
	ta, err := openAgent(t, e.dial(t, &a.cert), a, &agentv1.Hello{HostName: a.name, HostId: a.id})
	if err != nil {
		t.Fatalf("connecting %s: %v", a.name, err)
	}
	return ta
}

func (a *testAgent) send(m *agentv1.ConnectRequest) error {
	a.sendMu.Lock()
	defer a.sendMu.Unlock()
	return a.stream.Send(m)
}

// end waits for the server to end the stream and returns why.
func (a *testAgent) end(t *testing.T) error {
	t.Helper()
	select {
	case err := <-a.ended:
		return err
	case <-time.After(20 * time.Second):
		t.Fatalf("the stream of %s did not end", a.name)
		return nil
	}
}

func result(subtask int64, attempt int32, msg string) *agentv1.ConnectRequest {
	return &agentv1.ConnectRequest{Kind: &agentv1.ConnectRequest_Result{Result: &agentv1.CommandResult{
		SubtaskId: subtask, Attempt: attempt, Outcome: agentv1.CommandOutcome_COMMAND_OUTCOME_SUCCEEDED, Message: msg,
	}}}
}

func progress(subtask int64, attempt int32, msg string) *agentv1.ConnectRequest {
	return &agentv1.ConnectRequest{Kind: &agentv1.ConnectRequest_Progress{Progress: &agentv1.CommandProgress{
		SubtaskId: subtask, Attempt: attempt, Message: msg,
	}}}
}

func heartbeat() *agentv1.ConnectRequest {
	return &agentv1.ConnectRequest{Kind: &agentv1.ConnectRequest_Heartbeat{Heartbeat: &agentv1.Heartbeat{
		Processes: []*agentv1.Process{{Pid: 7, Name: "ocp_agentd"}},
	}}}
}

// dispatch sends a stop of (subtask, 1) to the host through the fleet, as
// the engine does; the answer comes on the returned channel.
func (e *hostileEnv) dispatch(hostID, subtask int64) <-chan fleet.Result {
	out := make(chan fleet.Result, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		r, err := e.fleet.Dispatch(ctx, hostID, fleet.Command{SubtaskID: subtask, Attempt: 1, Timeout: time.Minute, StopAgent: &fleet.StopAgent{}})
		if err != nil {
			r.Message = "dispatch failed: " + err.Error()
		}
		out <- r
	}()
	return out
}

// nextCommand returns the next command a received.
func (a *testAgent) nextCommand(t *testing.T) *agentv1.Command {
	t.Helper()
	select {
	case c := <-a.cmds:
		return c
	case err := <-a.ended:
		t.Fatalf("the stream of %s ended waiting for a command: %v", a.name, err)
	case <-time.After(20 * time.Second):
		t.Fatalf("%s got no command", a.name)
	}
	return nil
}

// nextAck returns the next ack a received.
func (a *testAgent) nextAck(t *testing.T) *agentv1.ResultAck {
	t.Helper()
	select {
	case k := <-a.acks:
		return k
	case err := <-a.ended:
		t.Fatalf("the stream of %s ended waiting for an ack: %v", a.name, err)
	case <-time.After(20 * time.Second):
		t.Fatalf("%s got no ack", a.name)
	}
	return nil
}

// waitStatus waits until the host's stored status is want.
func (e *hostileEnv) waitStatus(t *testing.T, id int64, want host.Status) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		h, err := e.st.GetHost(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		if h.Status == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("host %d is %s, want %s", id, h.Status, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// checkGood fails unless the good host's stream is still up, its host
// ONLINE, and a stop dispatched to it succeeds.
func (e *hostileEnv) checkGood(t *testing.T, good *testAgent, subtask int64) {
	t.Helper()
	select {
	case err := <-good.ended:
		t.Fatalf("the good host's stream ended: %v", err)
	default:
	}
	e.waitStatus(t, good.id, host.StatusOnline)
	res := e.dispatch(good.id, subtask)
	cmd := good.nextCommand(t)
	if cmd.GetSubtaskId() != subtask || cmd.GetStopAgent() == nil {
		t.Fatalf("the good host got %v", cmd)
	}
	if err := good.send(result(subtask, 1, "stopped")); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-res:
		if r.Outcome != fleet.Succeeded || r.Message != "stopped" {
			t.Fatalf("the good host's stop: %+v", r)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the good host's stop did not end")
	}
}

// setup enrolls a good and a bad host and connects the good one.
func (e *hostileEnv) setup(t *testing.T) (good *testAgent, bad agent) {
	t.Helper()
	g, b := e.enroll(t, "good"), e.enroll(t, "bad")
	return e.connectAgent(t, g), b
}

func TestHugeMessagesEndTheStream(t *testing.T) {
	const max = 256 << 10
	e := newHostileEnv(t, hostileConfig{maxRecvBytes: max})
	good, bad := e.setup(t)
	huge := &agentv1.Process{Name: "ocp_agentd", Cmdline: strings.Repeat("x", max)}

	t.Run("after the hello", func(t *testing.T) {
		b := e.connectAgent(t, bad)
		e.waitStatus(t, bad.id, host.StatusOnline)
		_ = b.send(&agentv1.ConnectRequest{Kind: &agentv1.ConnectRequest_Heartbeat{Heartbeat: &agentv1.Heartbeat{Processes: []*agentv1.Process{huge}}}})
		checkCode(t, b.end(t), codes.ResourceExhausted, "larger than max")
		e.waitStatus(t, bad.id, host.StatusOffline)
	})
	t.Run("as the hello", func(t *testing.T) {
		_, err := openAgent(t, e.dial(t, &bad.cert), bad, &agentv1.Hello{HostName: bad.name, Processes: []*agentv1.Process{huge}})
		checkCode(t, err, codes.ResourceExhausted, "larger than max")
	})
	t.Run("a report over the fleet's bounds", func(t *testing.T) {
		b := e.connectAgent(t, bad)
		_ = b.send(&agentv1.ConnectRequest{Kind: &agentv1.ConnectRequest_Heartbeat{Heartbeat: &agentv1.Heartbeat{
			Processes: []*agentv1.Process{{Name: "ocp_agentd", Cmdline: strings.Repeat("x", fleet.MaxTextBytes+1)}},
		}}})
		checkCode(t, b.end(t), codes.InvalidArgument, "at most")
	})
	e.checkGood(t, good, 1)
}

func TestFloodingAgentIsCutOff(t *testing.T) {
	e := newHostileEnv(t, hostileConfig{limits: AgentLimits{MsgsPerSec: 20, MsgBurst: 40}})
	good, bad := e.setup(t)
	for name, msg := range map[string]*agentv1.ConnectRequest{
		"heartbeats": heartbeat(),
		"progress":   progress(424242, 1, "flood"),
	} {
		t.Run(name, func(t *testing.T) {
			b := e.connectAgent(t, bad)
			e.waitStatus(t, bad.id, host.StatusOnline)
			for range 1000 {
				if b.send(msg) != nil {
					break // the server ended the stream
				}
			}
			checkCode(t, b.end(t), codes.ResourceExhausted, "more than 20 messages per second (burst 40)")
			e.waitStatus(t, bad.id, host.StatusOffline)
		})
	}
	// The good host sends at its own pace, under the same limit.
	for range 10 {
		if err := good.send(heartbeat()); err != nil {
			t.Fatal(err)
		}
	}
	e.checkGood(t, good, 1)
}

// rawCodec sends and receives bytes as they are, under the proto content
// subtype, so that a test can put anything on an agent stream.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) { return v.([]byte), nil }
func (rawCodec) Unmarshal(data []byte, v any) error {
	*(v.(*[]byte)) = append([]byte(nil), data...)
	return nil
}
func (rawCodec) Name() string { return "proto" }

// rawStream opens an agent stream that sends raw bytes.
func rawStream(t *testing.T, conn *grpc.ClientConn) grpc.ClientStream {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	cs, err := conn.NewStream(ctx, &agentv1.AgentService_ServiceDesc.Streams[0], agentv1.AgentService_Connect_FullMethodName, grpc.ForceCodec(rawCodec{}))
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

// rawEnd sends each message and returns how the server ended the stream.
func rawEnd(t *testing.T, cs grpc.ClientStream, msgs ...[]byte) error {
	t.Helper()
	for _, m := range msgs {
		if err := cs.SendMsg(m); err != nil {
			break
		}
	}
	for {
		var b []byte
		if err := cs.RecvMsg(&b); err != nil {
			return err
		}
	}
}

func marshal(t *testing.T, m proto.Message) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// withUnknown returns m's encoding followed by fields the schema does not
// know.
func withUnknown(t *testing.T, m proto.Message) []byte {
	b := marshal(t, m)
	b = protowire.AppendTag(b, 999, protowire.BytesType)
	b = protowire.AppendBytes(b, []byte("from the future"))
	b = protowire.AppendTag(b, 1000, protowire.VarintType)
	return protowire.AppendVarint(b, 42)
}

// badUTF8Hello is a Hello whose host name is not UTF-8.
func badUTF8Hello() []byte {
	h := protowire.AppendTag(nil, 3, protowire.BytesType) // host_name
	h = protowire.AppendBytes(h, []byte{'h', 0xc3, 0x28})
	b := protowire.AppendTag(nil, 1, protowire.BytesType) // hello
	return protowire.AppendBytes(b, h)
}

func x509Pool(ca *pki.Authority) *x509.CertPool {
	p := x509.NewCertPool()
	p.AppendCertsFromPEM(ca.CAPEM())
	return p
}

func TestGarbageFromAnAgent(t *testing.T) {
	e := newHostileEnv(t, hostileConfig{})
	good, bad := e.setup(t)
	hello := marshal(t, &agentv1.ConnectRequest{Kind: &agentv1.ConnectRequest_Hello{Hello: &agentv1.Hello{HostName: bad.name}}})

	// Bytes that are not HTTP/2, in plaintext and inside TLS: the server
	// closes the connection.
	garbage := []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n\x00\xff\x16\x03\x01garbage\x00\x00\x00\x04\x00\x00\x00\x00\x00")
	closed := func(t *testing.T, c net.Conn) {
		t.Helper()
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write(garbage); err != nil {
			return // closed already
		}
		_, err := io.Copy(io.Discard, c)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatal("the server kept a connection that sent garbage")
		}
	}
	t.Run("plaintext bytes", func(t *testing.T) {
		c, err := net.Dial("tcp", e.addr)
		if err != nil {
			t.Fatal(err)
		}
		closed(t, c)
	})
	t.Run("bytes that are not HTTP/2 inside TLS", func(t *testing.T) {
		for _, protos := range [][]string{{"h2"}, nil} {
			c, err := tls.Dial("tcp", e.addr, &tls.Config{RootCAs: e.roots, ServerName: "localhost", Certificates: []tls.Certificate{bad.cert}, NextProtos: protos})
			if err != nil {
				continue // refused at the handshake (no ALPN): as good
			}
			closed(t, c)
		}
	})

	conn := e.dial(t, &bad.cert)
	tests := []struct {
		name string
		msgs [][]byte
		code codes.Code
		msg  string
	}{
		{"malformed protobuf", [][]byte{{0xff, 0xff, 0xff, 0xff, 0xff}}, codes.InvalidArgument, "unmarshal"},
		{"malformed after the hello", [][]byte{hello, {0x0a, 0x80}}, codes.InvalidArgument, "unmarshal"},
		{"invalid UTF-8", [][]byte{badUTF8Hello()}, codes.InvalidArgument, "unmarshal"},
		{"first message with no kind", [][]byte{nil}, codes.InvalidArgument, "first message must be a hello"},
		{"first message of unknown fields only", [][]byte{withUnknown(t, &agentv1.ConnectRequest{})}, codes.InvalidArgument, "first message must be a hello"},
		{"a message with no kind", [][]byte{hello, nil}, codes.InvalidArgument, "empty message"},
		{"a second hello", [][]byte{hello, hello}, codes.InvalidArgument, "second hello"},
		{"a result without an outcome", [][]byte{hello, marshal(t, &agentv1.ConnectRequest{Kind: &agentv1.ConnectRequest_Result{Result: &agentv1.CommandResult{SubtaskId: 5, Attempt: 1}}})}, codes.InvalidArgument, "outcome"},
		{"a process that is not a base process", [][]byte{hello, marshal(t, &agentv1.ConnectRequest{Kind: &agentv1.ConnectRequest_Heartbeat{Heartbeat: &agentv1.Heartbeat{Processes: []*agentv1.Process{{Name: "sshd"}}}}})}, codes.InvalidArgument, "base processes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkCode(t, rawEnd(t, rawStream(t, conn), tt.msgs...), tt.code, tt.msg)
		})
	}

	t.Run("unknown fields are ignored", func(t *testing.T) {
		b := e.connectAgent(t, bad)
		if err := b.send(heartbeat()); err != nil {
			t.Fatal(err)
		}
		cs := rawStream(t, conn)
		// A raw stream replaces b's: the new one sends messages with unknown
		// fields and gets the answers a well-formed one would.
		for _, m := range [][]byte{
			withUnknown(t, &agentv1.ConnectRequest{Kind: &agentv1.ConnectRequest_Hello{Hello: &agentv1.Hello{HostName: bad.name}}}),
			withUnknown(t, heartbeat()),
			withUnknown(t, result(777, 1, "stale")),
		} {
			if err := cs.SendMsg(m); err != nil {
				t.Fatal(err)
			}
		}
		var welcome, ack []byte
		if err := cs.RecvMsg(&welcome); err != nil {
			t.Fatal(err)
		}
		if err := cs.RecvMsg(&ack); err != nil {
			t.Fatal(err)
		}
		var w, a agentv1.ConnectResponse
		if proto.Unmarshal(welcome, &w) != nil || w.GetWelcome().GetHostId() != bad.id || proto.Unmarshal(ack, &a) != nil || a.GetAck().GetSubtaskId() != 777 {
			t.Fatalf("answers %v, %v", &w, &a)
		}
		checkCode(t, b.end(t), codes.Aborted, "replaced")
		_ = cs.CloseSend()
	})
	e.checkGood(t, good, 1)
}

func TestAgentClaimingAnotherHost(t *testing.T) {
	// The refusal itself is TestAgentIdentityOverMutualTLS's; here, that it
	// leaves the host it claims alone.
	e := newHostileEnv(t, hostileConfig{})
	good, bad := e.setup(t)
	conn := e.dial(t, &bad.cert)
	for _, hello := range []*agentv1.Hello{
		{HostName: good.name, HostId: good.id},
		{HostName: bad.name, HostId: good.id},
		{HostName: good.name},
	} {
		_, err := openAgent(t, conn, bad, hello)
		checkCode(t, err, codes.PermissionDenied, "certificate of host")
	}
	e.checkGood(t, good, 1)
}

func TestAnswersToCommandsNeverSentAreDropped(t *testing.T) {
	e := newHostileEnv(t, hostileConfig{})
	good, bad := e.setup(t)
	b := e.connectAgent(t, bad)

	// The good host's stop is in flight, its agent not answering yet.
	res := e.dispatch(good.id, 100)
	if c := good.nextCommand(t); c.GetSubtaskId() != 100 {
		t.Fatalf("good host got %v", c)
	}
	// The bad host answers it, and commands nobody sent.
	for _, m := range []*agentv1.ConnectRequest{
		progress(100, 1, "forged progress"),
		result(100, 1, "forged"),
		progress(101, 1, "forged progress"),
		result(101, 1, "forged"),
		result(100, 2, "forged"),
	} {
		if err := b.send(m); err != nil {
			t.Fatal(err)
		}
	}
	// Each forged result is dropped; being stale, each is acknowledged (in
	// order, after the progress before it was handled).
	for _, want := range [][2]int64{{100, 1}, {101, 1}, {100, 2}} {
		if k := b.nextAck(t); k.GetSubtaskId() != want[0] || int64(k.GetAttempt()) != want[1] {
			t.Fatalf("ack %v, want %v", k, want)
		}
	}
	select {
	case r := <-res:
		t.Fatalf("the good host's stop ended with the bad host's answer: %+v", r)
	default:
	}
	if logs := e.logs.String(); strings.Count(logs, "progress for a command not dispatched to this host dropped") != 2 {
		t.Errorf("forged progress not dropped:\n%s", logs)
	}
	// The good host answers.
	if err := good.send(result(100, 1, "stopped")); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-res:
		if r.Outcome != fleet.Succeeded || r.Message != "stopped" {
			t.Fatalf("the good host's stop: %+v", r)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the good host's stop did not end")
	}
	// The bad host's stream goes on.
	if err := b.send(heartbeat()); err != nil {
		t.Fatal(err)
	}
	e.checkGood(t, good, 102)
	select {
	case err := <-b.ended:
		t.Fatalf("the bad host's stream ended: %v", err)
	default:
	}
}

func TestAgentLoopingOnConnectIsRefused(t *testing.T) {
	e := newHostileEnv(t, hostileConfig{fleet: fleet.Config{MaxStreamsPerHost: 2, MaxReplacementsPerMin: 5}})
	good, bad := e.setup(t)
	conn := e.dial(t, &bad.cert)
	var accepted, refused int
	var last *testAgent
	began := time.Now()
	for range 30 {
		ta, err := openAgent(t, conn, bad, &agentv1.Hello{HostName: bad.name})
		switch status.Code(err) {
		case codes.OK:
			accepted++
			last = ta
		case codes.ResourceExhausted:
			refused++
			if m := status.Convert(err).Message(); !strings.Contains(m, "streams") && !strings.Contains(m, "replacements a minute") {
				t.Errorf("refusal %q names no bound", m)
			}
		default:
			t.Fatalf("connect: %v", err)
		}
	}
	// The first stream and at most 5 replacements (and one more each 12 s
	// the loop took); the rest refused.
	if most := 6 + int(time.Since(began)/(12*time.Second)); accepted < 1 || accepted > most || refused != 30-accepted {
		t.Fatalf("%d streams accepted (at most %d), %d refused", accepted, most, refused)
	}
	// The bad host keeps its current stream and stays ONLINE.
	e.waitStatus(t, bad.id, host.StatusOnline)
	select {
	case err := <-last.ended:
		t.Fatalf("the bad host's current stream ended: %v", err)
	default:
	}
	e.checkGood(t, good, 1)
}

func TestHelloIsDueSoon(t *testing.T) {
	e := newHostileEnv(t, hostileConfig{limits: AgentLimits{HelloTimeout: 200 * time.Millisecond}})
	good, bad := e.setup(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := agentv1.NewAgentServiceClient(e.dial(t, &bad.cert)).Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_, err = stream.Recv()
	checkCode(t, err, codes.DeadlineExceeded, "no hello within 200ms")
	e.checkGood(t, good, 1)
}

func TestOversizedMetadataIsRefused(t *testing.T) {
	e := newHostileEnv(t, hostileConfig{})
	good, _ := e.setup(t)
	ctx := metadata.AppendToOutgoingContext(as(t, "admin"), "x-padding", strings.Repeat("p", 100<<10))
	_, err := hostv1.NewHostServiceClient(e.dial(t, nil)).ListHosts(ctx, &hostv1.ListHostsRequest{})
	// The client library refuses to send it (it knows the server's bound),
	// or, had it sent it first, the server resets the stream.
	if m := status.Convert(err).Message(); err == nil || !strings.Contains(m, "header list size") && !strings.Contains(m, "RST_STREAM") {
		t.Fatalf("a call with 100 KiB of metadata: %v", err)
	}
	e.checkGood(t, good, 1)
}
