package rpc

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/time/rate"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	agentv1 "agentplane/gen/agentplane/agent/v1"
	"agentplane/server/internal/api"
	"agentplane/server/internal/enroll"
	"agentplane/server/internal/errs"
	"agentplane/server/internal/fleet"
	"agentplane/server/internal/pki"
)

// Enrollment is the agent identity service (enroll.Service): join tokens
// and revocation (HostService), enrollment and renewal (AgentService). Each
// method checks what it needs itself (ADMIN, or the token).
type Enrollment interface {
	api.Enrollment
	api.AgentEnrollment
	api.Certificates
}

// Fleet is what the agent stream adapter needs.
type Fleet interface {
	Connect(ctx context.Context, h fleet.Hello) (*fleet.Session, fleet.Welcome, error)
	Receive(ctx context.Context, s *fleet.Session, m fleet.Inbound) error
	Disconnect(s *fleet.Session)
}

// AgentLimits bound what one agent stream may send.
type AgentLimits struct {
	// MsgsPerSec and MsgBurst are a token bucket for the messages of one
	// stream, Hello included: an agent sending faster has its stream ended
	// with RESOURCE_EXHAUSTED (its host goes OFFLINE as for any disconnect,
	// and agentd reconnects with backoff). Defaults 50 and 200.
	MsgsPerSec float64
	MsgBurst   int
	// HelloTimeout bounds the wait for a stream's first message, the Hello;
	// past it the stream ends with DEADLINE_EXCEEDED. Default 10s.
	HelloTimeout time.Duration
}

// Defaults of AgentLimits.
const (
	DefaultAgentMsgsPerSec   = 50
	DefaultAgentMsgBurst     = 200
	DefaultAgentHelloTimeout = 10 * time.Second
)

func (l AgentLimits) withDefaults() AgentLimits {
	if l.MsgsPerSec <= 0 {
		l.MsgsPerSec = DefaultAgentMsgsPerSec
	}
	if l.MsgBurst <= 0 {
		l.MsgBurst = DefaultAgentMsgBurst
	}
	if l.HelloTimeout <= 0 {
		l.HelloTimeout = DefaultAgentHelloTimeout
	}
	return l
}

type agentServer struct {
	agentv1.UnimplementedAgentServiceServer
	fleet  Fleet
	enroll Enrollment // nil: Enroll and RenewCertificate are unimplemented
	limits AgentLimits
	log    zerolog.Logger
}

var _ agentv1.AgentServiceServer = (*agentServer)(nil)

// Connect runs one agent stream: Hello → Welcome, then a receive loop
// feeding the fleet, and the session's messages sent as they are queued,
// until either fails, the session ends (replaced, lost, revoked, closed), or
// the stream ends.
// The host is the one the verified client certificate names, if the stream
// has one (the fleet checks the Hello against it); else the fleet decides
// whether the Hello's bootstrap token is enough.
//
// Limits (AgentLimits, and the server's MaxRecvBytes): no Hello within
// HelloTimeout ends the stream with DEADLINE_EXCEEDED; a message over
// MaxRecvBytes, or messages faster than the stream's token bucket, with
// RESOURCE_EXHAUSTED, as does a host over the fleet's stream bounds
// (fleet.ErrTooManyStreams, fleet.ErrTooManyReplacements). A message the
// server cannot use (no kind set, a second Hello, a result without a
// known outcome, an answer without a known state) ends the stream with
// INVALID_ARGUMENT. A session the fleet
// ends is answered by its error's kind (toStatus): ABORTED when the server
// ended it (replaced by a newer stream, too slow to read, lost:
// errs.ErrAborted), PERMISSION_DENIED for a revoked host or certificate,
// UNAVAILABLE while the server shuts down.
func (s *agentServer) Connect(stream agentv1.AgentService_ConnectServer) error {
	end := newStreamEnd(stream.Context())
	defer end.cancel(nil)
	ctx := end.ctx
	limits := s.limits.withDefaults()

	ident, err := peerIdentity(ctx)
	if err != nil {
		return toStatus(ctx, err)
	}
	first, err := recvWithin(ctx, stream, limits.HelloTimeout)
	if err != nil {
		return err
	}
	msgs := rate.NewLimiter(rate.Limit(limits.MsgsPerSec), limits.MsgBurst)
	msgs.Allow() // the Hello
	hello := first.GetHello()
	if hello == nil {
		return status.Error(codes.InvalidArgument, "the first message must be a hello")
	}
	sess, welcome, err := s.fleet.Connect(ctx, fromHello(ident, hello))
	if err != nil {
		return toStatus(ctx, err)
	}
	defer s.fleet.Disconnect(sess)
	log := s.log.With().Int64("host_id", sess.HostID).Logger()
	ctx = log.WithContext(ctx)
	end.ctx = ctx

	err = stream.Send(&agentv1.ConnectResponse{Kind: &agentv1.ConnectResponse_Welcome{Welcome: &agentv1.Welcome{
		HostId: welcome.HostID, HeartbeatInterval: durationpb.New(welcome.HeartbeatInterval), Epoch: welcome.Epoch,
	}}})
	if err != nil {
		return err
	}

	// This goroutine receives; a sender runs while messages are queued
	// and ends the stream when the session ends (agentsend.go).
	end.disconnect = func() { s.fleet.Disconnect(sess) }
	snd := &sender{stream: stream, sess: sess, end: end}
	sess.Notify(snd.wake)
	snd.wake() // what was queued, or the end that came, before Notify
	if end.w != nil {
		end.end(s.recvLoop(ctx, stream, sess, msgs))
	} else {
		// Without the transport's WriteStatus only returning ends the
		// stream: the receive loop runs apart, and is still in Recv when
		// this handler returns, which ends it.
		go func() { end.end(s.recvLoop(ctx, stream, sess, msgs)) }()
		<-ctx.Done()
		end.end(context.Cause(ctx)) // the client's cancel
	}
	snd.stop()
	return end.result(log)
}

