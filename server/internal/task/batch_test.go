package task_test

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"agentplane/server/internal/agentop"
	"agentplane/server/internal/fleet"
	"agentplane/server/internal/host"
	"agentplane/server/internal/store"
	"agentplane/server/internal/task"
)

// The batch benchmarks and tests run agent-operation plans (agentop's, the
// server's own) on the real SQLite store, with executors that answer at
// once: they measure the engine and the store, without the network.

// instant is an executor for every class of the stop chain that logs a line
// and succeeds at once, as an agent that answers at once does.
func instant(fail func(task.Run) bool) map[string]task.Executor {
	x := execFunc(func(_ context.Context, r task.Run) task.Result {
		r.Log("host " + strconv.FormatInt(r.Subtask.HostID, 10) + ": done")
		if fail != nil && fail(r) {
			return task.Result{Err: fmt.Errorf("host %d: failed on purpose", r.Subtask.HostID)}
		}
		return task.Result{Message: "done"}
	})
	return map[string]task.Executor{agentop.ClassPrepareStop: x, agentop.ClassStopAll: x, agentop.ClassFinish: x}
}

// fleetStore opens a store in dir with n hosts registered, and returns it
// with their ids.
func fleetStore(tb testing.TB, dir string, n int) (*store.Store, []int64) {
	tb.Helper()
	st, err := store.Open(context.Background(), dir)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { st.Close() })
	ids := make([]int64, n)
	now := time.Now()
	for i := range ids {
		h, err := st.RegisterHost(context.Background(), host.Host{Name: "h" + strconv.Itoa(i)}, now)
		if err != nil {
			tb.Fatal(err)
		}
		ids[i] = h.ID
	}
	return st, ids
}

func startEngine(tb testing.TB, st task.Store, execs map[string]task.Executor) *engine {
	tb.Helper()
	e := serve(task.New(task.Config{Store: st, Executors: execs, Executor: "127.0.0.1", Log: zerolog.Nop(), Holds: agentop.Holds}))
	if err := e.Start(context.Background()); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(e.Close)
	return e
}

// watchFinal watches a task (as a WatchTask client does) until it is final.
func watchFinal(tb testing.TB, e *engine, id int64, within time.Duration) *task.Task {
	tb.Helper()
	ctx, cancel := context.WithTimeout(viewer, within)
	defer cancel()
	var last *task.Task
	if err := e.WatchTask(ctx, id, func(tk *task.Task) error { last = tk; return nil }); err != nil {
		status := "none"
		if last != nil {
			status = string(last.Status)
		}
		tb.Fatalf("watching task %d: %v (last status %s)", id, err, status)
	}
	return last
}

// quickAgents are agentds that are connected and answer every command at
// once, successfully.
type quickAgents struct{}

func (quickAgents) WaitConnected(context.Context, int64, time.Duration) error { return nil }
func (quickAgents) Dispatch(_ context.Context, hostID int64, _ fleet.Command) (fleet.Result, error) {
	return fleet.Result{Outcome: fleet.Succeeded, Message: "host " + strconv.FormatInt(hostID, 10) + ": stopped 3"}, nil
}
func (quickAgents) Ack(int64, int64, int) {}

// counted counts the engine's steps that store a change.
type counted struct {
	task.Store
	updates atomic.Int64
}

func (c *counted) UpdateTask(ctx context.Context, before, after *task.Task, take []task.Resource, logs ...task.SubtaskLogLine) error {
	c.updates.Add(1)
	return c.Store.UpdateTask(ctx, before, after, take, logs...)
}

// BenchmarkBatch is a batch stop of all hosts (3 subtasks each) with agents
// that answer at once, timed from the submit to the final status seen by a
// watcher: s/batch (s-accept: until Submit returned; steps: transactions
// that stored a change). "instant" executors succeed at once and log a
// line; "agentop" are the server's own, on the same store, with agentds
// that answer at once. Run it with -benchtime=1x: each run is one batch.
func BenchmarkBatch(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		for _, execs := range []string{"instant", "agentop"} {
			b.Run(fmt.Sprintf("hosts=%d/%s", n, execs), func(b *testing.B) {
				st, ids := fleetStore(b, b.TempDir(), n)
				x := instant(nil)
				if execs == "agentop" {
					x = agentop.Executors(st, quickAgents{})
				}
				c := &counted{Store: st}
				e := startEngine(b, c, x)
				b.ResetTimer()
				var total time.Duration
				for range b.N {
					c.updates.Store(0)
					start := time.Now()
					created, err := e.Submit(context.Background(), agentop.BatchPlan(agentop.OpStop, ids, "admin"))
					if err != nil {
						b.Fatal(err)
					}
					accepted := time.Since(start)
					got := watchFinal(b, e, created.ID, 10*time.Minute)
					total += time.Since(start)
					if got.Status != task.StatusSuccessful {
						b.Fatalf("batch ended %s", got.Status)
					}
					b.ReportMetric(accepted.Seconds(), "s-accept")
					b.ReportMetric(float64(c.updates.Load()), "steps")
				}
				b.ReportMetric(total.Seconds()/float64(b.N), "s/batch")
			})
		}
	}
}

