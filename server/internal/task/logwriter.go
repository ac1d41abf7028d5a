package task

import (
	"context"
	"sync"
)

// LogStore is where a LogWriter stores lines.
type LogStore interface {
	AppendSubtaskLogs(ctx context.Context, lines []SubtaskLogLine) error
}

// LogWriter appends lines to subtask logs in few transactions, for callers
// that append one line at a time from many goroutines (attempts, agent
// streams): a line waits while the lines before it are stored, then is
// stored with every line that arrived meanwhile (a group commit). A lone
// line is stored at once. It is safe for concurrent use.
type LogWriter struct {
	ctx   context.Context // of the writes
	store LogStore

	mu      sync.Mutex
	next    *logBatch     // lines waiting for the writer
	writing chan struct{} // while the writer goroutine runs; closed when it ends
}

type logBatch struct {
	lines []SubtaskLogLine
	err   error
	done  chan struct{} // closed once lines are stored, or err says why not
}

// NewLogWriter returns a LogWriter that stores lines in s.
func NewLogWriter(s LogStore) *LogWriter { return &LogWriter{ctx: context.Background(), store: s} }

// AppendSubtaskLog appends a line to a subtask's log, and returns once it is
// stored (or ctx is done: the line may still be stored).
func (w *LogWriter) AppendSubtaskLog(ctx context.Context, subtaskID int64, l LogLine) error {
	w.mu.Lock()
	b := w.next
	if b == nil {
		b = &logBatch{done: make(chan struct{})}
		w.next = b
	}
	b.lines = append(b.lines, SubtaskLogLine{SubtaskID: subtaskID, LogLine: l})
	if w.writing == nil {
		w.writing = make(chan struct{})
		go w.write(w.writing)
	}
	w.mu.Unlock()
	select {
	case <-b.done:
		return b.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (w *LogWriter) write(writing chan struct{}) {
	for {
		w.mu.Lock()
		b := w.next
		w.next = nil
		if b == nil {
			w.writing = nil
			w.mu.Unlock()
			close(writing)
			return
		}
		w.mu.Unlock()
		b.err = w.store.AppendSubtaskLogs(w.ctx, b.lines)
		close(b.done)
	}
}

// wait returns once no line is being written.
func (w *LogWriter) wait() {
	w.mu.Lock()
	writing := w.writing
	w.mu.Unlock()
	if writing != nil {
		<-writing
	}
}
