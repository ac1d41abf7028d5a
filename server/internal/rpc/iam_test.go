package rpc

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"net"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"

	hostv1 "agentplane/gen/agentplane/host/v1"
	iamv1 "agentplane/gen/agentplane/iam/v1"
	"agentplane/server/internal/auth"
	"agentplane/server/internal/errs"
	"agentplane/server/internal/store"
)

// IamService and access-key signatures over a real gRPC connection, with
// access keys in a real store and the fake users of service_test.go.

// apiUserLookup finds the fake users for the access key service.
type apiUserLookup struct{}

func (apiUserLookup) UserByName(_ context.Context, name string) (auth.User, error) {
	roles, ok := apiRoles[name]
	if !ok {
		return auth.User{}, fmt.Errorf("user %q: %w", name, errs.ErrNotFound)
	}
	return auth.User{Username: name, Roles: roles}, nil
}

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func (c *fakeClock) Sleep(_ context.Context, d time.Duration) error { c.Advance(d); return nil }

// signing tells the test client's interceptor how to sign a call.
type signing struct {
	ak, sk string
	date   time.Time // default now
	// signMethod, when set, is signed instead of the method called.
	signMethod string
	// signReq, when set, is the request whose digest is signed instead of
	// the one sent.
	signReq proto.Message
}

type signingKey struct{}

// signed returns a context whose calls the client signs with s.
func signed(t *testing.T, s signing, kv ...string) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return metadata.AppendToOutgoingContext(context.WithValue(ctx, signingKey{}, s), kv...)
}

const testAuthority = "bufnet"

// ocpSignCall signs a gRPC call as the documented rule says, written here
// from the doc comment and none of the server's code:
// POST\n\napplication/grpc\n{date}\n{:authority}\n{x-ocp-* lines}\n{full method},
// with the request's digest among the x-ocp-* metadata
// (x-ocp-content-sha256: hex SHA-256 of its deterministic serialization).
func ocpSignCall(ctx context.Context, method string, req proto.Message, s signing) (context.Context, string) {
	date := s.date
	if date.IsZero() {
		date = time.Now()
	}
	d := date.UTC().Format("Mon, 02 Jan 2006 15:04:05 GMT")
	if s.signReq != nil {
		req = s.signReq
	}
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(req)
	if err != nil {
		panic(err)
	}
	sum := sha256.Sum256(b)
	ctx = metadata.AppendToOutgoingContext(ctx, "x-ocp-content-sha256", hex.EncodeToString(sum[:]))
	md, _ := metadata.FromOutgoingContext(ctx)
	var lines []string
	for k, vs := range md {
		if strings.HasPrefix(k, "x-ocp-") {
			lines = append(lines, k+":"+strings.Join(vs, ","))
		}
	}
	sort.Strings(lines)
	if s.signMethod != "" {
		method = s.signMethod
	}
	sts := "POST\n\napplication/grpc\n" + d + "\n" + testAuthority + "\n" + strings.Join(lines, "\n") + "\n" + method
	m := hmac.New(sha1.New, []byte(s.sk))
	m.Write([]byte(sts))
	sig := base64.StdEncoding.EncodeToString(m.Sum(nil))
	return metadata.AppendToOutgoingContext(ctx, "date", d, "authorization", "OCP-ACCESS-KEY-HMACSHA1 "+s.ak+":"+sig), sig
}

type iamEnv struct {
	hc      hostv1.HostServiceClient
	ic      iamv1.IamServiceClient
	logs    *syncBuf
	clock   *fakeClock
	mu      sync.Mutex
	secrets []string
}

func (e *iamEnv) remember(s string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.secrets = append(e.secrets, s)
}

func newIAMEnv(t *testing.T) *iamEnv {
	t.Helper()
	dir := t.TempDir()
	st, err := store.Open(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	env := &iamEnv{logs: &syncBuf{}, clock: &fakeClock{now: time.Now()}}
	log := zerolog.New(env.logs).Level(zerolog.DebugLevel)
	sealKey, err := auth.LoadOrCreateAccessKeySealKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := auth.NewAccessKeyService(st, apiUserLookup{}, sealKey, log)
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer(Config{
		Hosts: &apiHosts{}, Tasks: &apiTasks{}, Users: apiUsers{}, AccessKeys: keys, Log: log,
		Throttle: auth.NewThrottle(auth.ThrottleConfig{Now: env.clock.Now, Sleep: env.clock.Sleep}),
	})
	lis := bufconn.Listen(1 << 20)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(lis)
	}()
	sign := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if s, ok := ctx.Value(signingKey{}).(signing); ok {
			var sig string
			ctx, sig = ocpSignCall(ctx, method, req.(proto.Message), s)
			env.remember(sig)
		}
		return invoker(ctx, method, req, reply, cc, opts...)
	}
	conn, err := grpc.NewClient("passthrough:///"+testAuthority,
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithUnaryInterceptor(sign))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = conn.Close()
		srv.Stop()
		<-done
		logs := env.logs.String()
		env.mu.Lock()
		defer env.mu.Unlock()
		words := append([]string{}, env.secrets...)
		for name := range apiRoles {
			words = append(words, name+"-pass", base64.StdEncoding.EncodeToString([]byte(name+":"+name+"-pass")))
		}
		for _, w := range words {
			if strings.Contains(logs, w) {
				t.Errorf("the logs contain %q:\n%s", w, logs)
			}
		}
	})
	env.hc, env.ic = hostv1.NewHostServiceClient(conn), iamv1.NewIamServiceClient(conn)
	return env
}

