package task_test

import (
	"context"
	"testing"
	"time"

	"agentplane/server/internal/audit"
	"agentplane/server/internal/host"
	"agentplane/server/internal/task"
)

func TestOperationsAnnotateTheAuditNote(t *testing.T) {
	rec := &recorder{do: map[string]func(context.Context, task.Run, bool) task.Result{"b": failFirst}}
	st := openStore(t, t.TempDir())
	h, err := st.RegisterHost(context.Background(), host.Host{Name: "h"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	e := newEngine(t, st, rec.executors("a", "b"))
	p := plan(time.Minute, time.Minute)
	p.Task.HostID = h.ID
	for i := range p.Task.Subtasks {
		p.Task.Subtasks[i].HostID = h.ID
	}
	created := submit(t, e, p)
	failed := waitFinal(t, e, created.ID)
	wantStatus(t, failed, task.StatusFailed, "SUCCESSFUL/EXECUTE/1 FAILED/EXECUTE/1")

	noted := func(t *testing.T, ctx context.Context, wantErr bool, op func(ctx context.Context) error) audit.Event {
		t.Helper()
		ctx, note := audit.WithNote(ctx)
		if err := op(ctx); (err != nil) != wantErr {
			t.Fatalf("error %v", err)
		}
		var ev audit.Event
		note.Fill(&ev)
		return ev
	}
	// Refused: the task is named, its host is not known yet.
	ev := noted(t, viewer, true, func(ctx context.Context) error { _, err := e.RetryTask(ctx, created.ID); return err })
	if ev.TaskID != created.ID || ev.HostID != 0 {
		t.Errorf("refused retry: task %d host %d", ev.TaskID, ev.HostID)
	}
	ev = noted(t, manager, false, func(ctx context.Context) error {
		_, err := e.RetrySubtask(ctx, created.ID, failed.Subtasks[1].ID)
		return err
	})
	if ev.TaskID != created.ID || ev.HostID != h.ID {
		t.Errorf("retry subtask: task %d host %d, want %d and %d", ev.TaskID, ev.HostID, created.ID, h.ID)
	}
	waitFinal(t, e, created.ID)
}
