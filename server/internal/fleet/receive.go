package fleet

import (
	"context"
	"fmt"
	"time"

	"agentplane/server/internal/errs"
	"agentplane/server/internal/task"
)

// Receive handles one message of a session; any message proves the host
// alive. A Begin is answered (see fence.go); an Answer to a Query decides
// whether a resumed command is sent, and a finished one's result is
// handled as a Result (see query.go). Progress and results of an
// attempt the fleet gave up on are recorded in the subtask's log (bounded);
// other messages about commands that were not dispatched to this session's
// host are dropped with a warning. A message over the bounds on reports
// (MaxReportedProcesses, MaxTextBytes and the like) or with no field set is
// an ErrInvalidArgument error; any other error is a store failure. A
// heartbeat or progress line the store fails to record is logged (at most
// once per writeFailLogEvery) and skipped, not an error: a full disk must
// not end agents' streams. Go-ahead and progress lines are queued, not
// waited for, when Logs can queue (see record).
//
// The host counts as heard from while the message is handled and when its
// handling ends: the stream is not read meanwhile (a store write waiting
// behind a busy writer takes seconds during a reconnect storm), and an
// agent the server is not reading is not silent (see watch).
func (f *Fleet) Receive(ctx context.Context, s *Session, m Inbound) error {
	if err := checkInbound(m); err != nil {
		return err
	}
	f.handling(s.HostID, 1)
	defer f.handling(s.HostID, -1)
	log := f.cfg.Log.With().Int64("host_id", s.HostID).Logger()
	switch {
	case m.Heartbeat != nil:
		now, procs := f.cfg.Now(), m.Heartbeat.Processes
		if procs == nil || sameProcesses(procs, s.reported) {
			f.markSeen(s.HostID, now)
			return nil
		}
		if err := f.cfg.Registry.HostSeen(ctx, s.HostID, now, procs); err != nil {
			// Not stored (e.g. a full disk): the next heartbeat tries again;
			// the stream goes on.
			f.writeFailed(err, s.HostID, "recording a heartbeat failed; the stream goes on")
			return nil
		}
		s.reported = procs
		return nil
	case m.Progress != nil:
		p := m.Progress
		if !f.dispatchedTo(key{p.SubtaskID, p.Attempt}, s.HostID) {
			late := fmt.Sprintf("late progress from agentd after the server gave up (attempt %d): %s", p.Attempt, p.Message)
			if ok, err := f.recordLate(ctx, s.HostID, key{p.SubtaskID, p.Attempt}, false, late); ok || err != nil {
				if err != nil {
					f.writeFailed(err, s.HostID, "storing a late progress line failed; the line is skipped, the stream goes on")
				}
				return nil
			}
			log.Warn().Int64("subtask_id", p.SubtaskID).Int("attempt", p.Attempt).Msg("progress for a command not dispatched to this host dropped")
			return nil
		}
		at := p.Time
		if at.IsZero() {
			at = f.cfg.Now()
		}
		// A progress line is not worth the stream (and its host's
		// registration, which would then fail too): skipped if it cannot
		// be stored.
		f.record(ctx, s.HostID, p.SubtaskID, task.LogLine{RunTime: p.Attempt, Time: at, Line: p.Message}, "a progress line")
		return nil
	case m.Result != nil:
		r := *m.Result
		k := key{r.SubtaskID, r.Attempt}
		f.mu.Lock()
		f.forgetCancel(s.HostID, k)
		c := f.inflight[k]
		awaited := c != nil && c.hostID == s.HostID && !c.abandoned
		if awaited {
			select {
			case c.result <- r:
			default:
			}
		}
		f.mu.Unlock()
		if !awaited {
			return f.unawaited(ctx, s, r)
		}
		return nil
	case m.Begin != nil:
		return f.begin(ctx, s, *m.Begin)
	case m.Answer != nil:
		return f.answer(ctx, s, *m.Answer)
	default:
		return fmt.Errorf("empty message: %w", errs.ErrInvalidArgument)
	}
}

// unawaited handles a result nobody waits for. The result of an attempt
// the server gave up on is recorded in the subtask's log and acknowledged
// (lateResult). If its attempt is still live, the engine has not resumed
// it yet: it will dispatch again and the agent answer again, so the result
// is left unacknowledged. Otherwise it is stale (the subtask moved on, e.g.
// finished while the agent's acknowledgement was lost, or a previous server
// gave up on it): it is acknowledged so the agent forgets it.
func (f *Fleet) unawaited(ctx context.Context, s *Session, r Result) error {
	if late, err := f.lateResult(ctx, s, r); late || err != nil {
		if err != nil {
			// Not acknowledged: agentd's outbox keeps it for a later try.
			f.writeFailed(err, s.HostID, "storing a late result failed; it stays in agentd's outbox, the stream goes on")
		}
		return nil
	}
	live, err := f.cfg.Registry.AttemptLive(ctx, s.HostID, r.SubtaskID, r.Attempt)
	if err != nil {
		return err
	}
	log := f.cfg.Log.With().Int64("host_id", s.HostID).Int64("subtask_id", r.SubtaskID).Int("attempt", r.Attempt).Logger()
	if live {
		log.Debug().Msg("result before its dispatch resumed; left for the agent to re-send")
		return nil
	}
	log.Info().Msg("stale result acknowledged and dropped")
	s.send(Outbound{Ack: &Ack{SubtaskID: r.SubtaskID, Attempt: r.Attempt}})
	return nil
}

// dispatchedTo reports whether Dispatch waits for k's result from hostID.
func (f *Fleet) dispatchedTo(k key, hostID int64) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := f.inflight[k]
	return c != nil && c.hostID == hostID
}

// handling records that the host's agentd was heard from now, and counts
// the messages of it being handled (d: 1 as one begins, -1 as it ends).
func (f *Fleet) handling(hostID int64, d int) {
	f.mu.Lock()
	st := f.state(hostID)
	st.heard = time.Now()
	st.handling += d
	f.mu.Unlock()
}

// record stores a go-ahead or progress line (what names it) of one of the
// host's attempts: queued without waiting when Logs can queue
// (QueuedLogs), else appended. A line that cannot be stored, or that
// finds the queue full, is logged (writeFailed: rate-limited, counted) and
// skipped; the stream goes on.
func (f *Fleet) record(ctx context.Context, hostID, subtaskID int64, l task.LogLine, what string) {
	q, ok := f.cfg.Logs.(QueuedLogs)
	if !ok {
		if err := f.cfg.Logs.AppendSubtaskLog(ctx, subtaskID, l); err != nil {
			f.writeFailed(err, hostID, "storing "+what+" failed; the line is skipped, the stream goes on")
		}
		return
	}
	err := q.QueueSubtaskLog(subtaskID, l, func(err error) {
		f.writeFailed(err, hostID, "storing "+what+" failed; the line is skipped, the stream goes on")
	})
	if err != nil {
		f.writeFailed(err, hostID, what+" not stored: the log queue is full; the line is skipped, the stream goes on")
	}
}

// LinesStored returns once the lines of the subtask given so far to Logs
// (the go-ahead and progress lines the fleet queued, and any the engine
// gave the same writer) are stored or failed to be, or with ctx's error.
// Across replicas: a replica running a command for another calls it before
// it returns the result, so that the line the other stores next (the
// result's) comes after them; the other calls it before it sends the
// command, so that its "dispatching ..." line comes before them.
func (f *Fleet) LinesStored(ctx context.Context, subtaskID int64) error {
	if q, ok := f.cfg.Logs.(QueuedLogs); ok {
		return q.SubtaskLogStored(ctx, subtaskID)
	}
	return nil
}
