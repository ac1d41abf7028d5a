// Package rpc is the gRPC adapter: HostService, TaskService, IamService,
// AuditService, ClusterService and the AgentService stream, plus authentication (through
// auth.Authenticator), health and reflection. It translates between protobuf
// and the domain (the interfaces of package api), maps domain errors to gRPC
// codes in one place (errors.go), and records mutating calls with the
// outcome of the error's kind (audit.go).
package rpc

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"time"

	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	agentv1 "agentplane/gen/agentplane/agent/v1"
	hostv1 "agentplane/gen/agentplane/host/v1"
	iamv1 "agentplane/gen/agentplane/iam/v1"
	replicav1 "agentplane/gen/agentplane/replica/v1"
	taskv1 "agentplane/gen/agentplane/task/v1"
	"agentplane/server/internal/api"
	"agentplane/server/internal/audit"
	"agentplane/server/internal/auth"
	"agentplane/server/internal/errs"
)

// Config wires the adapter to the domain.
type Config struct {
	Hosts api.Hosts
	Tasks Tasks
	Fleet Fleet
	// Users checks the passwords of HTTP Basic credentials; if it is also
	// an api.UserCreator (auth.Service is), IamService.CreateUser creates
	// users with it.
	Users auth.PasswordChecker
	// AccessKeys verifies access-key signatures and serves IamService
	// (iam.go); nil: signed calls are refused and IamService is
	// UNIMPLEMENTED.
	AccessKeys api.AccessKeys
	// Throttle slows down and locks out callers that keep failing to
	// authenticate; share the REST adapter's. Default: one of its own.
	Throttle *auth.Throttle
	// Enroll serves agent identity: Enroll and RenewCertificate on the
	// AgentService, CreateJoinToken and RevokeHost on the HostService; nil:
	// those calls are UNIMPLEMENTED.
	Enroll Enrollment
	Log    zerolog.Logger
	// MaxRecvBytes bounds one received message; default 4 MiB. A larger
	// one fails its call (or ends its stream) with RESOURCE_EXHAUSTED.
	MaxRecvBytes int
	// MaxHeaderBytes bounds a call's metadata (its HTTP/2 header list);
	// default 64 KiB, as REST's. A client sending more gets an error naming
	// the bound, from its own library (the server advertises it) or as the
	// stream's reset.
	MaxHeaderBytes int
	// HandshakeTimeout bounds a new connection's TLS handshake and HTTP/2
	// preface; past it the connection is closed. Default
	// DefaultHandshakeTimeout.
	HandshakeTimeout time.Duration
	// AgentLimits bound each agent stream; zero fields take the defaults.
	AgentLimits AgentLimits
	// Audit records every mutating call and serves AuditService
	// (audit.go); nil: neither.
	Audit api.Auditor
	// Replicas serves ClusterService (cluster.go); nil: UNIMPLEMENTED.
	Replicas api.Replicas
	// Store, if set, drives the health service: NOT_SERVING (the server
	// and each service) while the data store cannot be written.
	Store api.StoreHealthWatcher
}

// staticWindow is HTTP/2's default flow-control window, 64 KiB - 1.
const staticWindow = 1<<16 - 1

// DefaultHandshakeTimeout is Config.HandshakeTimeout's default: grpc-go's
// own is 120 s, long enough for silent connections to pile up.
const DefaultHandshakeTimeout = 10 * time.Second

