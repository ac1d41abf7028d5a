package agentop

import (
	"context"
	"errors"
	"testing"

	"agentplane/server/internal/errs"
	"agentplane/server/internal/fleet"
	"agentplane/server/internal/task"
)

// A dispatch its subtask's end stopped tells its user what happened once;
// the chain, with agentd's own words, stays the error's text (the log's).
func TestStopAllEndedMessage(t *testing.T) {
	timeout := errors.New("timed out after 600s")
	for _, tt := range []struct {
		name   string
		result fleet.Result
		cause  error
		want   string
	}{
		{"canceled", fleet.Result{Outcome: fleet.Canceled, Message: "canceled: canceled by an operator"}, task.ErrCanceled,
			"Host 7: stop canceled by an operator."},
		{"timed out", fleet.Result{Outcome: fleet.Canceled, Message: "canceled: timed out after 600s"}, timeout,
			"Host 7: stop timed out after 600s."},
		{"finished first", fleet.Result{Outcome: fleet.Succeeded, Message: "stopped 3 OCP Agent base processes"}, task.ErrCanceled,
			"Host 7: stop canceled by an operator after agentd had finished it (stopped 3 OCP Agent base processes)."},
		{"failed first", fleet.Result{Outcome: fleet.Failed, Message: "ocp_monagent (pid 812) still running"}, task.ErrCanceled,
			"Host 7: stop canceled by an operator; agentd reported: ocp_monagent (pid 812) still running."},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r, _ := run(7)
			res := dispatch{&agents{result: tt.result, err: tt.cause}, actionStop}.Execute(context.Background(), r)
			if res.Err == nil || errs.Message(res.Err) != tt.want {
				t.Fatalf("message %q, want %q", errs.Message(res.Err), tt.want)
			}
			if want := "host 7: " + tt.cause.Error() + " (agentd: " + tt.result.Message + ")"; res.Err.Error() != want {
				t.Fatalf("error %q, want the chain %q", res.Err, want)
			}
			if !errors.Is(res.Err, tt.cause) {
				t.Fatalf("error %q does not wrap its cause", res.Err)
			}
		})
	}
}
