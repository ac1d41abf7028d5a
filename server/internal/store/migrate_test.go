package store

import (
	"context"
	"database/sql"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"agentplane/server/internal/task"
)

// TestSubtaskIDsContinueAfterTheMigration: on a database whose subtasks
// were stored before ids were taken from id_sequences, new ids follow the
// stored ones.
func TestSubtaskIDsContinueAfterTheMigration(t *testing.T) {
	SkipOnMySQL(t, "a legacy SQLite data dir")
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
	legacyDataDir(t, dir) // made by a server before goose, adopted by Open
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
	for _, q := range []string{`DROP TABLE store_probe`, `DROP TABLE subtask_log_sizes`, `ALTER TABLE subtask_logs DROP COLUMN size`,
		`ALTER TABLE subtask_logs DROP COLUMN kind`, `DROP INDEX hosts_op_task`, `DROP TABLE id_sequences`, `DROP TABLE agent_certs`} {
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

// TestLogSizesAfterTheMigration: logs stored before the bound are counted
// by the migration (their headers recognised), so the bound applies to
// them from the next append.
func TestLogSizesAfterTheMigration(t *testing.T) {
	SkipOnMySQL(t, "a legacy SQLite data dir")
	ctx := context.Background()
	dir := t.TempDir()
	legacyDataDir(t, dir) // made by a server before goose, adopted by Open
	s, err := Open(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	tk, _, err := s.CreateTask(ctx, task.Plan{Task: task.Task{Name: "t", Type: task.TypeManual, Operation: task.OpExecute,
		Status: task.StatusRunning, Creator: "admin", StartTime: time.Now(), Subtasks: []task.Subtask{{Name: "a", ClassName: "a",
			Operation: task.OpExecute, Status: task.SubtaskPending, RunTime: 1}}}})
	if err != nil {
		t.Fatal(err)
	}
	id := tk.Subtasks[0].ID
	lines := []task.SubtaskLogLine{{SubtaskID: id, LogLine: task.LogLine{RunTime: 1, Time: time.Now(), Line: "############{EXECUTE}{then}############"}}}
	for i := range 30 {
		lines = append(lines, task.SubtaskLogLine{SubtaskID: id, LogLine: task.LogLine{RunTime: 1, Time: time.Now(), Line: fmt.Sprintf("line %02d é", i)}})
	}
	if err := s.AppendSubtaskLogs(ctx, lines); err != nil {
		t.Fatal(err)
	}
	s.Close()
	// Back to the schema before the bound, as if the database were older.
	before := slices.IndexFunc(migrations, func(m string) bool { return strings.Contains(m, "ADD COLUMN kind") })
	db, err := sql.Open("sqlite", "file:"+filepath.Join(dir, FileName))
	if err != nil {
		t.Fatal(err)
	}
	// (and the migrations after it: agent_certs)
	for _, q := range []string{`DROP TABLE agent_certs`, `DROP TABLE subtask_log_sizes`, `ALTER TABLE subtask_logs DROP COLUMN size`,
		`ALTER TABLE subtask_logs DROP COLUMN kind`, fmt.Sprintf(`UPDATE schema_version SET version = %d`, before)} {
		if _, err := db.ExecContext(ctx, q); err != nil {
			t.Fatal(q, err)
		}
	}
	db.Close()

	s, err = Open(ctx, dir, WithLogLimits(LogLimits{MaxLines: 20, MaxBytes: 1 << 20}))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.AppendSubtaskLog(ctx, id, task.LogLine{RunTime: 1, Time: time.Now(), Line: "after"}); err != nil {
		t.Fatal(err)
	}
	got, _, err := s.SubtaskLog(ctx, tk.ID, id, 0, 100, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	// 32 lines past 20: trimmed to 15, the header and the marker among them.
	if len(got) != 15 || !got[0].Header || !strings.HasPrefix(got[1].Line, "[agentplane] 18 earlier lines (180 bytes) dropped") ||
		got[2].Line != "line 18 é" || got[14].Line != "after" {
		t.Fatalf("log after the migration: %+v", got)
	}
}
