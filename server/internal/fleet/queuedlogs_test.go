package fleet

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/time/rate"

	"agentplane/server/internal/task"
)

// gatedLogs is a task.LogStore whose writes wait until open is closed, and
// then fail with err if set.
type gatedLogs struct {
	open chan struct{}
	err  error

	mu    sync.Mutex
	lines []string
	calls int // writes begun
}

func (g *gatedLogs) AppendSubtaskLogs(ctx context.Context, lines []task.SubtaskLogLine) error {
	g.mu.Lock()
	g.calls++
	g.mu.Unlock()
	select {
	case <-g.open:
	case <-ctx.Done():
		return ctx.Err()
	}
	if g.err != nil {
		return g.err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, l := range lines {
		g.lines = append(g.lines, fmt.Sprintf("%d %s", l.SubtaskID, l.Line))
	}
	return nil
}

// waitWriting returns once a write has begun (it waits for open), and
// fails the test after 10 s.
func (g *gatedLogs) waitWriting(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		g.mu.Lock()
		n := g.calls
		g.mu.Unlock()
		if n > 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("no write reached the store in 10 s")
		}
		time.Sleep(time.Millisecond)
	}
}

func (g *gatedLogs) stored() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return slices.Clone(g.lines)
}

// syncBuffer is a bytes.Buffer for a logger written from several
// goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// receiveNow handles m on s and fails if Receive does not return within
// 10 s: it must not wait for the store.
func receiveNow(t *testing.T, f *Fleet, s *Session, m Inbound) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- f.Receive(context.Background(), s, m) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Receive waits for the store to take a log line")
	}
}

// TestReceiveDoesNotWaitForLogLines: while the store takes no line, the
// stream's go-ahead and progress lines are queued and the result reaches
// the dispatch; once the store takes lines again, they are stored in order,
// before the line the dispatch's caller appends after the result.
func TestReceiveDoesNotWaitForLogLines(t *testing.T) {
	g := &gatedLogs{open: make(chan struct{})}
	w := task.NewLogWriter(g)
	reg := newRegistry()
	f := New(Config{Registry: reg, Logs: w, Token: "tok", Log: zerolog.Nop(), CancelWait: time.Second})
	s := connect(t, f, "h1")
	// A line in the store's hands already: the fleet's lines queue behind it.
	first := make(chan error, 1)
	go func() {
		first <- w.AppendSubtaskLog(context.Background(), 5, task.LogLine{RunTime: 1, Line: "dispatching stop"})
	}()
	g.waitWriting(t)
	done := dispatch(context.Background(), f, s.HostID, Command{SubtaskID: 5, Attempt: 1, StopAgent: &StopAgent{}})
	next(t, s)
	receiveNow(t, f, s, Inbound{Begin: &Begin{SubtaskID: 5, Attempt: 1}})
	if m := next(t, s); m.BeginAnswer == nil || !m.BeginAnswer.Proceed {
		t.Fatalf("got %+v, want the go-ahead", m)
	}
	for _, p := range []string{"sent SIGTERM", "process gone"} {
		receiveNow(t, f, s, Inbound{Progress: &Progress{SubtaskID: 5, Attempt: 1, Message: p}})
	}
	receiveNow(t, f, s, Inbound{Result: &Result{SubtaskID: 5, Attempt: 1, Outcome: Succeeded, Message: "stopped"}})
	if d := result(t, done); d.err != nil || d.r.Message != "stopped" {
		t.Fatalf("dispatch: %+v", d)
	}
	if got := g.stored(); len(got) != 0 {
		t.Fatalf("stored %q while the store was closed", got)
	}
	// The dispatch's caller appends the attempt's last line, then waits
	// for it (as the engine does).
	last := make(chan error, 1)
	go func() {
		last <- w.AppendSubtaskLog(context.Background(), 5, task.LogLine{RunTime: 1, Line: "agentd: stopped"})
	}()
	stored := make(chan error, 1)
	go func() { stored <- f.LinesStored(context.Background(), 5) }()
	select {
	case err := <-stored:
		t.Fatalf("LinesStored returned %v before the lines were stored", err)
	case <-time.After(50 * time.Millisecond):
	}
	close(g.open)
	for _, ch := range []chan error{first, last, stored} {
		select {
		case err := <-ch:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("lines not stored once the store took them")
		}
	}
	want := []string{"5 dispatching stop", "5 agentd began attempt 1; the server confirmed it", "5 sent SIGTERM", "5 process gone",
		"5 agentd: stopped"}
	if got := g.stored(); !slices.Equal(got, want) {
		t.Fatalf("stored\n%q\nwant\n%q", got, want)
	}
	f.Disconnect(s)
}

// TestQueuedLogLinesOverTheBound: with the queue full, a progress line is
// dropped, with a warning in the log and counted, and the stream goes on;
// a line the store fails to take is logged too.
func TestQueuedLogLinesOverTheBound(t *testing.T) {
	g := &gatedLogs{open: make(chan struct{})}
	// Room for three short lines.
	w := task.NewLogWriterWith(task.LogWriterConfig{Store: g, MaxQueuedBytes: 3 * 140})
	var out syncBuffer
	reg := newRegistry()
	f := New(Config{Registry: reg, Logs: w, Token: "tok", Log: zerolog.New(&out), CancelWait: time.Second})
	s := connect(t, f, "h1")
	done := dispatch(context.Background(), f, s.HostID, Command{SubtaskID: 7, Attempt: 1, StopAgent: &StopAgent{}})
	next(t, s)
	for i := range 5 {
		receiveNow(t, f, s, Inbound{Progress: &Progress{SubtaskID: 7, Attempt: 1, Message: fmt.Sprint("line ", i)}})
	}
	if n := w.Dropped(); n != 2 {
		t.Fatalf("%d lines dropped, want 2 (3 fit)", n)
	}
	if !strings.Contains(out.String(), "the log queue is full") {
		t.Fatalf("no warning of the dropped lines in the log: %s", out.String())
	}
	close(g.open)
	if err := f.LinesStored(context.Background(), 7); err != nil {
		t.Fatal(err)
	}
	if got, want := g.stored(), []string{"7 line 0", "7 line 1", "7 line 2"}; !slices.Equal(got, want) {
		t.Fatalf("stored %q, want %q", got, want)
	}
	// A store that fails: the line is skipped and the failure logged.
	g.err = errors.New("disk full")
	f.writeFailLog = rate.Sometimes{Every: 1} // log each failure
	receiveNow(t, f, s, Inbound{Progress: &Progress{SubtaskID: 7, Attempt: 1, Message: "lost"}})
	if err := f.LinesStored(context.Background(), 7); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "storing a progress line failed") || !strings.Contains(out.String(), "disk full") {
		t.Fatalf("the failed line is not logged: %s", out.String())
	}
	receiveNow(t, f, s, Inbound{Result: &Result{SubtaskID: 7, Attempt: 1, Outcome: Succeeded}})
	if d := result(t, done); d.err != nil {
		t.Fatalf("dispatch: %+v", d)
	}
	f.Disconnect(s)
}
