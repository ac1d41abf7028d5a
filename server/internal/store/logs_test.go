package store_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"agentplane/server/internal/host"
	"agentplane/server/internal/store"
	"agentplane/server/internal/task"
)

// storedLog is what the database holds for a subtask's log, read beside
// the store.
func storedLog(t *testing.T, dir string, subtaskID int64) (lines, bytes int64) {
	t.Helper()
	db := store.RawTestDB(t, dir)
	size := `LENGTH(CAST(line AS BLOB))` // bytes, not characters
	if store.OnMySQLForTest() {
		size = `LENGTH(line)` // bytes in MySQL
	}
	if err := db.QueryRow(`SELECT COUNT(*), COALESCE(SUM(`+size+`), 0) FROM subtask_logs WHERE subtask_id = ?`,
		subtaskID).Scan(&lines, &bytes); err != nil {
		t.Fatal(err)
	}
	return lines, bytes
}

// newTask stores a task with subtasks on a new host.
func newTask(t *testing.T, s *store.Store) *task.Task {
	t.Helper()
	ctx := context.Background()
	h, err := s.RegisterHost(ctx, host.Host{Name: "h1"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	tk, _, err := s.CreateTask(ctx, withSubtasks(plan(h.ID)))
	if err != nil {
		t.Fatal(err)
	}
	return tk
}

// TestSubtaskLogBounded: a log fed far past its limits keeps under them,
// keeps every attempt header, and says with one marker line, where the
// dropped lines were, how many lines and bytes were dropped.
func TestSubtaskLogBounded(t *testing.T) {
	for _, tt := range []struct {
		name     string
		lim      store.LogLimits
		lineSize int
		batch    int
	}{
		{"bytes bound, one line at a time", store.LogLimits{MaxBytes: 20 << 10, MaxLines: 1000}, 1000, 1},
		{"lines bound, batches", store.LogLimits{MaxBytes: 1 << 20, MaxLines: 50}, 40, 7},
		{"batch larger than the log", store.LogLimits{MaxBytes: 8 << 10, MaxLines: 1000}, 1000, 40},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			dir := t.TempDir()
			s, err := store.OpenTest(t, dir, store.WithLogLimits(tt.lim))
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			tk := newTask(t, s)
			id, other := tk.Subtasks[0].ID, tk.Subtasks[1].ID
			header := func(attempt int) task.SubtaskLogLine {
				return task.SubtaskLogLine{SubtaskID: id, LogLine: task.LogLine{RunTime: attempt, Time: time.Now(), Header: true,
					Line: fmt.Sprintf("############{EXECUTE}{attempt %d}############", attempt)}}
			}
			var appended, appendedBytes int64
			for attempt := 1; attempt <= 3; attempt++ {
				if err := s.AppendSubtaskLogs(ctx, []task.SubtaskLogLine{header(attempt)}); err != nil {
					t.Fatal(err)
				}
				for i := 0; i < 100; i += tt.batch {
					var b []task.SubtaskLogLine
					for j := range tt.batch {
						// A line that looks like a header is still a line.
						line := fmt.Sprintf("############{EXECUTE}{%d %d}", attempt, i+j)
						line += strings.Repeat("x", tt.lineSize-len(line))
						b = append(b, task.SubtaskLogLine{SubtaskID: id, LogLine: task.LogLine{RunTime: attempt, Time: time.Now(), Line: line}})
						appended++
						appendedBytes += int64(len(line))
					}
					// Another subtask's lines in the same batch are not counted in this log.
					b = append(b, task.SubtaskLogLine{SubtaskID: other, LogLine: task.LogLine{RunTime: 1, Time: time.Now(), Line: "other"}})
					if err := s.AppendSubtaskLogs(ctx, b); err != nil {
						t.Fatal(err)
					}
					if n, size := storedLog(t, dir, id); n > tt.lim.MaxLines || size > tt.lim.MaxBytes {
						t.Fatalf("after %d lines appended: %d lines, %d bytes stored; limits %d lines, %d bytes",
							appended, n, size, tt.lim.MaxLines, tt.lim.MaxBytes)
					}
				}
			}
			lines, more, err := s.SubtaskLog(ctx, tk.ID, id, 0, 10000, 1<<30)
			if err != nil || more {
				t.Fatal(err, more)
			}
			var headers, markers int
			var kept, keptBytes int64
			var marker string
			for i, l := range lines {
				switch {
				case l.Header:
					headers++
					if want := fmt.Sprintf("{attempt %d}", headers); !strings.Contains(l.Line, want) {
						t.Errorf("header %d: %q", headers, l.Line)
					}
				case strings.HasPrefix(l.Line, "[agentplane]"):
					markers++
					marker = l.Line
					if i+1 < len(lines) && !lines[i+1].Header && lines[i+1].RunTime < l.RunTime {
						t.Errorf("marker before older lines: %+v", lines[i+1])
					}
				default:
					kept++
					keptBytes += int64(len(l.Line))
				}
				if i > 0 && l.Seq <= lines[i-1].Seq {
					t.Fatalf("line %d out of order", i)
				}
			}
			if headers != 3 || markers != 1 {
				t.Fatalf("%d headers, %d markers; want 3 and 1:\n%v", headers, markers, lines)
			}
			want := fmt.Sprintf("[agentplane] %d earlier lines (%d bytes) dropped: a subtask log keeps at most %d lines and %d bytes",
				appended-kept, appendedBytes-keptBytes, tt.lim.MaxLines, tt.lim.MaxBytes)
			if marker != want {
				t.Fatalf("marker %q, want %q", marker, want)
			}
			if o, _ := storedLog(t, dir, other); o != int64(3*((100+tt.batch-1)/tt.batch)) {
				t.Fatalf("other subtask's log has %d lines", o)
			}
		})
	}
}

