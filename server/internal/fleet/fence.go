package fleet

import (
	"context"
	"fmt"
	"time"

	"github.com/rs/zerolog"

	"agentplane/server/internal/task"
)

// This file fences the commands the server has given up on, and records
// what agentd did with them anyway.
//
// A command can reach agentd after Dispatch gave up on it: read from a
// stream that was partitioned, or by an agentd that was frozen, for longer
// than LostAfter. So agentd asks for a go-ahead (Begin) on the stream the
// command came on (if that stream ends first, on the one that brings the
// command again) before its first signal or process start, and the fleet
// grants it only while Dispatch still waits for that attempt on the host's
// current session. The grant and the give-up are decided under Fleet.mu, so
// exactly one comes first: a command is never begun after its give-up, and
// a give-up after a grant sends a Cancel, which agentd honours.
//
// A Dispatch that ends without giving up (leftToFinish: the task's owner
// died or changed, the host's stream moved) leaves the command to whoever
// resumes the wait. A Begin that comes meanwhile, or on a replica the
// resumed dispatch has not reached yet, is refused for now only
// (AskAgain): agentd keeps the command, touching nothing, and asks again
// when it comes again, so a failover by itself fails no command.
//
// Whatever agentd reports of an attempt the fleet gave up on (progress, its
// result, a Begin refused) is appended to the subtask's log with a marker,
// bounded per attempt, and the result is acknowledged so agentd forgets it.
// The process report agentd sends before each result updates the host's
// process list as any heartbeat does.
//
// The give-ups are remembered in memory (the last maxGivenUp): after a
// server restart, a late result of an attempt the previous server gave up
// on is acknowledged and dropped as stale, as before.

// givenUp is an attempt Dispatch gave up on without its result.
type givenUp struct {
	hostID int64
	reason string // why the server gave up
	seq    uint64 // when, in give-ups: evictions skip an entry replaced since
	lines  int    // late lines recorded
	result bool   // the late result was recorded
}

// givenUpRef is an entry of Fleet.givenUpOrder.
type givenUpRef struct {
	k   key
	seq uint64
}

const (
	// maxGivenUp bounds the give-ups remembered; the oldest is forgotten
	// first.
	maxGivenUp = 1 << 14
	// maxLateLines bounds the late progress lines and refusals recorded in
	// the log of one attempt; one more line says that the rest was not.
	// A late result is recorded once, beyond the bound.
	maxLateLines = 32
)

// giveUp ends Dispatch's wait for c with cause: from now on c's command is
// neither re-sent nor granted, and a Cancel goes to the host (or waits for
// its next session). When lost (await found the host's agentd lost), c is
// abandoned too (Dispatch returns at once), unless the result came after
// await's verdict, or the host has a live session again (it connected
// after await's verdict and got the command again): then it gives up
// nothing and returns false, and Dispatch waits on.
func (f *Fleet) giveUp(ctx context.Context, c *call, lost bool, cause error) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if lost && (len(c.result) > 0 || ctx.Err() == nil && f.live(c.hostID) != nil) {
		return false
	}
	c.canceled = true
	c.abandoned = lost
	k := key{c.cmd.SubtaskID, c.cmd.Attempt}
	f.givenUpSeq++
	f.givenUp[k] = &givenUp{hostID: c.hostID, reason: cause.Error(), seq: f.givenUpSeq}
	f.givenUpOrder = append(f.givenUpOrder, givenUpRef{k, f.givenUpSeq})
	for len(f.givenUpOrder) > maxGivenUp {
		old := f.givenUpOrder[0]
		f.givenUpOrder = f.givenUpOrder[1:]
		if g := f.givenUp[old.k]; g != nil && g.seq == old.seq {
			delete(f.givenUp, old.k)
		}
	}
	cancel := Cancel{SubtaskID: c.cmd.SubtaskID, Attempt: c.cmd.Attempt, Reason: cause.Error()}
	if s := f.live(c.hostID); s == nil || !s.send(Outbound{Cancel: &cancel}) {
		f.keepCancel(c.hostID, cancel)
	}
	return true
}

