package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	replicav1 "agentplane/gen/agentplane/replica/v1"
	"agentplane/server/internal/pki"
	"agentplane/server/internal/task"
)

// ServiceName is ReplicaService's full name: the gRPC adapter lets its
// calls through without user credentials, for Server checks the caller's
// replica certificate itself.
const ServiceName = "agentplane.replica.v1.ReplicaService"

// ServerConfig configures the ReplicaService a replica serves.
type ServerConfig struct {
	// Router runs the commands peers dispatch here (its dispatchHere).
	Router *Router
	// OnNotify, if set, is given the task ids a peer says changed there
	// (the engine's Changed).
	OnNotify func(ids []int64)
	Log      zerolog.Logger
}

// Register registers ReplicaService on s.
func Register(s *grpc.Server, cfg ServerConfig) {
	replicav1.RegisterReplicaServiceServer(s, &server{cfg: cfg})
}

type server struct {
	replicav1.UnimplementedReplicaServiceServer
	cfg ServerConfig
}

// caller returns the calling replica's id from its verified client
// certificate; UNAUTHENTICATED for any other caller (no TLS, no
// certificate, an agent's).
func caller(ctx context.Context) (string, error) {
	p, ok := peer.FromContext(ctx)
	if ok {
		if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok {
			if leaf := pki.VerifiedLeaf(ti.State); leaf != nil {
				id, err := pki.ReplicaID(leaf)
				if err == nil {
					return id, nil
				}
				return "", status.Error(codes.Unauthenticated, err.Error())
			}
		}
	}
	return "", status.Error(codes.Unauthenticated, "ReplicaService is for the server's replicas: present a replica's client certificate")
}

func (s *server) refuse(ctx context.Context, method string) (string, error) {
	id, err := caller(ctx)
	if err != nil {
		addr := ""
		if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
			addr = p.Addr.String()
		}
		s.cfg.Log.Warn().Str("method", method).Str("addr", addr).Msg("ReplicaService call refused: not a replica")
	}
	return id, err
}

// linesStoredWait bounds how long a Dispatch for another replica waits for
// the command's lines queued here to be stored before it answers.
const linesStoredWait = 30 * time.Second

// Dispatch runs the caller's command here (Router.dispatchHere), ending
// with a Done: the command's result or error, or moved when the host's
// stream went to another replica. The Done is sent once the lines the
// fleet queued for the command (go-ahead, progress) are stored, so the
// line the caller stores next comes after them.
func (s *server) Dispatch(stream replicav1.ReplicaService_DispatchServer) error {
	from, err := s.refuse(stream.Context(), "Dispatch")
	if err != nil {
		return err
	}
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	hostID, cmd, err := commandFromProto(first.GetCommand())
	if err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	log := s.cfg.Log.With().Str("peer", from).Int64("host_id", hostID).Int64("subtask_id", cmd.SubtaskID).Int("attempt", cmd.Attempt).Logger()
	// The command's wait is not the stream's: a stream that breaks without
	// a cancel (the caller died or shut down) leaves the agent working.
	ctx, cancel := context.WithCancelCause(context.WithoutCancel(stream.Context()))
	defer cancel(nil)
	go func() {
		m, err := stream.Recv()
		switch {
		case err == nil && m.GetCancel() != nil:
			cancel(fmt.Errorf("canceled by replica %s: %s: %w", from, m.GetCancel().GetReason(), context.Canceled))
		case err != nil && !errors.Is(err, io.EOF):
			cancel(fmt.Errorf("replica %s went away: %w", from, task.ErrShutdown))
		default:
			cancel(fmt.Errorf("replica %s ended the dispatch without a cancel: %w", from, task.ErrShutdown))
		}
	}()
	if err := stream.Send(&replicav1.DispatchResponse{Msg: &replicav1.DispatchResponse_Accepted{Accepted: &replicav1.Accepted{}}}); err != nil {
		return err
	}
	log.Debug().Msg("running a command for another replica")
	res, err := s.cfg.Router.dispatchHere(ctx, hostID, cmd)
	if err != nil {
		log.Info().Err(err).Msg("command for another replica ended without its result")
	}
	// The caller stores the attempt's last line (its result, or why it
	// failed) once it has the Done: after the lines queued here.
	lctx, lcancel := context.WithTimeout(context.WithoutCancel(stream.Context()), linesStoredWait)
	if err := s.cfg.Router.cfg.Fleet.LinesStored(lctx, cmd.SubtaskID); err != nil {
		log.Warn().Err(err).Msg("the command's lines are not stored yet; its result goes back anyway")
	}
	lcancel()
	return stream.Send(&replicav1.DispatchResponse{Msg: &replicav1.DispatchResponse_Done{Done: done(res, err)}})
}

// Ack forwards an ack to the host's agentd, if its stream is here.
func (s *server) Ack(ctx context.Context, req *replicav1.AckRequest) (*replicav1.AckResponse, error) {
	if _, err := s.refuse(ctx, "Ack"); err != nil {
		return nil, err
	}
	s.cfg.Router.cfg.Fleet.Ack(req.GetHostId(), req.GetSubtaskId(), int(req.GetAttempt()))
	return &replicav1.AckResponse{}, nil
}

// Notify hands the changed task ids to OnNotify.
func (s *server) Notify(ctx context.Context, req *replicav1.NotifyRequest) (*replicav1.NotifyResponse, error) {
	if _, err := s.refuse(ctx, "Notify"); err != nil {
		return nil, err
	}
	if f := s.cfg.OnNotify; f != nil && len(req.GetTaskIds()) > 0 {
		f(req.GetTaskIds())
	}
	return &replicav1.NotifyResponse{}, nil
}