// NewServer returns a gRPC server with every service registered, health
// SERVING (NOT_SERVING while Config.Store cannot be written) and reflection
// on. Calls other than the agent stream, health and
// reflection need credentials in the "authorization" metadata: HTTP Basic,
// or an access-key signature (see authenticator.authenticate).
func NewServer(cfg Config, opts ...grpc.ServerOption) *grpc.Server {
	if cfg.MaxRecvBytes == 0 {
		cfg.MaxRecvBytes = 4 << 20
	}
	if cfg.MaxHeaderBytes <= 0 {
		cfg.MaxHeaderBytes = 64 << 10
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = DefaultHandshakeTimeout
	}
	a := newAuthenticator(cfg)
	codec := newRequestCodec()
	opts = append([]grpc.ServerOption{
		// No read buffer of gRPC's own (32 KiB per connection by default):
		// TLS buffers each record already, and at 10,000 agent connections
		// those buffers alone would be 320 MB. The caller's opts may
		// override it.
		grpc.ReadBufferSize(0),
		// Static flow-control windows of HTTP/2's default size (64 KiB):
		// grpc-go's dynamic windows answer each data frame read on an idle
		// connection with a BDP ping (a write, the pooled 32 KiB write
		// buffer taken and the ping's ack read): on every agent's every
		// heartbeat. What clients send is small (agent messages, API
		// requests, at most MaxRecvBytes): the windows for it need not
		// grow; a 4 MB request over a long round trip is the one to slow.
		grpc.StaticStreamWindowSize(staticWindow),
		grpc.StaticConnWindowSize(staticWindow),
	}, opts...)
	opts = append(opts,
		grpc.ConnectionTimeout(cfg.HandshakeTimeout),
		grpc.MaxRecvMsgSize(cfg.MaxRecvBytes),
		grpc.MaxHeaderListSize(uint32(cfg.MaxHeaderBytes)),
		// Undecodable requests are INVALID_ARGUMENT, recorded (codec.go).
		grpc.ForceServerCodecV2(codec),
		// audit first: refused calls are recorded too
		grpc.ChainUnaryInterceptor(codec.unary, auditUnary(cfg.Audit), a.unary, refuseUndecodable),
		grpc.ChainStreamInterceptor(codec.stream, a.stream),
		// Clients may ping every 5 s at the most: agentd pings every 10 s of
		// silence (conn.DialOptions) and the replicas their peers as often,
		// with room for timer jitter (a ping early by a hair must not count
		// as abuse and cost a GOAWAY).
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: time.Minute, Timeout: 20 * time.Second}),
	)
	s := grpc.NewServer(opts...)
	hostv1.RegisterHostServiceServer(s, &hostServer{hosts: cfg.Hosts, enroll: cfg.Enroll})
	taskv1.RegisterTaskServiceServer(s, &taskServer{tasks: cfg.Tasks})
	agentv1.RegisterAgentServiceServer(s, &agentServer{fleet: cfg.Fleet, enroll: cfg.Enroll, limits: cfg.AgentLimits.withDefaults(), log: cfg.Log})
	registerAudit(s, cfg)
	registerCluster(s, cfg)
	users, _ := cfg.Users.(api.UserCreator)
	iamv1.RegisterIamServiceServer(s, &iamServer{keys: cfg.AccessKeys, users: users})
	hs := health.NewServer()
	setHealth := func(err error) {
		st := healthpb.HealthCheckResponse_SERVING
		if err != nil {
			st = healthpb.HealthCheckResponse_NOT_SERVING
		}
		hs.SetServingStatus("", st)
		for _, svc := range []string{hostv1.HostService_ServiceDesc.ServiceName, taskv1.TaskService_ServiceDesc.ServiceName, agentv1.AgentService_ServiceDesc.ServiceName} {
			hs.SetServingStatus(svc, st)
		}
	}
	if cfg.Store != nil {
		cfg.Store.OnWritable(setHealth)
		setHealth(cfg.Store.Writable())
	} else {
		setHealth(nil)
	}
	healthpb.RegisterHealthServer(s, hs)
	reflection.Register(s)
	return s
}

// open lists the method prefixes served without user credentials: the agent
// stream authenticates with its own token, ReplicaService (registered by
// package cluster, when replicas share a fleet) takes only a replica's
// client certificate and checks it itself, and health and reflection
// reveal no data.
var open = []string{
	"/" + agentv1.AgentService_ServiceDesc.ServiceName + "/",
	"/" + replicav1.ReplicaService_ServiceDesc.ServiceName + "/",
	"/grpc.health.v1.Health/",
	"/grpc.reflection.",
}