func (e *iamEnv) create(t *testing.T, ctx context.Context, username string) signing {
	t.Helper()
	r, err := e.ic.CreateAccessKey(ctx, &iamv1.CreateAccessKeyRequest{Username: username})
	checkCode(t, err, codes.OK, "")
	e.remember(r.GetSecret())
	k := r.GetAccessKey()
	if len(r.GetSecret()) < 43 || k.GetAccessKeyId() == "" || k.GetCreateTime() == nil || k.GetLastUsedTime() != nil {
		t.Fatalf("created %v", r)
	}
	return signing{ak: k.GetAccessKeyId(), sk: r.GetSecret()}
}

func TestIamService(t *testing.T) {
	env := newIAMEnv(t)
	own := env.create(t, as(t, "viewer"), "")
	env.create(t, as(t, "viewer"), "viewer")
	mk := env.create(t, as(t, "admin"), "manager")
	_, err := env.ic.CreateAccessKey(as(t, "viewer"), &iamv1.CreateAccessKeyRequest{Username: "manager"})
	checkCode(t, err, codes.PermissionDenied, "their own access keys")
	_, err = env.ic.CreateAccessKey(as(t, "admin"), &iamv1.CreateAccessKeyRequest{Username: "ghost"})
	checkCode(t, err, codes.NotFound, "ghost")
	_, err = env.ic.CreateAccessKey(signed(t, signing{ak: own.ak, sk: "wrong"}), &iamv1.CreateAccessKeyRequest{})
	checkCode(t, err, codes.Unauthenticated, "invalid access key or signature")

	list := func(ctx context.Context, user string) string {
		t.Helper()
		r, err := env.ic.ListAccessKeys(ctx, &iamv1.ListAccessKeysRequest{Username: user})
		checkCode(t, err, codes.OK, "")
		text := prototext.Format(r)
		for _, s := range []string{own.sk, mk.sk} {
			if strings.Contains(text, s) {
				t.Errorf("the list carries a secret: %s", text)
			}
		}
		var us []string
		for _, k := range r.GetAccessKeys() {
			us = append(us, k.GetUsername())
		}
		return strings.Join(us, ",")
	}
	// A signed call: the key acts as its user.
	if got := list(signed(t, own, "x-ocp-request-id", "r-1"), ""); got != "viewer,viewer" {
		t.Errorf("viewer's list, signed: %q", got)
	}
	if got := list(as(t, "admin"), ""); got != "viewer,viewer,manager" {
		t.Errorf("admin's list: %q", got)
	}
	if got := list(as(t, "admin"), "manager"); got != "manager" {
		t.Errorf("admin's list of manager: %q", got)
	}
	_, err = env.ic.ListAccessKeys(as(t, "viewer"), &iamv1.ListAccessKeysRequest{Username: "manager"})
	checkCode(t, err, codes.PermissionDenied, "their own access keys")

	_, err = env.ic.DeleteAccessKey(as(t, "viewer"), &iamv1.DeleteAccessKeyRequest{AccessKeyId: mk.ak})
	checkCode(t, err, codes.NotFound, mk.ak)
	_, err = env.ic.DeleteAccessKey(as(t, "viewer"), &iamv1.DeleteAccessKeyRequest{})
	checkCode(t, err, codes.InvalidArgument, "access_key_id")
	_, err = env.ic.DeleteAccessKey(as(t, "viewer"), &iamv1.DeleteAccessKeyRequest{AccessKeyId: own.ak})
	checkCode(t, err, codes.OK, "")
	_, err = env.hc.ListHosts(signed(t, own), &hostv1.ListHostsRequest{})
	checkCode(t, err, codes.Unauthenticated, "invalid access key or signature")
	_, err = env.ic.DeleteAccessKey(as(t, "admin"), &iamv1.DeleteAccessKeyRequest{AccessKeyId: mk.ak})
	checkCode(t, err, codes.OK, "")
}

