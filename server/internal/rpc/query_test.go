package rpc

import (
	"errors"
	"testing"

	agentv1 "agentplane/gen/agentplane/agent/v1"
	"agentplane/server/internal/errs"
	"agentplane/server/internal/fleet"
)

// The stream's epoch reaches agentd on commands, cancels and queries, and
// agentd's answers reach the fleet, a finished one with its result.
func TestEpochsQueriesAndAnswersAreTranslated(t *testing.T) {
	cmd := toOutbound(fleet.Outbound{Command: &fleet.Command{SubtaskID: 1, Attempt: 2, Epoch: 7, StopAgent: &fleet.StopAgent{}}})
	cancel := toOutbound(fleet.Outbound{Cancel: &fleet.Cancel{SubtaskID: 1, Attempt: 2, Epoch: 7, Reason: "r"}})
	query := toOutbound(fleet.Outbound{Query: &fleet.Query{SubtaskID: 1, Attempt: 2, Epoch: 7}})
	if cmd.GetCommand().GetEpoch() != 7 || cancel.GetCancel().GetEpoch() != 7 {
		t.Fatalf("command %v, cancel %v: want epoch 7", cmd, cancel)
	}
	if q := query.GetQuery(); q.GetSubtaskId() != 1 || q.GetAttempt() != 2 || q.GetEpoch() != 7 {
		t.Fatalf("query %v", query)
	}

	res := &agentv1.CommandResult{SubtaskId: 1, Attempt: 2, Outcome: agentv1.CommandOutcome_COMMAND_OUTCOME_CANCELED, Message: "m"}
	in, err := fromInbound(&agentv1.ConnectRequest{Kind: &agentv1.ConnectRequest_Answer{Answer: &agentv1.QueryAnswer{
		SubtaskId: 1, Attempt: 2, State: agentv1.CommandState_COMMAND_STATE_FINISHED, Result: res}}})
	if err != nil {
		t.Fatal(err)
	}
	if a := in.Answer; a == nil || a.State != fleet.StateFinished || a.Result == nil ||
		*a.Result != (fleet.Result{SubtaskID: 1, Attempt: 2, Outcome: fleet.Canceled, Message: "m"}) {
		t.Fatalf("finished answer %+v", in.Answer)
	}
	for st, want := range map[agentv1.CommandState]fleet.CommandState{
		agentv1.CommandState_COMMAND_STATE_UNKNOWN: fleet.StateUnknown,
		agentv1.CommandState_COMMAND_STATE_WAITING: fleet.StateWaiting,
		agentv1.CommandState_COMMAND_STATE_RUNNING: fleet.StateRunning,
	} {
		in, err := fromInbound(&agentv1.ConnectRequest{Kind: &agentv1.ConnectRequest_Answer{Answer: &agentv1.QueryAnswer{
			SubtaskId: 1, Attempt: 2, State: st, Result: res}}})
		if err != nil || in.Answer.State != want || in.Answer.Result != nil {
			t.Fatalf("answer %v: %+v, %v", st, in.Answer, err)
		}
	}
	if _, err := fromInbound(&agentv1.ConnectRequest{Kind: &agentv1.ConnectRequest_Answer{Answer: &agentv1.QueryAnswer{
		SubtaskId: 1, Attempt: 2}}}); !errors.Is(err, errs.ErrInvalidArgument) {
		t.Fatalf("answer without a state: %v", err)
	}
}
