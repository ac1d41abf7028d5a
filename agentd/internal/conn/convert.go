package conn

import (
	"google.golang.org/protobuf/types/known/timestamppb"

	"agentplane/agentd/internal/proc"
	"agentplane/agentd/internal/state"
	agentv1 "agentplane/gen/agentplane/agent/v1"
)

// This file translates between agentd's domain types and the wire protocol.

func processMsg(t proc.Target) *agentv1.Process {
	p := &agentv1.Process{Pid: t.PID, Name: t.Name, Exe: t.Exe, Cmdline: t.Cmdline, User: t.User}
	if !t.CreateTime.IsZero() {
		p.CreateTime = timestamppb.New(t.CreateTime)
	}
	return p
}

func processMsgs(ts []proc.Target) []*agentv1.Process {
	out := make([]*agentv1.Process, 0, len(ts))
	for _, t := range ts {
		out = append(out, processMsg(t))
	}
	return out
}

var eventKinds = map[proc.EventKind]agentv1.ProcessEventKind{
	proc.EventFound:       agentv1.ProcessEventKind_PROCESS_EVENT_KIND_FOUND,
	proc.EventSigtermSent: agentv1.ProcessEventKind_PROCESS_EVENT_KIND_SIGTERM_SENT,
	proc.EventExited:      agentv1.ProcessEventKind_PROCESS_EVENT_KIND_EXITED,
	proc.EventSigkillSent: agentv1.ProcessEventKind_PROCESS_EVENT_KIND_SIGKILL_SENT,
	proc.EventSkipped:     agentv1.ProcessEventKind_PROCESS_EVENT_KIND_SKIPPED,
	proc.EventError:       agentv1.ProcessEventKind_PROCESS_EVENT_KIND_ERROR,
	proc.EventStarted:     agentv1.ProcessEventKind_PROCESS_EVENT_KIND_STARTED,
	proc.EventOutput:      agentv1.ProcessEventKind_PROCESS_EVENT_KIND_OUTPUT,
}

// kindName is a lowercase name of an event kind, for logs.
func kindName(k proc.EventKind) string {
	switch k {
	case proc.EventFound:
		return "found"
	case proc.EventSigtermSent:
		return "sigterm_sent"
	case proc.EventExited:
		return "exited"
	case proc.EventSigkillSent:
		return "sigkill_sent"
	case proc.EventSkipped:
		return "skipped"
	case proc.EventError:
		return "error"
	case proc.EventStarted:
		return "started"
	case proc.EventOutput:
		return "output"
	}
	return "unknown"
}

func progressMsg(k cmdKey, ev proc.Event) *agentv1.ConnectRequest {
	p := &agentv1.CommandProgress{
		SubtaskId: k.subtask,
		Attempt:   k.attempt,
		Kind:      eventKinds[ev.Kind], // UNSPECIFIED for an unknown kind
		Process:   processMsg(ev.Target),
		Message:   ev.Message,
	}
	if !ev.Time.IsZero() {
		p.Time = timestamppb.New(ev.Time)
	} else {
		p.Time = timestamppb.Now()
	}
	return &agentv1.ConnectRequest{Kind: &agentv1.ConnectRequest_Progress{Progress: p}}
}

var outcomes = map[state.Outcome]agentv1.CommandOutcome{
	state.OutcomeSucceeded: agentv1.CommandOutcome_COMMAND_OUTCOME_SUCCEEDED,
	state.OutcomeFailed:    agentv1.CommandOutcome_COMMAND_OUTCOME_FAILED,
	state.OutcomeCanceled:  agentv1.CommandOutcome_COMMAND_OUTCOME_CANCELED,
}

func resultMsg(r state.Result) *agentv1.ConnectRequest {
	res := &agentv1.CommandResult{
		SubtaskId: r.SubtaskID,
		Attempt:   r.Attempt,
		Outcome:   outcomes[r.Outcome],
		Message:   r.Message,
	}
	if !r.FinishTime.IsZero() {
		res.FinishTime = timestamppb.New(r.FinishTime)
	}
	return &agentv1.ConnectRequest{Kind: &agentv1.ConnectRequest_Result{Result: res}}
}
