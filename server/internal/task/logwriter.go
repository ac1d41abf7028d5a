package task

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"

	"agentplane/server/internal/errs"
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
//
// Lines are stored in the order they were given to the writer, whether
// their callers wait (AppendSubtaskLog) or not (QueueSubtaskLog,
// QueueSubtaskLogWait): a line given after another, by any caller, is
// never stored before it. Callers that do not wait are bounded by the
// bytes of the lines not stored yet (LogWriterConfig.MaxQueuedBytes);
// SubtaskLogStored waits for the lines of one subtask given so far.
type LogWriter struct {
	ctx      context.Context // of the writes
	store    LogStore
	maxBytes int

	mu      sync.Mutex
	next    *logBatch           // lines waiting for the writer
	bytes   int                 // of the lines given and not stored (or failed) yet
	last    map[int64]*logBatch // by subtask: the newest batch holding a line of it, until that batch ends
	room    chan struct{}       // closed when a batch ends (bytes freed), if someone waits for room
	writing chan struct{}       // while the writer goroutine runs; closed when it ends

	dropped atomic.Int64
}

type logBatch struct {
	lines  []SubtaskLogLine
	bytes  int
	failed []func(error) // of the queued lines whose callers asked to hear of a failure
	err    error
	done   chan struct{} // closed once lines are stored, or err says why not
}

// DefaultMaxQueuedLogBytes is the default of LogWriterConfig.MaxQueuedBytes.
const DefaultMaxQueuedLogBytes = 64 << 20

// logLineOverhead is what a line costs beyond its text, as counted against
// MaxQueuedBytes.
const logLineOverhead = 128

// ErrLogQueueFull is QueueSubtaskLog's error for a line it dropped: the
// lines not stored yet already hold MaxQueuedBytes (the store falls
// behind).
var ErrLogQueueFull = fmt.Errorf("the queue of log lines to store is full (the store falls behind): %w", errs.ErrUnavailable)

// LogWriterConfig configures a LogWriter.
type LogWriterConfig struct {
	Store LogStore
	// MaxQueuedBytes bounds the lines given and not stored yet (their text
	// plus logLineOverhead each): beyond it QueueSubtaskLog drops the line
	// (ErrLogQueueFull) and QueueSubtaskLogWait waits for room.
	// AppendSubtaskLog's lines count but are never refused (their callers
	// wait anyway). Default DefaultMaxQueuedLogBytes.
	MaxQueuedBytes int
}

// NewLogWriter returns a LogWriter that stores lines in s, with the default
// bound.
func NewLogWriter(s LogStore) *LogWriter { return NewLogWriterWith(LogWriterConfig{Store: s}) }

// NewLogWriterWith returns a LogWriter configured by c.
func NewLogWriterWith(c LogWriterConfig) *LogWriter {
	return newLogWriter(context.Background(), c)
}

func newLogWriter(ctx context.Context, c LogWriterConfig) *LogWriter {
	if c.MaxQueuedBytes <= 0 {
		c.MaxQueuedBytes = DefaultMaxQueuedLogBytes
	}
	return &LogWriter{ctx: ctx, store: c.Store, maxBytes: c.MaxQueuedBytes, last: map[int64]*logBatch{}}
}

// AppendSubtaskLog appends a line to a subtask's log, and returns once it is
// stored (or ctx is done: the line may still be stored).
func (w *LogWriter) AppendSubtaskLog(ctx context.Context, subtaskID int64, l LogLine) error {
	w.mu.Lock()
	b := w.add(subtaskID, l, nil)
	w.mu.Unlock()
	select {
	case <-b.done:
		return b.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// QueueSubtaskLog gives a line to the writer without waiting for it to be
// stored. failed, if not nil, is called (from the writer's goroutine: it
// must not block) when the line could not be stored. When the lines not
// stored yet already hold MaxQueuedBytes, the line is dropped: it returns
// ErrLogQueueFull, failed is not called, and Dropped counts it.
func (w *LogWriter) QueueSubtaskLog(subtaskID int64, l LogLine, failed func(error)) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.fits(l) {
		w.dropped.Add(1)
		return ErrLogQueueFull
	}
	w.add(subtaskID, l, failed)
	return nil
}

// QueueSubtaskLogWait is QueueSubtaskLog waiting for room instead of
// dropping the line: it returns once the line is queued, or with ctx's
// error (the line is not queued then).
func (w *LogWriter) QueueSubtaskLogWait(ctx context.Context, subtaskID int64, l LogLine, failed func(error)) error {
	for {
		w.mu.Lock()
		if w.fits(l) {
			w.add(subtaskID, l, failed)
			w.mu.Unlock()
			return nil
		}
		if w.room == nil {
			w.room = make(chan struct{})
		}
		room := w.room
		w.mu.Unlock()
		select {
		case <-room:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// SubtaskLogStored returns once every line of subtask id given to the
// writer so far is stored, or failed to be (failures are reported as each
// caller asked), or with ctx's error.
func (w *LogWriter) SubtaskLogStored(ctx context.Context, subtaskID int64) error {
	w.mu.Lock()
	b := w.last[subtaskID]
	w.mu.Unlock()
	if b == nil {
		return nil
	}
	select {
	case <-b.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Dropped is the count of lines QueueSubtaskLog dropped because the queue
// was full.
func (w *LogWriter) Dropped() int64 { return w.dropped.Load() }

func lineBytes(l LogLine) int { return len(l.Line) + logLineOverhead }

// fits reports whether l may be queued: the lines not stored yet leave
// room for it (a line alone always fits). Callers hold mu.
func (w *LogWriter) fits(l LogLine) bool {
	return w.bytes == 0 || w.bytes+lineBytes(l) <= w.maxBytes
}

// add gives a line to the writer, starting its goroutine if needed, and
// returns the batch it is in. Callers hold mu.
func (w *LogWriter) add(subtaskID int64, l LogLine, failed func(error)) *logBatch {
	b := w.next
	if b == nil {
		b = &logBatch{done: make(chan struct{})}
		w.next = b
	}
	n := lineBytes(l)
	b.lines = append(b.lines, SubtaskLogLine{SubtaskID: subtaskID, LogLine: l})
	b.bytes += n
	if failed != nil {
		b.failed = append(b.failed, failed)
	}
	w.bytes += n
	w.last[subtaskID] = b
	if w.writing == nil {
		w.writing = make(chan struct{})
		go w.write(w.writing)
	}
	return b
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
		w.mu.Lock()
		w.bytes -= b.bytes
		for _, l := range b.lines {
			if w.last[l.SubtaskID] == b {
				delete(w.last, l.SubtaskID)
			}
		}
		if w.room != nil {
			close(w.room)
			w.room = nil
		}
		w.mu.Unlock()
		close(b.done)
		if b.err != nil {
			for _, f := range b.failed {
				f(b.err)
			}
		}
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
