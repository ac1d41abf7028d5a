// Package rpc is the gRPC adapter: HostService, TaskService and the
// AgentService stream, plus authentication, health and reflection. It
// translates between protobuf and the domain packages, and maps domain
// errors to gRPC codes in one place (errors.go).
package rpc

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"strings"
	"time"

	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"

	agentv1 "agentplane/gen/agentplane/agent/v1"
	hostv1 "agentplane/gen/agentplane/host/v1"
	taskv1 "agentplane/gen/agentplane/task/v1"
	"agentplane/server/auth"
	"agentplane/server/errs"
)

// Authenticator checks user credentials.
type Authenticator interface {
	Authenticate(ctx context.Context, username, password string) (auth.Principal, error)
}

// Config wires the adapter to the domain.
type Config struct {
	Hosts Hosts
	Tasks Tasks
	Fleet Fleet
	Users Authenticator
	Log   zerolog.Logger
	// MaxRecvBytes bounds one received message; default 4 MiB.
	MaxRecvBytes int
}

// NewServer returns a gRPC server with every service registered, health
// SERVING and reflection on. Calls other than the agent stream, health and
// reflection need HTTP Basic credentials in the "authorization" metadata.
func NewServer(cfg Config, opts ...grpc.ServerOption) *grpc.Server {
	if cfg.MaxRecvBytes == 0 {
		cfg.MaxRecvBytes = 4 << 20
	}
	a := authenticator{users: cfg.Users, log: cfg.Log}
	opts = append(opts,
		grpc.MaxRecvMsgSize(cfg.MaxRecvBytes),
		grpc.ChainUnaryInterceptor(a.unary),
		grpc.ChainStreamInterceptor(a.stream),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: time.Minute, Timeout: 20 * time.Second}),
	)
	s := grpc.NewServer(opts...)
	hostv1.RegisterHostServiceServer(s, &hostServer{hosts: cfg.Hosts})
	taskv1.RegisterTaskServiceServer(s, &taskServer{tasks: cfg.Tasks})
	agentv1.RegisterAgentServiceServer(s, &agentServer{fleet: cfg.Fleet, log: cfg.Log})
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	for _, svc := range []string{hostv1.HostService_ServiceDesc.ServiceName, taskv1.TaskService_ServiceDesc.ServiceName, agentv1.AgentService_ServiceDesc.ServiceName} {
		hs.SetServingStatus(svc, healthpb.HealthCheckResponse_SERVING)
	}
	healthpb.RegisterHealthServer(s, hs)
	reflection.Register(s)
	return s
}

// open lists the method prefixes served without user credentials: the agent
// stream authenticates with its own token, and health and reflection reveal
// no data.
var open = []string{
	"/" + agentv1.AgentService_ServiceDesc.ServiceName + "/",
	"/grpc.health.v1.Health/",
	"/grpc.reflection.",
}

type authenticator struct {
	users Authenticator
	log   zerolog.Logger
}

// begin gives the call a trace id and logger, and authenticates it unless
// the method is open.
func (a authenticator) begin(ctx context.Context, method string) (context.Context, error) {
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
	user, pass, err := basicCredentials(ctx)
	if err == nil {
		var p auth.Principal
		if p, err = a.users.Authenticate(ctx, user, pass); err == nil {
			return auth.WithPrincipal(ctx, p), nil
		}
	}
	log.Info().Msg("unauthenticated call refused")
	return nil, toStatus(ctx, err)
}

func basicCredentials(ctx context.Context) (user, pass string, err error) {
	md, _ := metadata.FromIncomingContext(ctx)
	vals := md.Get("authorization")
	if len(vals) != 1 {
		return "", "", fmt.Errorf("send HTTP Basic credentials in the authorization metadata: %w", errs.ErrUnauthenticated)
	}
	scheme, enc, ok := strings.Cut(vals[0], " ")
	if !ok || !strings.EqualFold(scheme, "Basic") {
		return "", "", fmt.Errorf("authorization scheme must be Basic: %w", errs.ErrUnauthenticated)
	}
	raw, derr := base64.StdEncoding.DecodeString(strings.TrimSpace(enc))
	if derr != nil {
		return "", "", fmt.Errorf("malformed Basic credentials: %w", errs.ErrUnauthenticated)
	}
	user, pass, ok = strings.Cut(string(raw), ":")
	if !ok {
		return "", "", fmt.Errorf("malformed Basic credentials: %w", errs.ErrUnauthenticated)
	}
	return user, pass, nil
}

func (a authenticator) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	ctx, err := a.begin(ctx, info.FullMethod)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	resp, err := h(ctx, req)
	zerolog.Ctx(ctx).Debug().Str("code", status.Code(err).String()).Dur("duration", time.Since(start)).Msg("grpc call")
	return resp, err
}

func (a authenticator) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	ctx, err := a.begin(ss.Context(), info.FullMethod)
	if err != nil {
		return err
	}
	return h(srv, &ctxStream{ServerStream: ss, ctx: ctx})
}

type ctxStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *ctxStream) Context() context.Context { return s.ctx }