// BenchmarkSingle is a stop of one host, timed from the submit to the final
// status seen by a watcher (ns/op), with the executors of BenchmarkBatch.
func BenchmarkSingle(b *testing.B) {
	for _, execs := range []string{"instant", "agentop"} {
		b.Run(execs, func(b *testing.B) {
			st, ids := fleetStore(b, b.TempDir(), 1)
			x := instant(nil)
			if execs == "agentop" {
				x = agentop.Executors(st, quickAgents{})
			}
			e := startEngine(b, st, x)
			b.ResetTimer()
			for range b.N {
				created, err := e.Submit(context.Background(), agentop.StopPlan(ids[0], "admin"))
				if err != nil {
					b.Fatal(err)
				}
				if got := watchFinal(b, e, created.ID, time.Minute); got.Status != task.StatusSuccessful {
					b.Fatalf("stop ended %s", got.Status)
				}
			}
		})
	}
}

// executions counts the attempts executors ran, by (subtask, attempt).
type executions struct {
	mu sync.Mutex
	n  map[[2]int64]int
}

func (x *executions) add(r task.Run) int {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.n == nil {
		x.n = map[[2]int64]int{}
	}
	x.n[[2]int64{r.Subtask.ID, int64(r.Subtask.RunTime)}]++
	return len(x.n)
}

func (x *executions) count(id int64, attempt int) int {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.n[[2]int64{id, int64(attempt)}]
}

// failing says which hosts' steps fail in the batch tests: Prepare on every
// 7th host, Stop on every 11th (when its Prepare passed).
func failing(i int, class string) bool {
	return class == agentop.ClassPrepareStop && i%7 == 3 || class == agentop.ClassStopAll && i%11 == 5
}

// wantBatch checks a batch stop's subtasks against failing: a host's first
// failing step FAILED and the steps after it PENDING, every other step
// SUCCESSFUL, all at attempt runTime(i, class); the task's status follows.
func wantBatch(t *testing.T, got *task.Task, hosts []int64, retried bool) {
	t.Helper()
	index := make(map[int64]int, len(hosts))
	for i, h := range hosts {
		index[h] = i
	}
	failed := map[int]bool{}
	for _, st := range got.Subtasks {
		i := index[st.HostID]
		want, attempt := task.SubtaskSuccessful, 1
		switch {
		case failed[i] && !retried:
			want = task.SubtaskPending
		case failing(i, st.ClassName) && !failed[i]:
			failed[i] = true
			if retried {
				attempt = 2
			} else {
				want = task.SubtaskFailed
			}
		}
		if st.Status != want || st.RunTime != attempt {
			t.Fatalf("host #%d %s: %s attempt %d, want %s attempt %d (%s)", i, st.Name, st.Status, st.RunTime,
				want, attempt, st.Message)
		}
	}
	want := task.StatusSuccessful
	if len(failed) > 0 && !retried {
		want = task.StatusFailed
	}
	if got.Status != want || got.EndTime.IsZero() {
		t.Fatalf("task %s (end %v), want %s", got.Status, got.EndTime, want)
	}
}