// authenticator authenticates calls (auth.Authenticator) and gives each a
// trace id and logger.
type authenticator struct {
	auth auth.Authenticator
	log  zerolog.Logger
}

func newAuthenticator(cfg Config) authenticator {
	t := cfg.Throttle
	if t == nil {
		t = auth.NewThrottle(auth.ThrottleConfig{})
	}
	return authenticator{auth: auth.Authenticator{Users: cfg.Users, Keys: cfg.AccessKeys, Throttle: t}, log: cfg.Log}
}

// begin gives the call a trace id and logger, and authenticates it unless
// the method is open. req is the unary call's request; nil for a stream,
// whose first request the caller checks against the signed digest
// (signedDigest) when it arrives.
func (a authenticator) begin(ctx context.Context, method string, req any) (context.Context, error) {
	var b [8]byte
	_, _ = rand.Read(b[:])
	traceID := hex.EncodeToString(b[:])
	_ = grpc.SetHeader(ctx, metadata.Pairs("x-trace-id", traceID))
	log := a.log.With().Str("trace_id", traceID).Str("method", method).Logger()
	ctx = log.WithContext(ctx)
	for _, p := range open {
		if strings.HasPrefix(method, p) {
			return ctx, nil
		}
	}
	p, err := a.authenticate(ctx, method, req)
	if err != nil {
		st := toStatus(ctx, err)
		log.Info().Str("code", status.Code(st).String()).Msg("unauthenticated call refused")
		return nil, st
	}
	audit.SetPrincipal(ctx, p.Username, p.AccessKeyID, p.Addr)
	return auth.WithPrincipal(ctx, p), nil
}

// authenticate returns the caller (auth.Authenticator.Authenticate) from
// the call's one "authorization" metadata value: "Basic
// base64(user:password)", as in HTTP, or "OCP-ACCESS-KEY-HMACSHA1
// AK:Signature", OCP's access-key signature, with the RFC 1123 time in the
// "date" metadata. The throttle is keyed by the peer's address; a
// locked-out caller gets RESOURCE_EXHAUSTED with the wait in the message.
//
// A gRPC call has no body or query, so its string to sign
// (auth.StringToSign) fixes them: METHOD is "POST", MD5 is empty,
// Content-Type is "application/grpc" (whatever the call sent), Date is the
// "date" metadata, Host is the ":authority", OCP-headers are the x-ocp-*
// metadata, and PathAndQuery is the full method name:
//
//	POST\n\napplication/grpc\n{date}\n{authority}\n{x-ocp-* lines}\n/agentplane.host.v1.HostService/StopAgent
//
// The request is covered through the x-ocp-* lines: a signed call must
// carry ContentDigestHeader, the lowercase hex SHA-256 of its request
// message's deterministic protobuf serialization, once; the server
// re-serializes the request it decoded the same way and refuses the call
// (UNAUTHENTICATED) when they differ, so a captured signature cannot be
// replayed with another request. For a stream (req nil) the header's
// presence is checked here and the stream's first request by the caller.
//
// No error repeats a password, a signature or the metadata value.
func (a authenticator) authenticate(ctx context.Context, method string, req any) (auth.Principal, error) {
	var addr string
	if pr, ok := peer.FromContext(ctx); ok && pr.Addr != nil {
		addr = pr.Addr.String()
	}
	md, _ := metadata.FromIncomingContext(ctx)
	vals := md.Get("authorization")
	switch {
	case len(vals) == 0:
		return auth.Principal{}, fmt.Errorf("send HTTP Basic or %s credentials in the authorization metadata: %w", auth.SignatureScheme, errs.ErrUnauthenticated)
	case len(vals) > 1:
		return auth.Principal{}, fmt.Errorf("authorization metadata sent %d times, at most once allowed: %w", len(vals), errs.ErrUnauthenticated)
	}
	return a.auth.Authenticate(ctx, auth.Credentials{
		Authorization: vals[0],
		Addr:          addr,
		Signed: func(context.Context) (*auth.SignedRequest, func() error, error) {
			digest, err := signedDigest(md)
			if err != nil {
				return nil, nil, err
			}
			r := &auth.SignedRequest{
				Method:      grpcSignedMethod,
				ContentType: grpcSignedContentType,
				Date:        first(md.Get("date")),
				Host:        first(md.Get(":authority")),
				Headers:     md,
				Path:        method,
			}
			return r, func() error {
				if req == nil {
					return nil
				}
				return checkDigest(digest, req)
			}, nil
		},
	})
}

