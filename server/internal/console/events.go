package console

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"time"

	"agentplane/server/internal/task"
)

// Server-sent events. A task's stream sends the task now and after every
// change, from the task service's WatchTask (the engine's change
// notifications, on any replica), never by polling; once the task is final
// it says so and ends (the page opens a new one after an action). A log
// stream sends a subtask's new lines each time the LogNotifier says lines
// were stored or the task changed. Both end at the session's absolute
// expiry, and send a comment every keepAlive so that a dead connection is
// noticed.

const (
	keepAlive = 25 * time.Second
	writeWait = 10 * time.Second // bound of each write to the stream
	// logPageLines bounds one log event.
	logPageLines = 1000
)

// errStreamEnded refuses a write after the answer was written.
var errStreamEnded = errors.New("the event stream has ended")

// sse writes one event stream; safe for concurrent use.
type sse struct {
	mu      sync.Mutex
	w       http.ResponseWriter
	rc      *http.ResponseController
	started bool // the stream's headers are written
	ended   bool // nothing more may be written
}

func newSSE(w http.ResponseWriter) *sse { return &sse{w: w, rc: http.NewResponseController(w)} }

// send writes one event (name, optional id, data as JSON) and flushes it.
func (s *sse) send(name, id string, data any) error {
	b, err := json.Marshal(data)
	if err != nil {
		return err
	}
	msg := "event: " + name + "\n"
	if id != "" {
		msg += "id: " + id + "\n"
	}
	return s.write(msg + "data: " + string(b) + "\n\n")
}

func (s *sse) write(msg string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ended {
		return errStreamEnded
	}
	if !s.started {
		h := s.w.Header()
		h.Set("Content-Type", "text/event-stream")
		h.Set("Cache-Control", "no-store")
		h.Set("X-Accel-Buffering", "no")
		s.w.WriteHeader(http.StatusOK)
		s.started = true
	}
	_ = s.rc.SetWriteDeadline(time.Now().Add(writeWait)) // unsupported by test recorders only
	if _, err := fmt.Fprint(s.w, msg); err != nil {
		return err
	}
	return s.rc.Flush()
}

// keepAlive writes a comment every keepAlive until ctx is done.
func (s *sse) keepAlive(ctx context.Context) {
	t := time.NewTicker(keepAlive)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if s.write(": keep-alive\n\n") != nil {
				return
			}
		}
	}
}

// streaming runs body with a context that ends at the session's absolute
// expiry, the stream's keep-alives beside it; a failure before the first
// event is answered as an error (an EventSource then stops), after it as
// a "problem" event.
func (c *Console) streaming(w http.ResponseWriter, r *http.Request, body func(ctx context.Context, s *sse) error) {
	ctx, cancel := context.WithDeadline(r.Context(), c.ss.expiry(sessionOf(r.Context())))
	defer cancel()
	s := newSSE(w)
	// The server's ReadTimeout would end a stream (its connection's
	// background read fails and cancels the request): the stream has no
	// body to read, and ends with the session or the client.
	_ = s.rc.SetReadDeadline(time.Time{})
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Go(func() { s.keepAlive(ctx) })
	err := body(ctx, s)
	switch {
	case err == nil || ctx.Err() != nil:
	case !s.started:
		s.mu.Lock()
		c.fail(w, r, err)
		s.started, s.ended = true, true
		s.mu.Unlock()
	default:
		_ = s.send("problem", "", map[string]string{"error": userMessage(err)})
	}
}

// taskEvents: GET /ui/tasks/{taskId}/events → "task" events (the task, as
// taskView), then "final" once it is final.
func (c *Console) taskEvents(w http.ResponseWriter, r *http.Request) {
	c.streaming(w, r, func(ctx context.Context, s *sse) error {
		id, err := pathID(r, "taskId")
		if err != nil {
			return err
		}
		err = c.cfg.Tasks.WatchTask(ctx, id, func(t *task.Task) error { return s.send("task", "", toTaskView(t)) })
		if err != nil {
			return err
		}
		return s.send("final", "", struct{}{})
	})
}

// logEvents: GET /ui/tasks/{taskId}/subtasks/{subtaskId}/log?offset= →
// "log" events {"text"} with the lines after offset (or after the
// Last-Event-ID of a reconnecting EventSource), each event's id the offset
// to resume from, as they are stored.
func (c *Console) logEvents(w http.ResponseWriter, r *http.Request) {
	c.streaming(w, r, func(ctx context.Context, s *sse) error {
		id, err := pathID(r, "taskId")
		if err != nil {
			return err
		}
		sid, err := pathID(r, "subtaskId")
		if err != nil {
			return err
		}
		q := r.URL.Query()
		if last := r.Header.Get("Last-Event-ID"); last != "" {
			q.Set("offset", last)
		}
		after, err := formInt(q, "offset", 0)
		if err != nil {
			return err
		}
		var stored <-chan struct{}
		if c.cfg.Logs != nil {
			ch, stop := c.cfg.Logs.subscribe(sid)
			defer stop()
			stored = ch
		}
		changed := c.taskChanges(ctx, id)
		return c.followLog(ctx, s, id, sid, int64(after), stored, changed)
	})
}

// taskChanges returns a channel that receives after each change of task id
// (merged when they follow each other), until ctx is done or the task is
// final.
func (c *Console) taskChanges(ctx context.Context, id int64) <-chan struct{} {
	ch := make(chan struct{}, 1)
	go func() {
		_ = c.cfg.Tasks.WatchTask(ctx, id, func(*task.Task) error {
			select {
			case ch <- struct{}{}:
			default:
			}
			return nil
		})
	}()
	return ch
}

// followLog sends the log's lines after offset, then the new ones each time
// stored or changed receives, until ctx is done.
func (c *Console) followLog(ctx context.Context, s *sse, id, sid, after int64, stored, changed <-chan struct{}) error {
	for {
		p, err := c.cfg.Tasks.SubtaskLog(ctx, id, sid, task.LogQuery{After: after, Limit: logPageLines})
		if err != nil {
			return err
		}
		if p.Lines > 0 || !s.started {
			if err := s.send("log", strconv.FormatInt(p.Next, 10), map[string]string{"text": p.Text}); err != nil {
				return err
			}
			after = p.Next
		}
		if p.More {
			continue
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-stored:
		case <-changed:
		}
	}
}
