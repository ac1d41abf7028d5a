package task_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"agentplane/server/internal/task"
)

// gatedLogStore keeps lines in memory, and stores them in to if set; its
// writes wait for open.
type gatedLogStore struct {
	open  chan struct{}
	to    task.LogStore
	mu    sync.Mutex
	lines []task.SubtaskLogLine
	calls atomic.Int64
}

func (g *gatedLogStore) AppendSubtaskLogs(ctx context.Context, lines []task.SubtaskLogLine) error {
	g.calls.Add(1)
	select {
	case <-g.open:
	case <-ctx.Done():
		return ctx.Err()
	}
	g.mu.Lock()
	g.lines = append(g.lines, lines...)
	g.mu.Unlock()
	if g.to != nil {
		return g.to.AppendSubtaskLogs(ctx, lines)
	}
	return nil
}

func (g *gatedLogStore) stored() []task.SubtaskLogLine {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]task.SubtaskLogLine(nil), g.lines...)
}

// TestLogWriterQueue: lines queued without waiting, queued waiting for
// room and appended, from many goroutines at once, are all stored, each
// goroutine's in its order; a queue over its bound makes
// QueueSubtaskLogWait wait and QueueSubtaskLog drop (counted);
// SubtaskLogStored waits for a subtask's lines given so far.
func TestLogWriterQueue(t *testing.T) {
	g := &gatedLogStore{open: make(chan struct{})}
	const writers, lines = 30, 20
	// Room for about a third of the lines, so that the writers wait.
	w := task.NewLogWriterWith(task.LogWriterConfig{Store: g, MaxQueuedBytes: writers * lines * 140 / 3})
	ctx := context.Background()
	// Nothing is stored while the store is closed: the waiting writers
	// fill the queue.
	var wg sync.WaitGroup
	var queueErrs atomic.Int64
	for i := range writers {
		wg.Go(func() {
			id := int64(i % 3)
			for n := range lines {
				l := task.LogLine{RunTime: 1, Time: time.Now(), Line: fmt.Sprintf("%d %d", i, n)}
				var err error
				switch n % 2 {
				case 0:
					err = w.QueueSubtaskLogWait(ctx, id, l, nil)
				default:
					err = w.AppendSubtaskLog(ctx, id, l)
				}
				if err != nil {
					queueErrs.Add(1)
				}
			}
		})
	}
	// Probes (subtask 99) until one is dropped: the queue is full.
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := w.QueueSubtaskLog(99, task.LogLine{RunTime: 1, Line: "probe"}, nil)
		if errors.Is(err, task.ErrLogQueueFull) {
			break
		}
		if err != nil || time.Now().After(deadline) {
			t.Fatalf("the queue did not fill while the store took nothing: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if n := w.Dropped(); n != 1 {
		t.Fatalf("dropped %d, want 1", n)
	}
	stored := make(chan error, 1)
	go func() { stored <- w.SubtaskLogStored(ctx, 1) }()
	select {
	case err := <-stored:
		t.Fatalf("SubtaskLogStored returned %v while the store was closed", err)
	case <-time.After(50 * time.Millisecond):
	}
	close(g.open)
	wg.Wait()
	if err := <-stored; err != nil {
		t.Fatal(err)
	}
	if n := queueErrs.Load(); n != 0 {
		t.Fatalf("%d lines not queued", n)
	}
	next := map[int]int{}
	for _, l := range g.stored() {
		if l.SubtaskID == 99 {
			continue // a probe
		}
		var i, n int
		if _, err := fmt.Sscanf(l.Line, "%d %d", &i, &n); err != nil || n != next[i] || l.SubtaskID != int64(i%3) {
			t.Fatalf("line %q of subtask %d: want writer %d's line %d", l.Line, l.SubtaskID, i, next[i])
		}
		next[i]++
	}
	for i := range writers {
		if next[i] != lines {
			t.Fatalf("writer %d: %d lines stored, want %d", i, next[i], lines)
		}
	}
	if n := g.calls.Load(); n >= writers*lines {
		t.Fatalf("%d lines in %d writes: not grouped", writers*lines, n)
	}
}

// TestAttemptLinesAreStoredBeforeItsOutcome: an executor's QueueLog does
// not wait for the line to be stored, and the attempt's outcome is stored
// only after its lines, in their order.
func TestAttemptLinesAreStoredBeforeItsOutcome(t *testing.T) {
	st := openStore(t, t.TempDir())
	g := &gatedLogStore{open: make(chan struct{}), to: st}
	logged := make(chan struct{})
	x := execFunc(func(_ context.Context, r task.Run) task.Result {
		r.QueueLog("dispatching stop")
		r.QueueLog("agentd: stopped")
		close(logged)
		return task.Result{Message: "stopped"}
	})
	e := serve(task.New(task.Config{Store: st, Executors: map[string]task.Executor{"a": x}, Executor: "x", Log: zerolog.Nop(),
		Logs: task.NewLogWriter(g)}))
	if err := e.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	created, err := e.Submit(context.Background(), plan(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-logged:
	case <-time.After(10 * time.Second):
		t.Fatal("the executor's QueueLog waits for the store")
	}
	time.Sleep(100 * time.Millisecond) // time for an outcome that would not wait for the lines
	if got, err := st.GetTask(context.Background(), created.ID); err != nil || got.Subtasks[0].Status != task.SubtaskRunning {
		t.Fatalf("while its lines are not stored, the subtask is %+v (%v), want RUNNING", got.Subtasks[0], err)
	}
	close(g.open)
	if got := waitFinal(t, e, created.ID); got.Status != task.StatusSuccessful {
		t.Fatalf("task %s", got.Status)
	}
	lines, _, err := st.SubtaskLog(context.Background(), created.ID, created.Subtasks[0].ID, 0, 100, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, l := range lines {
		if !l.Header {
			got = append(got, l.Line)
		}
	}
	if len(got) != 2 || got[0] != "dispatching stop" || got[1] != "agentd: stopped" {
		t.Fatalf("log %q", got)
	}
}