// The fixed parts of a gRPC call's string to sign.
const (
	grpcSignedMethod      = "POST"
	grpcSignedContentType = "application/grpc"
)

// ContentDigestHeader is the metadata a signed gRPC call carries to cover
// its request: the lowercase hex SHA-256 of the request message's
// deterministic protobuf serialization (fields in number order, as Go's
// proto.MarshalOptions{Deterministic: true} writes them; unknown fields as
// received, after the known ones).
const ContentDigestHeader = "x-ocp-content-sha256"

// signedDigest returns the call's one ContentDigestHeader value.
func signedDigest(md metadata.MD) (string, error) {
	vs := md.Get(ContentDigestHeader)
	if len(vs) != 1 || strings.TrimSpace(vs[0]) == "" {
		return "", fmt.Errorf("a signed gRPC call must carry %s, the hex SHA-256 of its serialized request, once and signed: %w",
			ContentDigestHeader, errs.ErrUnauthenticated)
	}
	return strings.TrimSpace(vs[0]), nil
}

// checkDigest checks a decoded request against the signed digest: the
// request is serialized again, deterministically, and hashed. Re-marshaling
// the decoded message (rather than keeping the bytes received) needs no
// codec of our own and covers exactly what the handler acts on; a request
// sent in another (non-canonical) encoding is refused, never accepted.
func checkDigest(digest string, req any) error {
	m, ok := req.(proto.Message)
	if !ok {
		return fmt.Errorf("request of type %T cannot be covered by a signature: %w", req, errs.ErrUnauthenticated)
	}
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		return fmt.Errorf("serializing the request to check its digest: %w: %w", err, errs.ErrUnauthenticated)
	}
	sum := sha256.Sum256(b)
	if !strings.EqualFold(digest, hex.EncodeToString(sum[:])) {
		return fmt.Errorf("the request does not match the signed %s: sign each request: %w", ContentDigestHeader, errs.ErrUnauthenticated)
	}
	return nil
}

func first(vs []string) string {
	if len(vs) == 0 {
		return ""
	}
	return vs[0]
}

func (a authenticator) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	ctx, err := a.begin(ctx, info.FullMethod, req)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	resp, err := h(ctx, req)
	zerolog.Ctx(ctx).Debug().Str("code", status.Code(err).String()).Dur("duration", time.Since(start)).Msg("grpc call")
	return resp, err
}

func (a authenticator) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	ctx, err := a.begin(ss.Context(), info.FullMethod, nil)
	if err != nil {
		return err
	}
	cs := &ctxStream{ServerStream: ss, ctx: ctx}
	if p, ok := auth.FromContext(ctx); ok && p.AccessKeyID != "" {
		md, _ := metadata.FromIncomingContext(ctx)
		cs.digest, _ = signedDigest(md) // present: authentication checked it
	}
	return h(srv, cs)
}

// ctxStream is a server stream with the context begin made. For a signed
// call, its first request is checked against the signed digest.
type ctxStream struct {
	grpc.ServerStream
	ctx    context.Context
	digest string // "" once checked, or when the call is not signed
}

func (s *ctxStream) Context() context.Context { return s.ctx }

// RecvMsg receives a request; the first of a signed call must match the
// digest its signature covers (UNAUTHENTICATED otherwise).
func (s *ctxStream) RecvMsg(m any) error {
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	if s.digest != "" {
		d := s.digest
		s.digest = ""
		if err := checkDigest(d, m); err != nil {
			zerolog.Ctx(s.ctx).Info().Str("code", codes.Unauthenticated.String()).Msg("unauthenticated call refused")
			return toStatus(s.ctx, err)
		}
	}
	return nil
}