func TestSignedCalls(t *testing.T) {
	env := newIAMEnv(t)
	mk := env.create(t, as(t, "admin"), "manager")
	vk := env.create(t, as(t, "viewer"), "")

	_, err := env.hc.StopAgent(signed(t, mk, "x-ocp-request-id", "r-1", "x-ocp-zone", "hz1"), &hostv1.StopAgentRequest{HostId: apiHostOK})
	checkCode(t, err, codes.OK, "")
	_, err = env.hc.StopAgent(signed(t, vk), &hostv1.StopAgentRequest{HostId: apiHostOK})
	checkCode(t, err, codes.PermissionDenied, "HOST_MANAGER")

	stale := mk
	stale.date = time.Now().Add(-16 * time.Minute)
	_, err = env.hc.ListHosts(signed(t, stale), &hostv1.ListHostsRequest{})
	checkCode(t, err, codes.Unauthenticated, "not within 15m0s")
	future := mk
	future.date = time.Now().Add(16 * time.Minute)
	_, err = env.hc.ListHosts(signed(t, future), &hostv1.ListHostsRequest{})
	checkCode(t, err, codes.Unauthenticated, "not within 15m0s")

	// A signature for ListHosts does not authorize StopAgent.
	other := mk
	other.signMethod = hostv1.HostService_ListHosts_FullMethodName
	_, err = env.hc.StopAgent(signed(t, other), &hostv1.StopAgentRequest{HostId: apiHostOK})
	checkCode(t, err, codes.Unauthenticated, "invalid access key or signature")

	// A signature for StopAgent of one host does not stop another.
	replay := mk
	replay.signReq = &hostv1.StopAgentRequest{HostId: apiHostOK + 1}
	_, err = env.hc.StopAgent(signed(t, replay), &hostv1.StopAgentRequest{HostId: apiHostOK})
	checkCode(t, err, codes.Unauthenticated, "x-ocp-content-sha256")

	// x-ocp metadata are covered: one added after signing breaks it.
	ctx := signed(t, mk, "x-ocp-request-id", "r-1")
	ctx, sig := ocpSignCall(ctx, hostv1.HostService_ListHosts_FullMethodName, &hostv1.ListHostsRequest{}, mk)
	env.remember(sig)
	ctx = metadata.AppendToOutgoingContext(context.WithValue(ctx, signingKey{}, nil), "x-ocp-zone", "added")
	_, err = env.hc.ListHosts(ctx, &hostv1.ListHostsRequest{})
	checkCode(t, err, codes.Unauthenticated, "invalid access key or signature")

	_, err = env.hc.ListHosts(signed(t, signing{ak: "AP00000000000000000000", sk: mk.sk}), &hostv1.ListHostsRequest{})
	checkCode(t, err, codes.Unauthenticated, "invalid access key or signature")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = env.hc.ListHosts(metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer x"), &hostv1.ListHostsRequest{})
	checkCode(t, err, codes.Unauthenticated, "unsupported authorization scheme")
	_, err = env.hc.ListHosts(ctx, &hostv1.ListHostsRequest{})
	checkCode(t, err, codes.Unauthenticated, "authorization metadata")
}

func TestGRPCBruteForceIsThrottled(t *testing.T) {
	env := newIAMEnv(t)
	for i := range 10 {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		cred := base64.StdEncoding.EncodeToString(fmt.Appendf(nil, "viewer:guess-%d", i))
		_, err := env.hc.ListHosts(metadata.AppendToOutgoingContext(ctx, "authorization", "Basic "+cred), &hostv1.ListHostsRequest{})
		checkCode(t, err, codes.Unauthenticated, "Invalid username or password.")
	}
	_, err := env.hc.ListHosts(as(t, "viewer"), &hostv1.ListHostsRequest{})
	checkCode(t, err, codes.ResourceExhausted, "retry in 60 s")
	env.clock.Advance(time.Minute)
	_, err = env.hc.ListHosts(as(t, "viewer"), &hostv1.ListHostsRequest{})
	checkCode(t, err, codes.OK, "")
}

func TestIamServiceWithoutAccessKeys(t *testing.T) {
	lis := bufconn.Listen(1 << 20)
	srv := NewServer(Config{Hosts: &apiHosts{}, Tasks: &apiTasks{}, Users: apiUsers{}, Log: zerolog.Nop()})
	go func() { _ = srv.Serve(lis) }()
	defer srv.Stop()
	conn, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_, err = iamv1.NewIamServiceClient(conn).ListAccessKeys(as(t, "admin"), &iamv1.ListAccessKeysRequest{})
	checkCode(t, err, codes.Unavailable, "not enabled")
	_, err = hostv1.NewHostServiceClient(conn).ListHosts(as(t, "admin", "authorization", "OCP-ACCESS-KEY-HMACSHA1 AP1:c2ln"), &hostv1.ListHostsRequest{})
	checkCode(t, err, codes.Unauthenticated, "") // two authorization values
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "OCP-ACCESS-KEY-HMACSHA1 AP1:c2ln")
	_, err = hostv1.NewHostServiceClient(conn).ListHosts(ctx, &hostv1.ListHostsRequest{})
	checkCode(t, err, codes.Unauthenticated, "not enabled")
}
