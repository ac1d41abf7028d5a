package fleet

import (
	"context"
	"fmt"
	"time"
)

// This file asks agentd what became of a resumed command before sending it.
//
// A server that resumes a running attempt (Command.Resumed: it restarted
// while the attempt ran; later, a replica that took over the host's stream)
// does not know what the previous stream carried: the command may never
// have reached agentd, may be waiting for its go-ahead or running there, or
// may have finished with a result lost with the stream. So the first
// session that could take the command gets a Query instead, and the answer
// decides:
//
//   - StateFinished: the answer's result is taken as if agentd had sent it
//     (Receive's result path: Dispatch returns it, the engine stores it,
//     then acknowledges it); the command is not sent.
//   - StateRunning, StateWaiting: the command is not sent; its result comes
//     as usual. agentd counts the query as the command received again, so a
//     waiting one asks for its go-ahead on this session (fence.go).
//   - StateUnknown: the command is sent, as for a new attempt.
//
// Without an answer within QueryWait (an agentd that predates queries, or a
// slow one), the command is sent anyway: agentd's (subtask, attempt)
// journal makes it idempotent, as it did before queries. A session that
// replaces the asking one before the answer is asked again.

// DefaultQueryWait is Config.QueryWait's default.
const DefaultQueryWait = 5 * time.Second

// deliver sends c's command on s, or its query while c is asking. Callers
// hold mu, and have checked that c is not canceled.
func (f *Fleet) deliver(s *Session, c *call) {
	if !c.asking {
		cmd := c.cmd
		s.send(Outbound{Command: &cmd})
		return
	}
	if !s.send(Outbound{Query: &Query{SubtaskID: c.cmd.SubtaskID, Attempt: c.cmd.Attempt}}) {
		return // s ended: the next session asks
	}
	if c.asked != nil {
		c.asked.Stop()
	}
	c.asked = time.AfterFunc(f.cfg.QueryWait, func() { f.unanswered(s, c) })
}

// unanswered sends c's command on s when agentd did not answer its query
// within QueryWait, unless the answer came meanwhile, c was given up, or s
// is no longer the host's session (its successor asked again).
func (f *Fleet) unanswered(s *Session, c *call) {
	f.mu.Lock()
	defer f.mu.Unlock()
	k := key{c.cmd.SubtaskID, c.cmd.Attempt}
	if f.inflight[k] != c || !c.asking || c.canceled || f.live(c.hostID) != s {
		return
	}
	c.asking = false
	f.cfg.Log.Info().Int64("host_id", c.hostID).Int64("subtask_id", k.subtask).Int("attempt", k.attempt).
		Dur("waited", f.cfg.QueryWait).Msg("agentd did not answer what became of a resumed command; sending it")
	cmd := c.cmd
	s.send(Outbound{Command: &cmd})
}

// answer handles agentd's answer to a query on s (see the file comment).
// An answer nobody waits for (late, from a replaced session, after the
// command was sent anyway) changes nothing, except that a finished
// command's result is handled as a result always is.
func (f *Fleet) answer(ctx context.Context, s *Session, a Answer) error {
	k := key{a.SubtaskID, a.Attempt}
	f.mu.Lock()
	c := f.inflight[k]
	asked := c != nil && c.hostID == s.HostID && c.asking && f.live(s.HostID) == s
	if asked {
		c.asking = false
		if c.asked != nil {
			c.asked.Stop()
		}
		if a.State == StateUnknown && !c.canceled {
			cmd := c.cmd
			s.send(Outbound{Command: &cmd})
		}
	}
	f.mu.Unlock()
	log := f.cfg.Log.With().Int64("host_id", s.HostID).Int64("subtask_id", k.subtask).Int("attempt", k.attempt).
		Str("state", stateName(a.State)).Logger()
	if !asked {
		log.Debug().Msg("answer to a query nobody waits for")
	} else {
		log.Info().Msg("agentd told what became of a resumed command")
	}
	if a.State == StateFinished {
		return f.Receive(ctx, s, Inbound{Result: a.Result})
	}
	return nil
}

// stateName names a command state as the protocol does.
func stateName(st CommandState) string {
	switch st {
	case StateUnknown:
		return "UNKNOWN"
	case StateWaiting:
		return "WAITING"
	case StateRunning:
		return "RUNNING"
	case StateFinished:
		return "FINISHED"
	}
	return fmt.Sprintf("CommandState(%d)", int(st))
}
