package rpc

import (
	"context"
	"errors"
	"io"
	"sync"

	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	agentv1 "agentplane/gen/agentplane/agent/v1"
	"agentplane/server/internal/fleet"
)

// An agent stream holds one goroutine of its own, its handler, which
// receives: a sender runs only while messages are queued, and the server
// ends a stream whose handler waits in Recv by writing its status itself
// (streamEnd). At 10,000 agents a goroutine per stream is about 80 MB of
// stacks.
//
// A server stream's status is written once: by grpc-go when the handler
// returns, or at once by the stream's Recv or Send failing (with CANCELED
// when its context ended), so ending the stream's context alone would
// answer every end with CANCELED. grpc-go's transport stream (reached
// through grpc.ServerTransportStreamFromContext) writes a status and ends
// the stream, which makes Recv return in the handler; streamEnd uses it,
// and without it (another grpc-go) the handler receives in a goroutine of
// its own and returns itself, as before.

// statusWriter is grpc-go's transport stream's WriteStatus: it writes the
// status, ends the stream and ends its context.
type statusWriter interface {
	WriteStatus(*status.Status) error
}

// streamEnd ends an agent stream once, with the first error given to end
// (io.EOF: the agent closed its side).
type streamEnd struct {
	ctx    context.Context // canceled by end, with its error as the cause
	cancel context.CancelCauseFunc
	w      statusWriter // nil: the handler returns to end the stream
	// disconnect, if set, runs before the status is written (the fleet's
	// Disconnect): an agent that sees its stream end finds its session
	// gone, as when the handler's return (after its deferred Disconnect)
	// writes the status.
	disconnect func()
	once       sync.Once
	err        error // end's error; set before ctx is canceled
	st         error // the stream's status for err (toStatus), nil for a clean end
}

func newStreamEnd(ctx context.Context) *streamEnd {
	e := &streamEnd{}
	e.ctx, e.cancel = context.WithCancelCause(ctx)
	if w, ok := grpc.ServerTransportStreamFromContext(ctx).(statusWriter); ok {
		e.w = w
	}
	return e
}

// end ends the stream with err's status unless it ended already.
func (e *streamEnd) end(err error) {
	e.once.Do(func() {
		e.err = err
		if !errors.Is(err, io.EOF) && !errors.Is(err, context.Canceled) && status.Code(err) != codes.Canceled {
			e.st = toStatus(e.ctx, err)
		}
		e.cancel(err)
		if e.w != nil {
			if e.disconnect != nil {
				e.disconnect()
			}
			// An error: the stream is gone already, or its status could
			// not be written; the stream has ended either way.
			_ = e.w.WriteStatus(status.Convert(e.st))
		}
	})
}

// result logs why the stream ended and returns its status; the caller has
// called end.
func (e *streamEnd) result(log zerolog.Logger) error {
	if e.st == nil {
		log.Debug().Msg("agent stream ended")
		return nil
	}
	logStreamEnd(log, e.err)
	return e.st
}

// sender sends a session's messages on its stream from a goroutine that
// runs only while some are queued: the session wakes it (fleet.Session's
// Notify). A failed Send, or the session's end, ends the stream. After
// stop, no Send is in progress or starts.
type sender struct {
	stream agentv1.AgentService_ConnectServer
	sess   *fleet.Session
	end    *streamEnd

	mu      sync.Mutex
	running bool // a run goroutine is sending
	again   bool // woken while running: look at the queue once more
	stopped bool // stop was called, or the stream ended
	wg      sync.WaitGroup
}

// wake starts a run goroutine unless one runs; it never blocks.
func (x *sender) wake() {
	x.mu.Lock()
	defer x.mu.Unlock()
	switch {
	case x.stopped:
	case x.running:
		x.again = true
	default:
		x.running = true
		x.wg.Add(1)
		go x.run()
	}
}

func (x *sender) run() {
	defer x.wg.Done()
	for {
		ok := x.drain()
		x.mu.Lock()
		if !ok {
			x.stopped = true
		}
		if !x.again || x.stopped {
			x.running = false
			x.mu.Unlock()
			return
		}
		x.again = false
		x.mu.Unlock()
	}
}

// drain sends what is queued; false once the stream or the session ended.
func (x *sender) drain() bool {
	for {
		if x.end.ctx.Err() != nil {
			return false
		}
		if err := x.sess.Err(); err != nil {
			x.end.end(err)
			return false
		}
		m, ok := x.sess.Next()
		if !ok {
			return true
		}
		if err := x.stream.Send(toOutbound(m)); err != nil {
			x.end.end(err)
			return false
		}
	}
}

// stop waits for a Send in progress and starts no other. The stream has
// ended (streamEnd.end), which makes a Send waiting for the agent return.
func (x *sender) stop() {
	x.mu.Lock()
	x.stopped = true
	x.mu.Unlock()
	x.wg.Wait()
}
