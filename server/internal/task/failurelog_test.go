package task_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"agentplane/server/internal/errs"
	"agentplane/server/internal/task"
)

// A failed subtask's log ends with why it failed (the error's whole text),
// and its message is the sentence the error carries for its user.
func TestEngineFailedSubtaskLogEndsWithTheReason(t *testing.T) {
	st := openStore(t, t.TempDir())
	chain := fmt.Errorf("host 7: %w", errors.New("agentd not connected"))
	e := newEngine(t, st, map[string]task.Executor{
		"a": execFunc(func(_ context.Context, r task.Run) task.Result {
			r.Log("dispatching stop to the agentd of host 7 (attempt 1)")
			return task.Result{Err: errs.WithMessage(chain, "Host 7 has no agentd connected.")}
		}),
		"b": execFunc(func(ctx context.Context, r task.Run) task.Result {
			<-ctx.Done()
			return task.Result{Err: errors.New("stop interrupted")}
		}),
	})
	for _, tc := range []struct {
		name    string
		plan    task.Plan
		message string
		last    string
	}{
		{"failed", single("a", time.Minute), "Host 7 has no agentd connected.", "failed: host 7: agentd not connected"},
		{"timed out", single("b", time.Second), "timed out after 1s: stop interrupted", "failed: timed out after 1s: stop interrupted"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			created, err := e.Submit(context.Background(), tc.plan)
			if err != nil {
				t.Fatal(err)
			}
			got := waitFinal(t, e, created.ID)
			s := got.Subtasks[0]
			if got.Status != task.StatusFailed || s.Status != task.SubtaskFailed || s.Message != tc.message {
				t.Fatalf("task %s, subtask %s %q; want FAILED with %q", got.Status, s.Status, s.Message, tc.message)
			}
			lines, _, err := st.SubtaskLog(context.Background(), got.ID, s.ID, 0, 100, 1<<20)
			if err != nil || len(lines) < 2 || lines[len(lines)-1].Line != tc.last {
				t.Fatalf("log %+v, %v; want it to end with %q", lines, err, tc.last)
			}
		})
	}
}

// single is a plan of one subtask of class, with timeout.
func single(class string, timeout time.Duration) task.Plan {
	p := plan(timeout)
	p.Task.Subtasks[0].ClassName = class
	return p
}