// TestEngineLargeBatch runs a batch stop of 2,000 hosts, some of which fail,
// then retries it: each step runs once per attempt, the statuses are the
// ones the failures make, and the hosts are released at the end.
func TestEngineLargeBatch(t *testing.T) {
	const n = 2000
	st, hosts := fleetStore(t, t.TempDir(), n)
	var ran executions
	var healed atomic.Bool // once set, nothing fails
	e := startEngine(t, st, instant(func(r task.Run) bool {
		ran.add(r)
		return !healed.Load() && failing(r.Subtask.ParallelIdx, r.Subtask.ClassName)
	}))
	created, err := e.Submit(context.Background(), agentop.BatchPlan(agentop.OpStop, hosts, "admin"))
	if err != nil {
		t.Fatal(err)
	}
	if len(created.Subtasks) != 3*n {
		t.Fatalf("%d subtasks, want %d", len(created.Subtasks), 3*n)
	}
	got := watchFinal(t, e, created.ID, 2*time.Minute)
	wantBatch(t, got, hosts, false)
	for _, s := range got.Subtasks {
		if c := ran.count(s.ID, 1); s.Status != task.SubtaskPending && c != 1 {
			t.Fatalf("subtask %d (%s, host %d) ran %d times", s.ID, s.Name, s.HostID, c)
		}
	}
	stored, err := st.GetTask(context.Background(), created.ID)
	if err != nil {
		t.Fatal(err)
	}
	wantBatch(t, stored, hosts, false)
	lines, _, err := st.SubtaskLog(context.Background(), stored.ID, stored.Subtasks[0].ID, 0, 100, 1<<20)
	if err != nil || len(lines) != 2 || !strings.HasPrefix(lines[0].Line, "############{EXECUTE}{") ||
		!strings.HasSuffix(lines[1].Line, ": done") {
		t.Fatalf("log of subtask %d: %+v %v", stored.Subtasks[0].ID, lines, err)
	}
	for _, h := range []int64{hosts[0], hosts[3], hosts[n-1]} {
		if hh, err := st.GetHost(context.Background(), h); err != nil || hh.OpTaskID != 0 {
			t.Fatalf("host %d after the batch failed: %+v %v", h, hh, err)
		}
	}

	healed.Store(true)
	if _, err := e.RetryTask(manager, created.ID); err != nil {
		t.Fatal(err)
	}
	got = watchFinal(t, e, created.ID, 2*time.Minute)
	wantBatch(t, got, hosts, true)
	for _, s := range got.Subtasks {
		if c := ran.count(s.ID, s.RunTime); c != 1 {
			t.Fatalf("subtask %d (%s, host %d) attempt %d ran %d times", s.ID, s.Name, s.HostID, s.RunTime, c)
		}
	}
	for _, h := range []int64{hosts[0], hosts[3], hosts[n-1]} {
		if hh, err := st.GetHost(context.Background(), h); err != nil || hh.OpTaskID != 0 {
			t.Fatalf("host %d after the retry: %+v %v", h, hh, err)
		}
	}
}

