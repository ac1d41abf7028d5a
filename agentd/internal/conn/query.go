package conn

import (
	"github.com/rs/zerolog"

	agentv1 "agentplane/gen/agentplane/agent/v1"
)

// This file fences the server's messages by their stream's epoch, and
// answers the server's questions about commands (ResultQuery).
//
// The server raises a host's epoch for every stream it accepts and sends it
// in the Welcome and with every command, cancel and query. agentd keeps the
// newest it has seen in its state dir (state.SeeEpoch) and refuses a
// message whose epoch is older: it is not run, not journaled and not
// answered, so a server that no longer holds the host's newest stream can
// neither touch the host nor use up an attempt. Epoch 0 (a server without
// epochs) is never refused.

// admit checks a server message about a command (what names it for the
// log): it returns the command's key and a logger naming it, or ok false
// (logged) when the message names no valid subtask and attempt or comes
// from an older stream than the newest seen (fenced).
func (c *Client) admit(s *session, what string, subtask int64, attempt int32, epoch int64) (k cmdKey, log zerolog.Logger, ok bool) {
	k = cmdKey{subtask, attempt}
	log = s.log.With().Int64("subtask_id", k.subtask).Int32("attempt", k.attempt).Logger()
	if k.subtask <= 0 || k.attempt <= 0 {
		log.Warn().Msg("ignoring " + what + " without a valid subtask and attempt")
		return k, log, false
	}
	return k, log, !c.fenced(log, what, epoch)
}

// fenced reports whether a message of epoch e (what names it for the log)
// comes from a stream older than the newest agentd has seen, and must be
// refused; it records e as seen otherwise.
func (c *Client) fenced(log zerolog.Logger, what string, e int64) bool {
	stale, newest := c.seeEpoch(log, e)
	if stale {
		log.Warn().Int64("epoch", e).Int64("newest_epoch", newest).
			Msg("refusing a " + what + " from an older stream than the newest seen: not run, not journaled, not answered")
	}
	return stale
}

// seeEpoch records the epoch e of a message (state.SeeEpoch), logging a
// failure to store it.
func (c *Client) seeEpoch(log zerolog.Logger, e int64) (stale bool, newest int64) {
	stale, newest, err := c.cfg.State.SeeEpoch(e)
	if err != nil {
		log.Error().Err(err).Int64("epoch", e).Msg("cannot store the newest epoch seen; it holds in memory until agentd restarts")
	}
	return stale, newest
}

// welcomed records the epoch e of a welcomed stream. A stream older than
// the newest seen is kept: what it sends carries its epoch and is refused.
func (c *Client) welcomed(log zerolog.Logger, e int64) {
	if stale, newest := c.seeEpoch(log, e); stale {
		log.Warn().Int64("epoch", e).Int64("newest_epoch", newest).
			Msg("welcomed on a stream older than the newest seen: its commands will be refused")
	}
}

// handleQuery answers what became of a command, from the commands running
// now and the journal, on s. A command waiting for its go-ahead counts as
// received again on s: it asks for the go-ahead there (see goAhead).
func (c *Client) handleQuery(s *session, q *agentv1.ResultQuery) {
	k, log, ok := c.admit(s, "query", q.GetSubtaskId(), q.GetAttempt(), q.GetEpoch())
	if !ok {
		return
	}
	a := &agentv1.QueryAnswer{SubtaskId: k.subtask, Attempt: k.attempt}
	// Under c.mu, as handleCommand journals and registers a command: the
	// query sees it running, or not begun at all.
	c.mu.Lock()
	e, running := c.running[k]
	var begun bool
	var err error
	if !running {
		begun, err = c.cfg.State.Begun(k.subtask, k.attempt)
	}
	c.mu.Unlock()
	switch {
	case running && e.begun.Load():
		a.State = agentv1.CommandState_COMMAND_STATE_RUNNING
	case running:
		a.State = agentv1.CommandState_COMMAND_STATE_WAITING
	case err != nil:
		log.Error().Err(err).Msg("cannot read the journal; not answering the query")
		return
	case !begun:
		a.State = agentv1.CommandState_COMMAND_STATE_UNKNOWN
	default:
		r, err := c.storedResult(k)
		if err != nil {
			log.Error().Err(err).Msg("cannot read stored result; not answering the query")
			return
		}
		a.State, a.Result = agentv1.CommandState_COMMAND_STATE_FINISHED, resultMsg(r).GetResult()
	}
	log.Info().Str("state", a.GetState().String()).Msg("answering what became of a command")
	if !s.send(&agentv1.ConnectRequest{Kind: &agentv1.ConnectRequest_Answer{Answer: a}}, false) {
		return
	}
	if a.GetState() == agentv1.CommandState_COMMAND_STATE_WAITING {
		select {
		case e.again <- s:
		default:
		}
	}
}
