package rpc

import (
	"context"
	"errors"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	auditv1 "agentplane/gen/agentplane/audit/v1"
	replicav1 "agentplane/gen/agentplane/replica/v1"
	taskv1 "agentplane/gen/agentplane/task/v1"
	"agentplane/server/internal/api"
	"agentplane/server/internal/audit"
	"agentplane/server/internal/errs"
)

// registerAudit registers AuditService when cfg.Audit is set.
func registerAudit(s *grpc.Server, cfg Config) {
	if cfg.Audit != nil {
		auditv1.RegisterAuditServiceServer(s, &auditServer{audit: cfg.Audit})
	}
}

// auditUnary returns the interceptor that records every mutating unary call
// (see audited); it must be the first of the chain, before authentication,
// so that refused calls are recorded too. With a nil Auditor it only calls
// the handler.
func auditUnary(a api.Auditor) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		if a == nil || !audited(info.FullMethod) {
			return h(ctx, req)
		}
		ctx, note := audit.WithNote(ctx)
		resp, err := h(ctx, req)
		e := audit.Event{Operation: info.FullMethod}
		if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
			e.SourceAddr = p.Addr.String()
		}
		note.Fill(&e)
		if e.HostID == 0 {
			e.HostID = hostIDOf(req, resp)
		}
		if e.TaskID == 0 {
			e.TaskID = taskIDOf(info.FullMethod, req)
		}
		e.Outcome = outcome(err)
		if err != nil {
			e.Message = status.Convert(err).Message()
		}
		a.Record(ctx, e)
		return resp, err
	}
}

// audited reports whether calls of the unary method are recorded: those
// that may change state, which is every method but reads (Get*, List*,
// Watch*), health, reflection and the replicas' own calls (ReplicaService:
// no user's, and refused ones are logged). The agent stream (Connect) is a
// stream and never reaches the unary interceptor; Enroll and
// RenewCertificate are recorded.
func audited(fullMethod string) bool {
	if strings.HasPrefix(fullMethod, "/grpc.health.") || strings.HasPrefix(fullMethod, "/grpc.reflection.") ||
		strings.HasPrefix(fullMethod, "/"+replicav1.ReplicaService_ServiceDesc.ServiceName+"/") {
		return false
	}
	name := fullMethod[strings.LastIndexByte(fullMethod, '/')+1:]
	for _, read := range []string{"Get", "List", "Watch"} {
		if strings.HasPrefix(name, read) {
			return false
		}
	}
	return true
}

// hostIDOf returns the host id the request names, else the one the
// response names (an enrollment's), else 0.
func hostIDOf(req, resp any) int64 {
	for _, m := range []any{req, resp} {
		if m, ok := m.(interface{ GetHostId() int64 }); ok && m.GetHostId() > 0 {
			return m.GetHostId()
		}
	}
	return 0
}

// taskIDOf returns the task id the request names (task_id, or a
// TaskService request's id), else 0.
func taskIDOf(fullMethod string, req any) int64 {
	if r, ok := req.(interface{ GetTaskId() int64 }); ok {
		return r.GetTaskId()
	}
	if r, ok := req.(interface{ GetId() int64 }); ok &&
		strings.HasPrefix(fullMethod, "/"+taskv1.TaskService_ServiceDesc.ServiceName+"/") {
		return r.GetId()
	}
	return 0
}

// outcome names how a call that ended with err ended (audit.OutcomeOf).
// An error toStatus made keeps the domain error and its kind; a status that
// gRPC or the adapter raised itself (UNIMPLEMENTED, a malformed request) is
// named by its code.
func outcome(err error) string {
	if errs.Kind(err) != nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return audit.OutcomeOf(err)
	}
	return outcomeOf(status.Code(err))
}

// outcomeOf names the outcome of a status of code c that carries no error:
// the outcome of the kinds codeOf answers with c (they share one), or of
// the context error c stands for; UNIMPLEMENTED; else INTERNAL.
func outcomeOf(c codes.Code) string {
	switch c {
	case codes.OK:
		return audit.OutcomeOK
	case codes.Canceled:
		return audit.OutcomeOf(context.Canceled)
	case codes.DeadlineExceeded:
		return audit.OutcomeOf(context.DeadlineExceeded)
	case codes.Unimplemented:
		return audit.OutcomeUnimplemented
	}
	for kind, kc := range codeOf {
		if kc == c {
			return audit.OutcomeOf(kind)
		}
	}
	return audit.OutcomeInternal // Unknown, Internal, DataLoss
}

// auditServer serves AuditService.
type auditServer struct {
	auditv1.UnimplementedAuditServiceServer
	audit api.Auditor
}

var _ auditv1.AuditServiceServer = (*auditServer)(nil)

func (s *auditServer) ListAuditEvents(ctx context.Context, req *auditv1.ListAuditEventsRequest) (*auditv1.ListAuditEventsResponse, error) {
	p, err := s.audit.ListEvents(ctx, audit.Query{
		Username:  req.GetUsername(),
		Operation: req.GetOperation(),
		HostID:    req.GetHostId(),
		TaskID:    req.GetTaskId(),
		Outcome:   req.GetOutcome(),
		Start:     fromTS(req.GetStartTime()),
		End:       fromTS(req.GetEndTime()),
		Page:      int(req.GetPage()),
		Size:      int(req.GetSize()),
	})
	if err != nil {
		return nil, toStatus(ctx, err)
	}
	out := &auditv1.ListAuditEventsResponse{Events: make([]*auditv1.AuditEvent, 0, len(p.Events)), TotalElements: p.Total}
	for _, e := range p.Events {
		out.Events = append(out.Events, &auditv1.AuditEvent{
			Id: e.ID, Time: ts(e.Time), Username: e.Username, AccessKeyId: e.AccessKeyID, SourceAddress: e.SourceAddr,
			Operation: e.Operation, HostId: e.HostID, TaskId: e.TaskID, Target: e.Target, Outcome: e.Outcome,
			Message: e.Message,
		})
	}
	return out, nil
}
