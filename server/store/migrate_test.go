package store

import (
	"context"
	"database/sql"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"agentplane/server/task"
)

// TestSubtaskIDsContinueAfterTheMigration: on a database whose subtasks
// were stored before ids were taken from id_sequences, new ids follow the
// stored ones.
func TestSubtaskIDsContinueAfterTheMigration(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	chain := func() task.Plan {
		p := task.Plan{Task: task.Task{Name: "t", Type: task.TypeManual, Operation: task.OpExecute,
			Status: task.StatusRunning, Creator: "admin", StartTime: time.Now()}, Edges: [][2]int{{0, 1}}}
		for i, name := range []string{"first", "second"} {
			p.Task.Subtasks = append(p.Task.Subtasks, task.Subtask{Name: name, ClassName: name, Operation: task.OpExecute,
				Status: task.SubtaskPending, SeriesID: 1 - i, RunTime: 1})
		}
		return p
	}
	s, err := Open(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	var old []int64
	for range 3 {
		tk, _, err := s.CreateTask(ctx, chain())
		if err != nil {
			t.Fatal(err)
		}
		for _, st := range tk.Subtasks {
			old = append(old, st.ID)
		}
	}
	s.Close()
	// Back to the schema before id_sequences, as if the database were older.
	before := slices.IndexFunc(migrations, func(m string) bool { return strings.Contains(m, "CREATE TABLE id_sequences") })
	db, err := sql.Open("sqlite", "file:"+filepath.Join(dir, FileName))
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{`DROP INDEX hosts_op_task`, `DROP TABLE id_sequences`, `DROP TABLE agent_certs`} {
		if _, err := db.ExecContext(ctx, q); err != nil {
			t.Fatal(q, err)
		}
	}
	if _, err := db.ExecContext(ctx, `UPDATE schema_version SET version = ?`, before); err != nil {
		t.Fatal(err)
	}
	db.Close()

	s, err = Open(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	tk, _, err := s.CreateTask(ctx, chain())
	if err != nil {
		t.Fatal(err)
	}
	last := slices.Max(old)
	if tk.Subtasks[1].ID != last+1 || tk.Subtasks[0].ID != last+2 {
		t.Fatalf("new subtask ids %d, %d after %d", tk.Subtasks[1].ID, tk.Subtasks[0].ID, last)
	}
}