// logGiveUp records a give-up in the subtask's log, so that what agentd
// reports afterwards reads in order. ctx may be done: the write gets a
// few seconds of its own.
func (f *Fleet) logGiveUp(ctx context.Context, k key, cause error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	line := fmt.Sprintf("the server gave up on attempt %d: %v; agentd may not begin it from now on", k.attempt, cause)
	if err := f.cfg.Logs.AppendSubtaskLog(ctx, k.subtask, task.LogLine{RunTime: k.attempt, Time: f.cfg.Now(), Line: line}); err != nil {
		f.cfg.Log.Error().Err(err).Int64("subtask_id", k.subtask).Int("attempt", k.attempt).Msg("recording a give-up in the subtask log failed")
	}
}

// abandon marks c abandoned once Dispatch stops waiting for the agent to
// confirm its Cancel, and returns the result if it came meanwhile.
func (f *Fleet) abandon(c *call) (Result, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	c.abandoned = true
	select {
	case r := <-c.result:
		return r, true
	default:
		return Result{}, false
	}
}

// answered forgets the give-up of k: Dispatch got its result after all
// (while it waited for the agent to confirm the Cancel) and returns it.
func (f *Fleet) answered(k key) {
	f.mu.Lock()
	delete(f.givenUp, k)
	f.mu.Unlock()
}

// begin answers an agentd's Begin on s. It is granted only while Dispatch
// waits for that attempt's result on s's host, has not given up on it and
// its ctx has not ended, and s is the host's current session. The grant
// is logged in the subtask's log, as is a refusal of an attempt the server
// gave up on (bounded, see recordLate).
//
// A refusal is for now only (BeginAnswer.AskAgain) when the command may yet
// be sent again: its dispatch here ended leaving the agent to finish (see
// leftToFinish: the task's owner went away or changed, the host's stream
// moved), s is not the host's current session (the waiting dispatch sends
// the command to the current one), or no dispatch here knows the command
// and its attempt is still live in the store (its owner has not resumed it
// here yet). agentd then keeps the command and asks again when the command
// or a Query about it comes again. Only the rest is final: the server gave
// up on the attempt, its subtask's wait ended (canceled, timed out), or
// the attempt is no longer live; agentd ends it FAILED, signalling nothing.
func (f *Fleet) begin(ctx context.Context, s *Session, b Begin) error {
	k := key{b.SubtaskID, b.Attempt}
	answer := BeginAnswer{SubtaskID: b.SubtaskID, Attempt: b.Attempt}
	f.mu.Lock()
	v := f.refusal(s, k)
	if !v.unknown {
		answer.Proceed, answer.Reason, answer.AskAgain = v.why == "", v.why, v.again
		s.send(Outbound{BeginAnswer: &answer})
	}
	f.mu.Unlock()
	log := f.cfg.Log.With().Int64("host_id", s.HostID).Int64("subtask_id", b.SubtaskID).Int("attempt", b.Attempt).Logger()
	if v.unknown {
		// Nothing to order against a grant or a give-up here: the
		// answer is a refusal either way.
		answer.Reason, answer.AskAgain = f.unknownBegin(ctx, log, s.HostID, k)
		s.send(Outbound{BeginAnswer: &answer})
	}
	switch {
	case answer.Proceed:
		log.Debug().Msg("command begun")
		// The answer is sent; a line the store cannot take (a full disk)
		// is not worth the stream.
		f.record(ctx, s.HostID, b.SubtaskID, task.LogLine{RunTime: b.Attempt, Time: f.cfg.Now(),
			Line: fmt.Sprintf("agentd began attempt %d; the server confirmed it", b.Attempt)}, "a go-ahead line")
		return nil
	case answer.AskAgain:
		log.Info().Str("reason", answer.Reason).Msg("command not confirmed to agentd yet; it asks again when the command comes again")
		return nil
	}
	log.Warn().Str("reason", answer.Reason).Msg("command not confirmed to agentd")
	if _, err := f.recordLate(ctx, s.HostID, k, false, fmt.Sprintf(
		"agentd asked to begin attempt %d after the server gave up; refused, so it signals nothing: %s", b.Attempt, answer.Reason)); err != nil {
		f.writeFailed(err, s.HostID, "storing a refused go-ahead failed; the line is skipped, the stream goes on")
	}
	return nil
}

// verdict is refusal's answer to a Begin.
type verdict struct {
	why     string // why agentd may not begin the command; "" grants it
	again   bool   // the refusal is for now only (BeginAnswer.AskAgain)
	unknown bool   // no dispatch here knows the command: see unknownBegin
}

