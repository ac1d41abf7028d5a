package store_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"agentplane/server/internal/host"
	"agentplane/server/internal/store"
	"agentplane/server/internal/task"
)

// BenchmarkStopLogs appends what a stop's three subtasks log, a line at a
// time: each an attempt header, then four lines (one op: a stop's logs, 15
// appends).
func BenchmarkStopLogs(b *testing.B) {
	ctx := context.Background()
	s, err := store.OpenTest(b, b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	h, err := s.RegisterHost(ctx, host.Host{Name: "h1"}, time.Now())
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		b.StopTimer()
		p := withSubtasks(plan(h.ID))
		p.Resources = nil
		p.Task.Subtasks = append(p.Task.Subtasks, p.Task.Subtasks[1])
		p.Edges = nil
		tk, _, err := s.CreateTask(ctx, p)
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		for _, st := range tk.Subtasks {
			if err := s.AppendSubtaskLog(ctx, st.ID, task.LogLine{RunTime: 1, Time: time.Now(), Header: true,
				Line: "############{EXECUTE}{1}############"}); err != nil {
				b.Fatal(err)
			}
			for i := range 4 {
				if err := s.AppendSubtaskLog(ctx, st.ID, task.LogLine{RunTime: 1, Time: time.Now(),
					Line: fmt.Sprintf("an agent's line %d of about sixty bytes, as the bench's are", i)}); err != nil {
					b.Fatal(err)
				}
			}
		}
	}
}
