package store

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"

	"agentplane/server/internal/host"
	"agentplane/server/internal/task"
)

// The invariant of the bounded logs: each log's counters are its rows' count
// and size, and its dropped counts are the text lines appended and no longer
// there. These tests check it where it could break: a write or a group
// commit that fails after the counters changed, a restart, another store
// appending to the same log.

// logTestLimits are small, so that a few dozen lines cross them.
var logTestLimits = LogLimits{MaxBytes: 4 << 10, MaxLines: 40}

// openLogTest opens the store of dir (openLogStore) and stores a task with
// two subtasks, whose ids it returns.
func openLogTest(t *testing.T, dir string, bulk int) (*Store, int64, int64) {
	t.Helper()
	s := openLogStore(t, dir, bulk)
	ctx := context.Background()
	h, err := s.RegisterHost(ctx, host.Host{Name: "h1"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	tk, _, err := s.CreateTask(ctx, task.Plan{
		Task: task.Task{Name: "t", Type: task.TypeManual, Operation: task.OpExecute, Status: task.StatusRunning,
			Creator: "admin", HostID: h.ID, TaskDefinitionID: -1, StartTime: time.Now(),
			Context: task.Context{ListMap: map[string][]string{}, StringMap: map[string]string{}, ParallelIdx: -1},
			Subtasks: []task.Subtask{
				{Name: "first", ClassName: "a", Operation: task.OpExecute, Status: task.SubtaskReady, SeriesID: 1, Timeout: time.Minute, RunTime: 1, HostID: h.ID},
				{Name: "second", ClassName: "b", Operation: task.OpExecute, Status: task.SubtaskPending, Timeout: time.Minute, RunTime: 1, HostID: h.ID},
			}},
		Edges: [][2]int{{0, 1}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return s, tk.Subtasks[0].ID, tk.Subtasks[1].ID
}

// openLogStore opens the store of dir with logTestLimits, and its logs'
// counters written in bulk from bulk logs on (0: bulkLogs).
func openLogStore(t *testing.T, dir string, bulk int) *Store {
	t.Helper()
	s, err := OpenTest(t, dir, WithLogLimits(logTestLimits))
	if err != nil {
		t.Fatal(err)
	}
	s.logBulk = bulk
	t.Cleanup(func() { s.Close() })
	return s
}

// logFeed appends numbered lines of 100 bytes to one log and remembers what
// it appended, successfully or not.
type logFeed struct {
	id      int64
	next    int
	lines   int64 // text lines appended and committed
	headers int64
}

func (f *logFeed) batch(n int, header bool) []task.SubtaskLogLine {
	b := make([]task.SubtaskLogLine, 0, n+1)
	if header {
		b = append(b, task.SubtaskLogLine{SubtaskID: f.id, LogLine: task.LogLine{RunTime: 1, Time: time.Now(), Header: true,
			Line: "############{EXECUTE}{attempt}############"}})
	}
	for range n {
		line := fmt.Sprintf("line %05d ", f.next)
		b = append(b, task.SubtaskLogLine{SubtaskID: f.id, LogLine: task.LogLine{RunTime: 1, Time: time.Now(),
			Line: line + strings.Repeat("x", 100-len(line))}})
		f.next++
	}
	return b
}

func (f *logFeed) committed(b []task.SubtaskLogLine) {
	for _, l := range b {
		if l.Header {
			f.headers++
		} else {
			f.lines++
		}
	}
}

// append appends n lines (and a header first if header) in a write of its
// own.
func (f *logFeed) append(t *testing.T, s *Store, n int, header bool) {
	t.Helper()
	b := f.batch(n, header)
	if err := s.AppendSubtaskLogs(context.Background(), b); err != nil {
		t.Fatal(err)
	}
	f.committed(b)
}

// checkLog checks the invariant of f's log: counters = rows, within the
// limits, every header kept, at most one marker, and every text line
// appended either there or counted as dropped.
func checkLog(t *testing.T, s *Store, f *logFeed) {
	t.Helper()
	ctx := context.Background()
	var lines, bytes, dropped, droppedBytes int64
	err := s.r.QueryRowContext(ctx, "SELECT `lines`, bytes, dropped_lines, dropped_bytes FROM subtask_log_sizes WHERE subtask_id = ?",
		f.id).Scan(&lines, &bytes, &dropped, &droppedBytes)
	if err != nil {
		t.Fatalf("counters of subtask %d: %v", f.id, err)
	}
	rs, err := s.r.QueryContext(ctx, `SELECT kind, size FROM subtask_logs WHERE subtask_id = ?`, f.id)
	if err != nil {
		t.Fatal(err)
	}
	defer rs.Close()
	var n, size, text, headers, markers int64
	for rs.Next() {
		var kind, sz int64
		if err := rs.Scan(&kind, &sz); err != nil {
			t.Fatal(err)
		}
		n++
		size += sz
		switch kind {
		case lineText:
			text++
		case lineHeader:
			headers++
		case lineMarker:
			markers++
		}
	}
	if err := rs.Err(); err != nil {
		t.Fatal(err)
	}
	if lines != n || bytes != size {
		t.Fatalf("subtask %d: counters say %d lines, %d bytes; the rows are %d lines, %d bytes", f.id, lines, bytes, n, size)
	}
	if n > logTestLimits.MaxLines || size > logTestLimits.MaxBytes {
		t.Fatalf("subtask %d: %d lines, %d bytes stored, past the limits", f.id, n, size)
	}
	if headers != f.headers || markers > 1 || (markers == 1) != (dropped > 0) {
		t.Fatalf("subtask %d: %d headers (want %d), %d markers, %d dropped", f.id, headers, f.headers, markers, dropped)
	}
	if text+dropped != f.lines || droppedBytes != 100*dropped {
		t.Fatalf("subtask %d: %d text lines kept, %d (%d bytes) dropped; %d appended", f.id, text, dropped, droppedBytes, f.lines)
	}
}

// TestLogCountersAfterAFailedWrite: a write that appends to a log and then
// fails leaves neither its lines nor its counts, alone or in a group commit
// with other writes (which commit), and the log goes on within its limits.
func TestLogCountersAfterAFailedWrite(t *testing.T) { bothPaths(t, testLogCountersAfterAFailedWrite) }

func testLogCountersAfterAFailedWrite(t *testing.T, bulk int) {
	s, id, other := openLogTest(t, t.TempDir(), bulk)
	f, g := &logFeed{id: id}, &logFeed{id: other}
	f.append(t, s, 5, true)
	g.append(t, s, 5, true)
	failing := errors.New("failing on purpose")
	for round := range 20 {
		fb, gb := f.batch(3, false), g.batch(3, false)
		errs := commitGroup(s, func(ctx context.Context, tx *wtx) error {
			if err := s.appendSubtaskLogs(ctx, tx, fb); err != nil {
				return err
			}
			return failing
		}, func(ctx context.Context, tx *wtx) error { return s.appendSubtaskLogs(ctx, tx, gb) })
		if !errors.Is(errs[0], failing) || errs[1] != nil {
			t.Fatalf("round %d: the failing write: %v; the other: %v", round, errs[0], errs[1])
		}
		g.committed(gb)
		checkLog(t, s, f)
		checkLog(t, s, g)
		f.append(t, s, 3, round%4 == 0)
		checkLog(t, s, f)
	}
	if f.lines+f.headers <= logTestLimits.MaxLines {
		t.Fatalf("only %d lines appended: the limits were never crossed", f.lines)
	}
}

// bothPaths runs test with the logs' counters written one by one (bulk
// never) and in bulk (always).
func bothPaths(t *testing.T, test func(t *testing.T, bulk int)) {
	t.Run("rows", func(t *testing.T) { test(t, 1<<30) })
	t.Run("bulk", func(t *testing.T) { test(t, 1) })
}

// commitGroup commits writes as one group, as the writer would (which
// waits meanwhile: no write comes), and returns their outcomes.
func commitGroup(s *Store, fns ...func(context.Context, *wtx) error) []error {
	group := make([]*write, len(fns))
	for i, fn := range fns {
		group[i] = &write{ctx: context.Background(), fn: fn, done: make(chan error, 1)}
	}
	s.commit(group)
	errs := make([]error, len(group))
	for i, w := range group {
		errs[i] = <-w.done
	}
	return errs
}

// TestLogCountersAfterAFailedGroupCommit: a group commit that fails whole
// (a lost lock: the writer runs it again, then gives up) undoes the counts
// with the lines, and the writes it ran again count their lines once.
func TestLogCountersAfterAFailedGroupCommit(t *testing.T) {
	bothPaths(t, testLogCountersAfterAFailedGroupCommit)
}

func testLogCountersAfterAFailedGroupCommit(t *testing.T, bulk int) {
	s, id, _ := openLogTest(t, t.TempDir(), bulk)
	f := &logFeed{id: id}
	f.append(t, s, 5, true)
	deadlock := &mysql.MySQLError{Number: erLockDeadlock, Message: "deadlock on purpose"}
	for _, tt := range []struct {
		name     string
		failures int // attempts that lose their lock
		ok       bool
	}{{"run again", 1, true}, {"given up", maxAttempts, false}} {
		for round := range 6 {
			fb := f.batch(7, round == 0)
			attempts := 0
			errs := commitGroup(s, func(ctx context.Context, tx *wtx) error { return s.appendSubtaskLogs(ctx, tx, fb) },
				func(context.Context, *wtx) error {
					if attempts++; attempts <= tt.failures {
						return deadlock
					}
					return nil
				})
			ferr, lerr := errs[0], errs[1]
			if tt.ok != (ferr == nil) || tt.ok != (lerr == nil) {
				t.Fatalf("%s, round %d: the append: %v; the write losing its lock: %v", tt.name, round, ferr, lerr)
			}
			if tt.ok {
				f.committed(fb)
			}
			checkLog(t, s, f)
			f.append(t, s, 2, false)
			checkLog(t, s, f)
		}
	}
	if f.lines+f.headers <= logTestLimits.MaxLines {
		t.Fatalf("only %d lines appended: the limits were never crossed", f.lines)
	}
}

// TestLogCountersAfterARestart: a reopened store goes on counting and
// trimming the logs where the one before left them.
func TestLogCountersAfterARestart(t *testing.T) { bothPaths(t, testLogCountersAfterARestart) }

func testLogCountersAfterARestart(t *testing.T, bulk int) {
	dir := t.TempDir()
	s, id, _ := openLogTest(t, dir, bulk)
	f := &logFeed{id: id}
	for i := range 8 {
		f.append(t, s, 9, i%3 == 0)
		checkLog(t, s, f)
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		s = openLogStore(t, dir, bulk)
		checkLog(t, s, f)
	}
}

// TestLogCountersWithAnotherWriter: two stores on one database (MySQL: two
// servers; on SQLite, where one process holds the data dir, the same store)
// appending in turn to the same log, as a task's new owner after a failover
// would, keep its counters and its bounds.
func TestLogCountersWithAnotherWriter(t *testing.T) { bothPaths(t, testLogCountersWithAnotherWriter) }

func testLogCountersWithAnotherWriter(t *testing.T, bulk int) {
	dir := t.TempDir()
	a, id, _ := openLogTest(t, dir, bulk)
	b := a
	if OnMySQLForTest() {
		b = openLogStore(t, dir, bulk)
	}
	f := &logFeed{id: id}
	f.append(t, a, 1, true)
	for i := range 60 {
		w := a
		if i%3 != 0 {
			w = b
		}
		f.append(t, w, 1+i%4, i%10 == 0)
		checkLog(t, a, f)
	}
	if f.lines+f.headers <= 2*logTestLimits.MaxLines {
		t.Fatalf("only %d lines appended: the limits were crossed once at most", f.lines)
	}
}

// TestLogAppendStatements: appending to a log that has counters costs the
// lines' INSERT and one UPDATE of its counters, whatever the log's length;
// a log's first append also reads its counters (none) and inserts them.
func TestLogAppendStatements(t *testing.T) {
	var mu sync.Mutex
	var seen []string
	s, id, other := openLogTest(t, t.TempDir(), 0)
	s.wstmts.mu.Lock()
	s.wstmts.seen = func(q string) { mu.Lock(); seen = append(seen, q); mu.Unlock() }
	s.wstmts.mu.Unlock()
	statements := func(f *logFeed, n int) []string {
		t.Helper()
		mu.Lock()
		seen = nil
		mu.Unlock()
		f.append(t, s, n, false)
		mu.Lock()
		defer mu.Unlock()
		return seen
	}
	f, g := &logFeed{id: id}, &logFeed{id: other}
	if got := statements(f, 1); len(got) != 4 {
		t.Fatalf("a log's first append: %d statements, want 4:\n%s", len(got), strings.Join(got, "\n"))
	}
	g.append(t, s, 1, false)
	for i := range 20 {
		got := statements(f, 1)
		if len(got) == 2 && strings.HasPrefix(got[0], "INSERT INTO subtask_logs") && got[1] == addToLogSize {
			continue
		}
		if f.lines+f.headers <= logTestLimits.MaxLines { // (a trim takes more)
			t.Fatalf("append %d: %d statements, want 2:\n%s", i, len(got), strings.Join(got, "\n"))
		}
	}
	// One batch of lines of two logs: one INSERT, one UPDATE per log.
	b := append(f.batch(2, false), g.batch(2, false)...)
	mu.Lock()
	seen = nil
	mu.Unlock()
	if err := s.AppendSubtaskLogs(context.Background(), b); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != 3 {
		t.Fatalf("a batch for two logs: %d statements, want 3:\n%s", len(seen), strings.Join(seen, "\n"))
	}
	// In bulk: the INSERT, the counters read, deleted and inserted again.
	seen = nil
	s.logBulk = 2
	mu.Unlock()
	if err := s.AppendSubtaskLogs(context.Background(), append(f.batch(2, false), g.batch(2, false)...)); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	if len(seen) != 4 {
		t.Fatalf("a batch for two logs in bulk: %d statements, want 4:\n%s", len(seen), strings.Join(seen, "\n"))
	}
}

// BenchmarkAppendLogs appends a line to each of k logs in one write, their
// counters updated one by one (rows) or in bulk.
func BenchmarkAppendLogs(b *testing.B) {
	ctx := context.Background()
	s, err := OpenTest(b, b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	h, err := s.RegisterHost(ctx, host.Host{Name: "h1"}, time.Now())
	if err != nil {
		b.Fatal(err)
	}
	p := task.Plan{Task: task.Task{Name: "t", Type: task.TypeManual, Operation: task.OpExecute, Status: task.StatusRunning,
		Creator: "admin", HostID: h.ID, TaskDefinitionID: -1, StartTime: time.Now(),
		Context: task.Context{ListMap: map[string][]string{}, StringMap: map[string]string{}, ParallelIdx: -1}}}
	for range 64 {
		p.Task.Subtasks = append(p.Task.Subtasks, task.Subtask{Name: "s", ClassName: "a", Operation: task.OpExecute,
			Status: task.SubtaskReady, Timeout: time.Minute, RunTime: 1, HostID: h.ID})
	}
	tk, _, err := s.CreateTask(ctx, p)
	if err != nil {
		b.Fatal(err)
	}
	for _, k := range []int{1, 2, 4, 8, 16, 64} {
		for _, mode := range []struct {
			name string
			bulk int
		}{{"rows", 1 << 30}, {"bulk", 1}} {
			b.Run(fmt.Sprintf("%s/%d", mode.name, k), func(b *testing.B) {
				s.logBulk = mode.bulk
				var lines []task.SubtaskLogLine
				for _, st := range tk.Subtasks[:k] {
					lines = append(lines, task.SubtaskLogLine{SubtaskID: st.ID, LogLine: task.LogLine{RunTime: 1, Time: time.Now(),
						Line: "an agent's line of about sixty bytes, as the bench's are"}})
				}
				for b.Loop() {
					if err := s.AppendSubtaskLogs(ctx, lines); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