// refusal says whether agentd may begin k on s (see begin). Callers hold
// mu.
func (f *Fleet) refusal(s *Session, k key) verdict {
	if c := f.inflight[k]; c != nil && c.hostID == s.HostID && !c.canceled {
		switch cause := context.Cause(c.ctx); {
		case cause != nil && leftToFinish(cause):
			return verdict{why: "the command's dispatch here ended, leaving it to the next: " + cause.Error(), again: true}
		case cause != nil:
			return verdict{why: "the command's subtask ended: " + cause.Error()}
		case f.live(s.HostID) != s:
			return verdict{why: "asked on a stream that is no longer the host's current one", again: true}
		}
		return verdict{}
	}
	if g := f.givenUp[k]; g != nil && g.hostID == s.HostID {
		return verdict{why: "the server gave up on the command: " + g.reason}
	}
	return verdict{unknown: true}
}

// liveCheckWait bounds the store read of unknownBegin.
const liveCheckWait = 3 * time.Second

// unknownBegin is the refusal of a Begin no dispatch here knows, and
// whether it is for now only: the attempt is still live in the store, so
// its owner may yet dispatch it here (it resumes the wait of a dispatch
// that ended leaving the agent to finish), or the store could not tell
// within liveCheckWait (agentd keeps the command, touching nothing, for
// at most its timeout).
func (f *Fleet) unknownBegin(ctx context.Context, log zerolog.Logger, hostID int64, k key) (why string, again bool) {
	ctx, cancel := context.WithTimeout(ctx, liveCheckWait)
	defer cancel()
	live, err := f.cfg.Registry.AttemptLive(ctx, hostID, k.subtask, k.attempt)
	switch {
	case err != nil:
		log.Warn().Err(err).Msg("cannot tell whether a command asking to begin is still live; agentd asks again when it comes again")
		return "the server is not waiting for this command here yet, and cannot tell whether its attempt is still live", true
	case live:
		return "the server is not waiting for this command here yet; its attempt is still live", true
	}
	return "the server is not waiting for this command", false
}

// recordLate appends line to the log of k's subtask if the server gave up
// on k on hostID, and reports whether it did. Per attempt it records a
// result once, and at most maxLateLines other lines, then one saying that
// the rest is not recorded.
func (f *Fleet) recordLate(ctx context.Context, hostID int64, k key, result bool, line string) (bool, error) {
	f.mu.Lock()
	g := f.givenUp[k]
	if g == nil || g.hostID != hostID {
		f.mu.Unlock()
		return false, nil
	}
	switch {
	case result && g.result:
		line = "" // a re-sent result, recorded already
	case result:
		g.result = true
	case g.lines > maxLateLines:
		line = ""
	case g.lines == maxLateLines:
		line = fmt.Sprintf("further late messages from agentd about attempt %d are not recorded", k.attempt)
		g.lines++
	default:
		g.lines++
	}
	f.mu.Unlock()
	if line == "" {
		return true, nil
	}
	err := f.cfg.Logs.AppendSubtaskLog(ctx, k.subtask, task.LogLine{RunTime: k.attempt, Time: f.cfg.Now(), Line: line})
	if err != nil && result {
		f.mu.Lock()
		g.result = false // recorded when agentd sends it again
		f.mu.Unlock()
	}
	return true, err
}

// lateResult records the result of an attempt the server gave up on, and
// acknowledges it once recorded. It reports false when r is not of such
// an attempt.
func (f *Fleet) lateResult(ctx context.Context, s *Session, r Result) (bool, error) {
	line := fmt.Sprintf("late result from agentd after the server gave up (attempt %d): %s: %s", r.Attempt, outcomeName(r.Outcome), r.Message)
	ok, err := f.recordLate(ctx, s.HostID, key{r.SubtaskID, r.Attempt}, true, line)
	if !ok || err != nil {
		return ok, err
	}
	f.cfg.Log.Info().Int64("host_id", s.HostID).Int64("subtask_id", r.SubtaskID).Int("attempt", r.Attempt).
		Str("outcome", outcomeName(r.Outcome)).Msg("late result recorded and acknowledged")
	s.send(Outbound{Ack: &Ack{SubtaskID: r.SubtaskID, Attempt: r.Attempt}})
	return true, nil
}

// outcomeName names an outcome as agentd's journal does.
func outcomeName(o Outcome) string {
	switch o {
	case Succeeded:
		return "SUCCEEDED"
	case Failed:
		return "FAILED"
	case Canceled:
		return "CANCELED"
	}
	return "UNKNOWN"
}