// logStreamEnd logs why an agent stream ended, at a level chosen by the
// error's kind: work the server ended (errs.ErrAborted: replaced, too slow,
// lost) at info; a revoked host or certificate (errs.ErrPermissionDenied)
// and a limit (errs.ErrTooManyRequests, RESOURCE_EXHAUSTED) at warn; the
// server shutting down or the session gone (errs.ErrUnavailable) at debug:
// at shutdown every agent's stream ends so; anything else at info.
func logStreamEnd(log zerolog.Logger, err error) {
	switch {
	case errors.Is(err, errs.ErrAborted):
		log.Info().Err(err).Msg("agent stream ended by the server")
	case errors.Is(err, errs.ErrUnavailable):
		log.Debug().Err(err).Msg("agent stream ended: unavailable")
	case errors.Is(err, errs.ErrPermissionDenied):
		log.Warn().Err(err).Msg("agent stream of a revoked host or certificate ended")
	case errors.Is(err, errs.ErrTooManyRequests), status.Code(err) == codes.ResourceExhausted:
		log.Warn().Err(err).Msg("agent stream ended over a limit")
	default:
		log.Info().Err(err).Msg("agent stream failed")
	}
}

// Enroll exchanges a join token and a CSR for the host's client
// certificate. It needs no client certificate and no user credentials.
func (s *agentServer) Enroll(ctx context.Context, req *agentv1.EnrollRequest) (*agentv1.EnrollResponse, error) {
	if s.enroll == nil {
		return nil, status.Error(codes.Unimplemented, "enrollment is not configured")
	}
	id, cert, ca, err := s.enroll.Enroll(ctx, req.GetJoinToken(), req.GetHostName(), req.GetCsr(), req.GetInnerIpAddress(), req.GetMachineId(), peerAddr(ctx))
	if err != nil {
		return nil, toStatus(ctx, err)
	}
	return &agentv1.EnrollResponse{HostId: id, Certificate: cert, CaCertificates: string(ca)}, nil
}

// RenewCertificate signs a new CSR for the host of the calling client
// certificate. UNAUTHENTICATED without one.
func (s *agentServer) RenewCertificate(ctx context.Context, req *agentv1.RenewCertificateRequest) (*agentv1.RenewCertificateResponse, error) {
	if s.enroll == nil {
		return nil, status.Error(codes.Unimplemented, "enrollment is not configured")
	}
	ident, err := peerIdentity(ctx)
	if err != nil {
		return nil, toStatus(ctx, err)
	}
	if ident == nil {
		return nil, status.Error(codes.Unauthenticated, "renewing a certificate needs the current client certificate")
	}
	presented := enroll.Cert{Serial: ident.Serial, HostID: ident.HostID, NotBefore: ident.NotBefore, NotAfter: ident.NotAfter}
	cert, err := s.enroll.Renew(ctx, presented, req.GetCsr(), peerAddr(ctx))
	if err != nil {
		return nil, toStatus(ctx, err)
	}
	return &agentv1.RenewCertificateResponse{Certificate: cert}, nil
}