// TestSubtaskLogPages: a log read page by page, by lines and by bytes,
// gives every line once, in order, and each page stays within its bounds.
func TestSubtaskLogPages(t *testing.T) {
	ctx := context.Background()
	s := open(t, t.TempDir())
	tk := newTask(t, s)
	id := tk.Subtasks[0].ID
	var b []task.SubtaskLogLine
	for i := range 95 {
		b = append(b, task.SubtaskLogLine{SubtaskID: id, LogLine: task.LogLine{RunTime: 1, Time: time.Now(),
			Line: fmt.Sprintf("%03d %s", i, strings.Repeat("y", 96))}}) // 100 bytes
	}
	if err := s.AppendSubtaskLogs(ctx, b); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		limit, maxBytes, perPage int
	}{{10, 1 << 20, 10}, {100, 350, 3}, {100, 50, 1}} {
		var after int64
		next := 0
		for pages := 0; ; pages++ {
			lines, more, err := s.SubtaskLog(ctx, tk.ID, id, after, tt.limit, tt.maxBytes)
			if err != nil {
				t.Fatal(err)
			}
			if len(lines) > tt.perPage || more && len(lines) != tt.perPage {
				t.Fatalf("limit %d, %d bytes: a page of %d lines (more %v)", tt.limit, tt.maxBytes, len(lines), more)
			}
			for _, l := range lines {
				if want := fmt.Sprintf("%03d ", next); !strings.HasPrefix(l.Line, want) {
					t.Fatalf("line %q, want %q", l.Line, want)
				}
				next++
				after = l.Seq
			}
			if !more {
				break
			}
		}
		if next != 95 {
			t.Fatalf("limit %d, %d bytes: %d lines read", tt.limit, tt.maxBytes, next)
		}
	}
	if _, _, err := s.SubtaskLog(ctx, tk.ID+1, id, 0, 10, 100); err == nil {
		t.Fatal("a subtask read under another task")
	}
}
