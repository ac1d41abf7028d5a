package agentop

import (
	"context"
	"testing"

	"agentplane/server/internal/audit"
	"agentplane/server/internal/auth"
	"agentplane/server/internal/task"
)

// idSubmitter creates tasks with id 42.
type idSubmitter struct{}

func (idSubmitter) Submit(_ context.Context, p task.Plan) (*task.Task, error) {
	t := p.Task
	t.ID = 42
	return &t, nil
}

func TestServiceAnnotatesTheAuditNote(t *testing.T) {
	as := func(roles ...auth.Role) context.Context {
		return auth.WithPrincipal(context.Background(), auth.Principal{Username: "u", Roles: roles})
	}
	s := NewService(&hosts{known: map[int64]bool{7: true, 8: true}}, idSubmitter{})
	tests := []struct {
		name         string
		ctx          context.Context
		call         func(ctx context.Context) error
		host, taskID int64
	}{
		{"stop", as(auth.RoleHostManager), func(ctx context.Context) error { _, err := s.StopAgent(ctx, 7); return err }, 7, 42},
		{"start", as(auth.RoleHostManager), func(ctx context.Context) error { _, err := s.StartAgent(ctx, 7); return err }, 7, 42},
		{"restart", as(auth.RoleHostManager), func(ctx context.Context) error { _, err := s.RestartAgent(ctx, 8); return err }, 8, 42},
		{"batch stop", as(auth.RoleHostManager), func(ctx context.Context) error {
			_, err := s.BatchStopAgents(ctx, []int64{7, 8})
			return err
		}, 0, 42},
		{"batch start", as(auth.RoleHostManager), func(ctx context.Context) error {
			_, err := s.BatchStartAgents(ctx, []int64{7, 8})
			return err
		}, 0, 42},
		{"batch restart", as(auth.RoleHostManager), func(ctx context.Context) error {
			_, err := s.BatchRestartAgents(ctx, []int64{7})
			return err
		}, 0, 42},
		{"refused: the host, no task", as(auth.RoleHostViewer), func(ctx context.Context) error { _, err := s.StopAgent(ctx, 7); return err }, 7, 0},
		{"unknown host", as(auth.RoleHostManager), func(ctx context.Context) error { _, err := s.StopAgent(ctx, 9); return err }, 9, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, note := audit.WithNote(tt.ctx)
			_ = tt.call(ctx)
			var e audit.Event
			note.Fill(&e)
			if e.HostID != tt.host || e.TaskID != tt.taskID {
				t.Fatalf("host %d task %d, want host %d task %d", e.HostID, e.TaskID, tt.host, tt.taskID)
			}
		})
	}
}
