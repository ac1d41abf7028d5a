package conn

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/rs/zerolog"

	"agentplane/agentd/internal/state"
	agentv1 "agentplane/gen/agentplane/agent/v1"
)

// A command can reach agentd after the server gave up on it: read from a
// stream that was partitioned, or by an agentd that was frozen, for longer
// than the server's --agent-lost-after. So once a command is journaled as
// begun and before its first signal or process start, agentd asks the
// server for the go-ahead on the stream the command came on (CommandBegin)
// and waits for the answer, bounded. Without a go-ahead it touches nothing
// and the attempt ends FAILED (or CANCELED, if canceled meanwhile); the
// journal keeps it from ever running.
//
// When that stream ends before the answer (the server gave up on it, or
// restarted), the command waits, still touching nothing, for the server to
// send it again on a later stream (a server that still waits for it does so
// when agentd reconnects), or to ask about it there (a restarted server's
// ResultQuery, see handleQuery), and asks again there; or for its Cancel (a server
// that gave up sends it when agentd reconnects), or its timeout, which end
// it CANCELED. So a server restart between a command and its go-ahead does
// not fail the command.
//
// So does an answer that refuses for now only (AskAgain): the server's wait
// for the command ended without giving up on it (the task's owner died or
// changed, the host's stream moved) and whoever resumes the wait will send
// the command, or ask about it, again, on this stream or a later one. The
// command waits as above and asks again then. Only a final refusal (the
// server gave up on the command, or it is no longer live) ends it FAILED.

var (
	// errStreamEnded is why a go-ahead failed when the stream it was asked
	// on ended before the server answered.
	errStreamEnded = errors.New("the stream it came on ended before the server answered")
	// errAskAgain is why a go-ahead failed when the server refused it for
	// now only (CommandBeginAnswer.ask_again).
	errAskAgain = errors.New("refused for now")
)

// goAhead asks the server, on s, whether the command k may begin, and waits
// for the answer (see ask). When s ends first, or the server refuses for
// now only, it waits for the command (or a query about it) to arrive again
// on this or another stream (again) and asks there, until ctx is done. It
// returns nil when the server says proceed, ctx's cause when ctx is done
// first.
func (c *Client) goAhead(ctx context.Context, log zerolog.Logger, s *session, k cmdKey, timeout time.Duration, again <-chan *session) error {
	for {
		err := c.ask(ctx, s, k, timeout)
		switch {
		case errors.Is(err, errStreamEnded):
			log.Info().Msg("stream ended before the server confirmed the command; waiting for it on the next stream")
		case errors.Is(err, errAskAgain):
			log.Info().Err(err).Msg("the server does not wait for the command here yet; waiting for it to come again, touching nothing")
		default:
			return err
		}
		select {
		case s = <-again:
		case <-ctx.Done():
			return context.Cause(ctx)
		}
	}
}

// ask asks the server, on s, whether the command k may begin, and waits for
// the answer: at most Config.BeginTimeout (or timeout, if shorter), until s
// ends (errStreamEnded), or until ctx is done (its cause is returned). It
// returns nil when the server says proceed, an error wrapping errAskAgain
// when it refuses for now only.
func (c *Client) ask(ctx context.Context, s *session, k cmdKey, timeout time.Duration) error {
	answer := s.expect(k)
	defer s.forget(k)
	wait := min(c.cfg.BeginTimeout, timeout)
	t := time.NewTimer(wait)
	defer t.Stop()
	if !s.send(&agentv1.ConnectRequest{Kind: &agentv1.ConnectRequest_Begin{Begin: &agentv1.CommandBegin{
		SubtaskId: k.subtask, Attempt: k.attempt,
	}}}, false) {
		return errStreamEnded
	}
	select {
	case a := <-answer:
		switch {
		case a.GetProceed():
			return nil
		case a.GetAskAgain():
			return fmt.Errorf("%w: %s", errAskAgain, a.GetReason())
		}
		return fmt.Errorf("refused: %s", a.GetReason())
	case <-s.ctx.Done():
		return errStreamEnded
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-t.C:
		return fmt.Errorf("no answer within %s", fmtDuration(wait))
	}
}

// notBegun is the result of a command whose go-ahead failed with err:
// CANCELED when ctx is done (canceled, timed out, shutting down), else
// FAILED.
func notBegun(ctx context.Context, err error) state.Result {
	if ctx.Err() != nil {
		return state.Result{Outcome: state.OutcomeCanceled,
			Message: "canceled before it started, nothing was signalled: " + cancelReason(context.Cause(ctx))}
	}
	return state.Result{Outcome: state.OutcomeFailed,
		Message: "server did not confirm the command: " + err.Error() + "; nothing was signalled"}
}

// expect registers a wait for the server's answer about k on s.
func (s *session) expect(k cmdKey) <-chan *agentv1.CommandBeginAnswer {
	ch := make(chan *agentv1.CommandBeginAnswer, 1)
	s.mu.Lock()
	if s.begins == nil {
		s.begins = map[cmdKey]chan *agentv1.CommandBeginAnswer{}
	}
	s.begins[k] = ch
	s.mu.Unlock()
	return ch
}

// forget ends the wait for k's answer.
func (s *session) forget(k cmdKey) {
	s.mu.Lock()
	delete(s.begins, k)
	s.mu.Unlock()
}

// answered hands the server's answer to the command waiting for it; an
// answer nothing waits for (late, repeated, or never asked) is ignored.
func (s *session) answered(a *agentv1.CommandBeginAnswer) {
	k := cmdKey{a.GetSubtaskId(), a.GetAttempt()}
	s.mu.Lock()
	ch := s.begins[k]
	delete(s.begins, k)
	s.mu.Unlock()
	if ch == nil {
		s.log.Debug().Int64("subtask_id", k.subtask).Int32("attempt", k.attempt).Msg("ignoring an unexpected go-ahead answer")
		return
	}
	ch <- a
}