// TestEngineLargeBatchSurvivesRestart stops the engine in the middle of a
// batch of 2,000 hosts: a new engine on the same store finishes it,
// resuming once each attempt stored RUNNING (same attempt; the first engine
// ran it at most once), never running a subtask that had ended.
func TestEngineLargeBatchSurvivesRestart(t *testing.T) {
	const n = 2000
	dir := t.TempDir()
	st, hosts := fleetStore(t, dir, n)
	var first executions
	halfway := make(chan struct{})
	var once sync.Once
	// The first engine's agents answer at once, except every 5th host's
	// Stop, which waits for the shutdown: the batch cannot end before.
	x1 := execFunc(func(ctx context.Context, r task.Run) task.Result {
		if first.add(r) >= 3*n/2 {
			once.Do(func() { close(halfway) })
		}
		i := r.Subtask.ParallelIdx
		if r.Subtask.ClassName == agentop.ClassStopAll && i%5 == 0 {
			<-ctx.Done()
			return task.Result{Err: context.Cause(ctx)}
		}
		if failing(i, r.Subtask.ClassName) {
			return task.Result{Err: fmt.Errorf("host %d: failed on purpose", r.Subtask.HostID)}
		}
		return task.Result{Message: "done"}
	})
	e1 := startEngine(t, st, map[string]task.Executor{agentop.ClassPrepareStop: x1, agentop.ClassStopAll: x1,
		agentop.ClassFinish: x1})
	created, err := e1.Submit(context.Background(), agentop.BatchPlan(agentop.OpStop, hosts, "admin"))
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-halfway:
	case <-time.After(2 * time.Minute):
		t.Fatal("the batch did not get halfway")
	}
	e1.Close()
	mid, err := st.GetTask(context.Background(), created.ID)
	if err != nil {
		t.Fatal(err)
	}
	if mid.Status != task.StatusRunning {
		t.Fatalf("task %s after the engine stopped, want RUNNING", mid.Status)
	}
	var ended, running int
	for _, s := range mid.Subtasks {
		switch s.Status {
		case task.SubtaskSuccessful, task.SubtaskFailed:
			ended++
		case task.SubtaskRunning:
			running++
		}
	}
	if ended == 0 || running == 0 {
		t.Fatalf("at the restart %d subtasks ended and %d ran: not mid-batch", ended, running)
	}

	var second, resumed executions
	e2 := startEngine(t, st, instant(func(r task.Run) bool {
		second.add(r)
		if r.Resumed {
			resumed.add(r)
		}
		return failing(r.Subtask.ParallelIdx, r.Subtask.ClassName)
	}))
	got := watchFinal(t, e2, created.ID, 2*time.Minute)
	wantBatch(t, got, hosts, false)
	runBefore := 0 // subtasks running at the restart that had reached the first engine's executor
	for i, s := range mid.Subtasks {
		before, again, resumedAgain := first.count(s.ID, 1), second.count(s.ID, 1), resumed.count(s.ID, 1)
		switch s.Status {
		case task.SubtaskSuccessful, task.SubtaskFailed:
			if again != 0 {
				t.Fatalf("subtask %d (%s) had ended %s before the restart, and ran again", s.ID, s.Name, s.Status)
			}
		case task.SubtaskRunning:
			// Stored RUNNING, its attempt may not have reached the first
			// engine's executor: Close came between the step that started
			// it and its launch (as a crash can). Either way the second
			// engine resumes that same attempt once.
			if before > 1 || again != 1 || resumedAgain != 1 {
				t.Fatalf("subtask %d (%s) was running at the restart: ran %d times before, %d after (%d resumed), "+
					"want at most 1 before and 1 resumed after", s.ID, s.Name, before, again, resumedAgain)
			}
			runBefore += before
		default:
			if before+again != boolInt(got.Subtasks[i].Status != task.SubtaskPending) || resumedAgain != 0 {
				t.Fatalf("subtask %d (%s) was %s at the restart: ran %d times before, %d after (%d resumed)", s.ID,
					s.Name, s.Status, before, again, resumedAgain)
			}
		}
	}
	if runBefore == 0 {
		t.Fatal("no subtask running at the restart had run before it: no attempt was resumed mid-run")
	}
	t.Logf("at the restart: %d subtasks ended, %d running (%d of them had run), of %d", ended, running, runBefore,
		len(mid.Subtasks))
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// TestLogWriter appends lines from many goroutines at once: every line is
// stored, each goroutine's in its order, in fewer transactions than lines.
func TestLogWriter(t *testing.T) {
	st, _ := fleetStore(t, t.TempDir(), 0)
	created, _, err := st.CreateTask(context.Background(), plan(time.Minute, time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	c := &countedLogs{LogStore: st}
	w := task.NewLogWriter(c)
	const writers, lines = 50, 20
	var wg sync.WaitGroup
	for g := range writers {
		wg.Go(func() {
			for i := range lines {
				id := created.Subtasks[g%2].ID
				if err := w.AppendSubtaskLog(context.Background(), id, task.LogLine{RunTime: 1, Time: time.Now(),
					Line: fmt.Sprintf("%d %d", g, i)}); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	next := map[int]int{}
	total := 0
	for _, s := range created.Subtasks {
		got, _, err := st.SubtaskLog(context.Background(), created.ID, s.ID, 0, 10000, 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range got {
			var g, i int
			if _, err := fmt.Sscanf(l.Line, "%d %d", &g, &i); err != nil || i != next[g] {
				t.Fatalf("line %q of writer %d: want its line %d", l.Line, g, next[g])
			}
			next[g]++
			total++
		}
	}
	if total != writers*lines {
		t.Fatalf("%d lines stored, want %d", total, writers*lines)
	}
	if n := c.calls.Load(); n >= int64(total) {
		t.Fatalf("%d lines in %d transactions: not grouped", total, n)
	}
}

type countedLogs struct {
	task.LogStore
	calls atomic.Int64
}

func (c *countedLogs) AppendSubtaskLogs(ctx context.Context, lines []task.SubtaskLogLine) error {
	c.calls.Add(1)
	return c.LogStore.AppendSubtaskLogs(ctx, lines)
}
