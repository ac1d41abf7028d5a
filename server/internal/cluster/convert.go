package cluster

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	replicav1 "agentplane/gen/agentplane/replica/v1"
	"agentplane/server/internal/errs"
	"agentplane/server/internal/fleet"
)

func commandToProto(hostID int64, c fleet.Command) *replicav1.Command {
	m := &replicav1.Command{HostId: hostID, SubtaskId: c.SubtaskID, Attempt: int32(c.Attempt), Resumed: c.Resumed} //nolint:gosec // G115: attempts are small counts
	if c.Timeout > 0 {
		m.Timeout = durationpb.New(c.Timeout)
	}
	switch {
	case c.StopAgent != nil:
		s := &replicav1.StopAgent{}
		if c.StopAgent.Grace > 0 {
			s.Grace = durationpb.New(c.StopAgent.Grace)
		}
		m.Action = &replicav1.Command_StopAgent{StopAgent: s}
	case c.StartAgent != nil:
		m.Action = &replicav1.Command_StartAgent{StartAgent: &replicav1.StartAgent{}}
	}
	return m
}

func commandFromProto(m *replicav1.Command) (int64, fleet.Command, error) {
	if m.GetHostId() <= 0 || m.GetSubtaskId() <= 0 || m.GetAttempt() <= 0 {
		return 0, fleet.Command{}, fmt.Errorf("command for host %d, subtask %d, attempt %d: %w", m.GetHostId(), m.GetSubtaskId(), m.GetAttempt(), errs.ErrInvalidArgument)
	}
	c := fleet.Command{SubtaskID: m.GetSubtaskId(), Attempt: int(m.GetAttempt()), Resumed: m.GetResumed(), Timeout: m.GetTimeout().AsDuration()}
	switch a := m.GetAction().(type) {
	case *replicav1.Command_StopAgent:
		c.StopAgent = &fleet.StopAgent{Grace: a.StopAgent.GetGrace().AsDuration()}
	case *replicav1.Command_StartAgent:
		c.StartAgent = &fleet.StartAgent{}
	default:
		return 0, fleet.Command{}, fmt.Errorf("command without an action: %w", errs.ErrInvalidArgument)
	}
	return m.GetHostId(), c, nil
}

var outcomes = map[fleet.Outcome]replicav1.Outcome{
	fleet.Succeeded: replicav1.Outcome_OUTCOME_SUCCEEDED,
	fleet.Failed:    replicav1.Outcome_OUTCOME_FAILED,
	fleet.Canceled:  replicav1.Outcome_OUTCOME_CANCELED,
}

// done is how a dispatch here ended, for the caller.
func done(r fleet.Result, err error) *replicav1.Done {
	d := &replicav1.Done{}
	if o, ok := outcomes[r.Outcome]; ok {
		d.Result = &replicav1.Result{Outcome: o, Message: r.Message}
		if !r.FinishTime.IsZero() {
			d.Result.FinishTime = timestamppb.New(r.FinishTime)
		}
	}
	if err != nil {
		d.Error, d.Kind, d.Moved = err.Error(), kindOf(err), errors.Is(err, fleet.ErrMoved)
	}
	return d
}

func kindOf(err error) replicav1.ErrorKind {
	switch {
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return replicav1.ErrorKind_ERROR_KIND_CANCELED
	case errors.Is(err, errs.ErrStoreUnavailable):
		return replicav1.ErrorKind_ERROR_KIND_STORE_UNAVAILABLE
	}
	for _, k := range []struct {
		kind error
		pb   replicav1.ErrorKind
	}{
		{errs.ErrUnavailable, replicav1.ErrorKind_ERROR_KIND_UNAVAILABLE},
		{errs.ErrAborted, replicav1.ErrorKind_ERROR_KIND_ABORTED},
		{errs.ErrInvalidArgument, replicav1.ErrorKind_ERROR_KIND_INVALID_ARGUMENT},
		{errs.ErrPermissionDenied, replicav1.ErrorKind_ERROR_KIND_PERMISSION_DENIED},
	} {
		if errors.Is(err, k.kind) {
			return k.pb
		}
	}
	return replicav1.ErrorKind_ERROR_KIND_UNSPECIFIED
}

// ended returns what a Done says: the result (Outcome 0 without one) and
// the error, of the same kind as the one on the replica that ran the
// command (fleet.ErrAgentLost is one still).
func ended(d *replicav1.Done, subtaskID int64, attempt int) (fleet.Result, error) {
	var r fleet.Result
	if res := d.GetResult(); res != nil {
		for o, p := range outcomes {
			if p == res.GetOutcome() {
				r.Outcome = o
			}
		}
		r.SubtaskID, r.Attempt, r.Message = subtaskID, attempt, res.GetMessage()
		if res.GetFinishTime() != nil {
			r.FinishTime = res.GetFinishTime().AsTime()
		}
	}
	msg := d.GetError()
	if msg == "" {
		return r, nil
	}
	if rest, ok := strings.CutPrefix(msg, fleet.ErrAgentLost.Error()); ok {
		return r, fmt.Errorf("%w%s", fleet.ErrAgentLost, rest)
	}
	kinds := map[replicav1.ErrorKind]error{
		replicav1.ErrorKind_ERROR_KIND_UNAVAILABLE:       errs.ErrUnavailable,
		replicav1.ErrorKind_ERROR_KIND_ABORTED:           errs.ErrAborted,
		replicav1.ErrorKind_ERROR_KIND_CANCELED:          errs.ErrAborted,
		replicav1.ErrorKind_ERROR_KIND_INVALID_ARGUMENT:  errs.ErrInvalidArgument,
		replicav1.ErrorKind_ERROR_KIND_STORE_UNAVAILABLE: errs.ErrStoreUnavailable,
		replicav1.ErrorKind_ERROR_KIND_PERMISSION_DENIED: errs.ErrPermissionDenied,
	}
	if k, ok := kinds[d.GetKind()]; ok {
		return r, errs.New(k, msg)
	}
	return r, errors.New(msg)
}