// peerIdentity returns the host the call's verified client certificate
// names, or nil when the call has none (plaintext, or TLS without a client
// certificate). ErrUnauthenticated for a verified certificate that names no
// host.
func peerIdentity(ctx context.Context) (*fleet.Identity, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil, nil
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return nil, nil
	}
	leaf := pki.VerifiedLeaf(ti.State)
	if leaf == nil {
		return nil, nil
	}
	id, err := pki.HostID(leaf)
	if err != nil {
		return nil, err
	}
	return &fleet.Identity{HostID: id, HostName: leaf.Subject.CommonName, Serial: pki.Serial(leaf), NotBefore: leaf.NotBefore, NotAfter: leaf.NotAfter}, nil
}

// peerAddr is the call's source address, "" when unknown.
func peerAddr(ctx context.Context) string {
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		return p.Addr.String()
	}
	return ""
}

func recvWithin(ctx context.Context, stream agentv1.AgentService_ConnectServer, d time.Duration) (*agentv1.ConnectRequest, error) {
	type res struct {
		m   *agentv1.ConnectRequest
		err error
	}
	ch := make(chan res, 1)
	go func() {
		m, err := stream.Recv()
		ch <- res{m, err}
	}()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case r := <-ch:
		return r.m, r.err
	case <-t.C:
		return nil, status.Errorf(codes.DeadlineExceeded, "no hello within %s", d)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// recvLoop feeds the stream's messages to the fleet, each after a token
// from msgs: an agent sending faster than msgs allows ends its stream with
// RESOURCE_EXHAUSTED.
func (s *agentServer) recvLoop(ctx context.Context, stream agentv1.AgentService_ConnectServer, sess *fleet.Session, msgs *rate.Limiter) error {
	for {
		m, err := stream.Recv()
		if err != nil {
			return err
		}
		if !msgs.Allow() {
			return status.Errorf(codes.ResourceExhausted, "agent stream of host %d sends more than %g messages per second (burst %d): the server ends it; reconnect later",
				sess.HostID, float64(msgs.Limit()), msgs.Burst())
		}
		in, err := fromInbound(m)
		if err != nil {
			return err
		}
		if err := s.fleet.Receive(ctx, sess, in); err != nil {
			return fmt.Errorf("host %d: %w", sess.HostID, err)
		}
	}
}

// fromHello is the fleet's Hello for a stream's first message, on a stream
// whose client certificate names ident (nil: none).
func fromHello(ident *fleet.Identity, hello *agentv1.Hello) fleet.Hello {
	return fleet.Hello{
		Identity: ident, Token: hello.GetToken(), HostID: hello.GetHostId(), HostName: hello.GetHostName(),
		InnerIP: hello.GetInnerIpAddress(), MachineID: hello.GetMachineId(), AgentdVersion: hello.GetAgentdVersion(),
		InstallHome: hello.GetInstallHome(), InstallHomeMissing: hello.GetInstallHomeMissing(),
		Processes: fromProcesses(hello.GetProcesses()),
	}
}

func toOutbound(m fleet.Outbound) *agentv1.ConnectResponse {
	switch {
	case m.Command != nil:
		c := m.Command
		cmd := &agentv1.Command{SubtaskId: c.SubtaskID, Attempt: int32(c.Attempt), Timeout: durationpb.New(c.Timeout), Epoch: c.Epoch}
		if c.StopAgent != nil {
			stop := &agentv1.StopAgentAction{}
			if c.StopAgent.Grace > 0 {
				stop.Grace = durationpb.New(c.StopAgent.Grace)
			}
			cmd.Action = &agentv1.Command_StopAgent{StopAgent: stop}
		}
		if c.StartAgent != nil {
			cmd.Action = &agentv1.Command_StartAgent{StartAgent: &agentv1.StartAgentAction{}}
		}
		return &agentv1.ConnectResponse{Kind: &agentv1.ConnectResponse_Command{Command: cmd}}
	case m.Cancel != nil:
		return &agentv1.ConnectResponse{Kind: &agentv1.ConnectResponse_Cancel{Cancel: &agentv1.CancelCommand{
			SubtaskId: m.Cancel.SubtaskID, Attempt: int32(m.Cancel.Attempt), Reason: m.Cancel.Reason, Epoch: m.Cancel.Epoch,
		}}}
	case m.Query != nil:
		return &agentv1.ConnectResponse{Kind: &agentv1.ConnectResponse_Query{Query: &agentv1.ResultQuery{
			SubtaskId: m.Query.SubtaskID, Attempt: int32(m.Query.Attempt), Epoch: m.Query.Epoch,
		}}}
	case m.BeginAnswer != nil:
		a := m.BeginAnswer
		return &agentv1.ConnectResponse{Kind: &agentv1.ConnectResponse_BeginAnswer{BeginAnswer: &agentv1.CommandBeginAnswer{
			SubtaskId: a.SubtaskID, Attempt: int32(a.Attempt), Proceed: a.Proceed, Reason: a.Reason, AskAgain: a.AskAgain,
		}}}
	default:
		return &agentv1.ConnectResponse{Kind: &agentv1.ConnectResponse_Ack{Ack: &agentv1.ResultAck{
			SubtaskId: m.Ack.SubtaskID, Attempt: int32(m.Ack.Attempt),
		}}}
	}
}

var commandStates = map[agentv1.CommandState]fleet.CommandState{
	agentv1.CommandState_COMMAND_STATE_UNKNOWN:  fleet.StateUnknown,
	agentv1.CommandState_COMMAND_STATE_WAITING:  fleet.StateWaiting,
	agentv1.CommandState_COMMAND_STATE_RUNNING:  fleet.StateRunning,
	agentv1.CommandState_COMMAND_STATE_FINISHED: fleet.StateFinished,
}

// fromAnswer is the fleet's Answer for a QueryAnswer; its result is read
// only when the state is FINISHED.
func fromAnswer(a *agentv1.QueryAnswer) (fleet.Inbound, error) {
	st, ok := commandStates[a.GetState()]
	if !ok {
		return fleet.Inbound{}, fmt.Errorf("answer about subtask %d with state %v: %w", a.GetSubtaskId(), a.GetState(), errs.ErrInvalidArgument)
	}
	ans := &fleet.Answer{SubtaskID: a.GetSubtaskId(), Attempt: int(a.GetAttempt()), State: st}
	if st == fleet.StateFinished && a.GetResult() != nil {
		r, err := fromResult(a.GetResult())
		if err != nil {
			return fleet.Inbound{}, err
		}
		ans.Result = r
	}
	return fleet.Inbound{Answer: ans}, nil
}

// fromResult is the fleet's Result for a CommandResult.
func fromResult(r *agentv1.CommandResult) (*fleet.Result, error) {
	o, ok := outcomes[r.GetOutcome()]
	if !ok {
		return nil, fmt.Errorf("result of subtask %d with outcome %v: %w", r.GetSubtaskId(), r.GetOutcome(), errs.ErrInvalidArgument)
	}
	return &fleet.Result{
		SubtaskID: r.GetSubtaskId(), Attempt: int(r.GetAttempt()), Outcome: o, Message: r.GetMessage(),
		FinishTime: fromTS(r.GetFinishTime()),
	}, nil
}

var outcomes = map[agentv1.CommandOutcome]fleet.Outcome{
	agentv1.CommandOutcome_COMMAND_OUTCOME_SUCCEEDED: fleet.Succeeded,
	agentv1.CommandOutcome_COMMAND_OUTCOME_FAILED:    fleet.Failed,
	agentv1.CommandOutcome_COMMAND_OUTCOME_CANCELED:  fleet.Canceled,
}

func fromInbound(m *agentv1.ConnectRequest) (fleet.Inbound, error) {
	switch k := m.GetKind().(type) {
	case *agentv1.ConnectRequest_Heartbeat:
		return fleet.Inbound{Heartbeat: &fleet.Heartbeat{Processes: fromProcesses(k.Heartbeat.GetProcesses())}}, nil
	case *agentv1.ConnectRequest_Progress:
		p := k.Progress
		return fleet.Inbound{Progress: &fleet.Progress{
			SubtaskID: p.GetSubtaskId(), Attempt: int(p.GetAttempt()), Time: fromTS(p.GetTime()), Message: p.GetMessage(),
			PID: p.GetProcess().GetPid(),
		}}, nil
	case *agentv1.ConnectRequest_Result:
		r, err := fromResult(k.Result)
		if err != nil {
			return fleet.Inbound{}, err
		}
		return fleet.Inbound{Result: r}, nil
	case *agentv1.ConnectRequest_Answer:
		return fromAnswer(k.Answer)
	case *agentv1.ConnectRequest_Begin:
		return fleet.Inbound{Begin: &fleet.Begin{SubtaskID: k.Begin.GetSubtaskId(), Attempt: int(k.Begin.GetAttempt())}}, nil
	case *agentv1.ConnectRequest_Hello:
		return fleet.Inbound{}, fmt.Errorf("a second hello on one stream: %w", errs.ErrInvalidArgument)
	default:
		return fleet.Inbound{}, fmt.Errorf("empty message: %w", errs.ErrInvalidArgument)
	}
}
