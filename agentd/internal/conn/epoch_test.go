package conn

import (
	"context"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/durationpb"

	"agentplane/agentd/internal/backoff"
	"agentplane/agentd/internal/servers"
	"agentplane/agentd/internal/state"
	"agentplane/agentd/internal/testsrv"
	agentv1 "agentplane/gen/agentplane/agent/v1"
)

// Tests of the stream epoch (fencing) and of ResultQuery, against the
// plaintext test server on loopback, with a real state dir.

// runAgentd runs a Client on dir's state against srv until the returned
// stop is called (at the latest at test cleanup); stop returns once Run did
// and the state dir is closed, so the dir can be opened again, as by a
// restarted agentd.
func runAgentd(t *testing.T, srv *testsrv.Server, dir string, r Runner) (st *state.State, stop func()) {
	t.Helper()
	entries, err := servers.Parse(srv.Addr)
	if err != nil {
		t.Fatal(err)
	}
	if st, err = state.Open(dir); err != nil {
		t.Fatal(err)
	}
	log := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.DebugLevel)
	pool := servers.NewPool(servers.Config{Entries: entries, Creds: insecure.NewCredentials(), Options: DialOptions(),
		Rand: rand.New(rand.NewPCG(1, 0)), Log: log})
	c := New(Config{
		Servers: pool, State: st, Runner: r, Token: bootToken, HostName: "h1", InstallHome: "/home/admin/ocp_agent",
		Backoff: backoff.Backoff{Base: 5 * time.Millisecond, Cap: 50 * time.Millisecond}, ShutdownTimeout: time.Second, Log: log,
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx); pool.Close() }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(waitFor):
			t.Error("Run did not return after cancel")
		}
		st.Close()
	}
	t.Cleanup(stop)
	return st, stop
}

func epochCommand(subtask int64, attempt int32, epoch int64) *agentv1.ConnectResponse {
	return &agentv1.ConnectResponse{Kind: &agentv1.ConnectResponse_Command{Command: &agentv1.Command{
		SubtaskId: subtask, Attempt: attempt, Timeout: durationpb.New(time.Minute), Epoch: epoch,
		Action: &agentv1.Command_StopAgent{StopAgent: &agentv1.StopAgentAction{}},
	}}}
}

func epochCancel(subtask int64, attempt int32, epoch int64) *agentv1.ConnectResponse {
	return &agentv1.ConnectResponse{Kind: &agentv1.ConnectResponse_Cancel{Cancel: &agentv1.CancelCommand{
		SubtaskId: subtask, Attempt: attempt, Reason: "stale", Epoch: epoch,
	}}}
}

func query(subtask int64, attempt int32, epoch int64) *agentv1.ConnectResponse {
	return &agentv1.ConnectResponse{Kind: &agentv1.ConnectResponse_Query{Query: &agentv1.ResultQuery{
		SubtaskId: subtask, Attempt: attempt, Epoch: epoch,
	}}}
}

// nextOf returns the stream's next message that is not progress.
func nextOf(t *testing.T, st *testsrv.Stream) *agentv1.ConnectRequest {
	t.Helper()
	for {
		if m := st.Next(t); m.GetProgress() == nil {
			return m
		}
	}
}

// resultOf returns the next message, which must be a result of subtask.
func resultOf(t *testing.T, st *testsrv.Stream, subtask int64) *agentv1.CommandResult {
	t.Helper()
	m := nextOf(t, st)
	if m.GetResult().GetSubtaskId() != subtask {
		t.Fatalf("got %v, want the result of subtask %d", m, subtask)
	}
	return m.GetResult()
}

// answerOf returns the next message, which must be an answer about subtask.
func answerOf(t *testing.T, st *testsrv.Stream, subtask int64) *agentv1.QueryAnswer {
	t.Helper()
	m := nextOf(t, st)
	if m.GetAnswer().GetSubtaskId() != subtask {
		t.Fatalf("got %v, want the answer about subtask %d", m, subtask)
	}
	return m.GetAnswer()
}

// notJournaled fails when (subtask, attempt) is in the journal.
func notJournaled(t *testing.T, st *state.State, subtask int64, attempt int32) {
	t.Helper()
	if begun, err := st.Begun(subtask, attempt); err != nil || begun {
		t.Fatalf("subtask %d attempt %d journaled (%v, %v), want untouched", subtask, attempt, begun, err)
	}
}

// A command, cancel or query whose epoch is older than the newest seen (in
// a Welcome or a command) is neither run, journaled nor answered, also by a
// restarted agentd (the epoch is in its state dir); epoch 0 (a server
// without epochs) is never refused. agentd handles a stream's messages in
// order, so the answer to a later message proves the earlier one handled.
func TestOlderEpochIsRefusedAcrossRestarts(t *testing.T) {
	srv := testsrv.Start(t, testsrv.Options{Plaintext: true, Token: bootToken})
	srv.Epoch.Store(5)
	dir := t.TempDir()
	r := newFakeRunner(false)
	st, stop := runAgentd(t, srv, dir, r)
	s := srv.NextStream(t)
	testsrv.Poll(t, "the welcome's epoch recorded", func() bool { return st.Epoch() == 5 })

	s.Push(t, epochCommand(1, 1, 4)) // an older stream's
	s.Push(t, epochCancel(2, 1, 4))
	s.Push(t, query(3, 1, 4))
	s.Push(t, epochCommand(4, 1, 5)) // the stream's own: runs
	if res := resultOf(t, s, 4); res.GetOutcome() != agentv1.CommandOutcome_COMMAND_OUTCOME_SUCCEEDED {
		t.Fatalf("result %v", res)
	}
	notJournaled(t, st, 1, 1)
	notJournaled(t, st, 2, 1)
	if n := r.Calls(); n != 1 {
		t.Fatalf("runner called %d times, want once (the current epoch's command)", n)
	}
	s.Push(t, epochCommand(5, 1, 6)) // newer than the Welcome: becomes the newest
	resultOf(t, s, 5)
	if e := st.Epoch(); e != 6 {
		t.Fatalf("newest epoch %d, want 6", e)
	}
	s.Push(t, ack(4, 1))
	s.Push(t, ack(5, 1))
	testsrv.Poll(t, "results acknowledged", func() bool { return pendingCount(t, st) == 0 })
	stop()

	// agentd restarts and meets a server whose stream is older.
	srv.Epoch.Store(5)
	st, _ = runAgentd(t, srv, dir, r)
	if e := st.Epoch(); e != 6 {
		t.Fatalf("newest epoch after a restart %d, want 6", e)
	}
	s = srv.NextStream(t)
	s.Push(t, epochCommand(6, 1, 5))
	s.Push(t, epochCommand(7, 1, 0)) // no epoch: today's behaviour
	resultOf(t, s, 7)
	notJournaled(t, st, 6, 1)
	if n := r.Calls(); n != 3 {
		t.Fatalf("runner called %d times, want 3", n)
	}
}

// agentd answers a query from its running commands and its journal:
// UNKNOWN for a command it never received; WAITING while it waits for the
// go-ahead (and asks for it again on the stream the query came on, when
// the stream it asked on ended: a restarted server's); RUNNING while it
// does the work; FINISHED with the stored result afterwards, also once the
// result is acknowledged and after agentd restarted.
func TestQueryAnswersEachState(t *testing.T) {
	srv := testsrv.Start(t, testsrv.Options{Plaintext: true, Token: bootToken})
	srv.Epoch.Store(1)
	srv.HoldBegins.Store(true)
	dir := t.TempDir()
	r := newFakeRunner(true)
	_, stop := runAgentd(t, srv, dir, r)
	s := srv.NextStream(t)

	s.Push(t, query(30, 1, 1))
	if a := answerOf(t, s, 30); a.GetState() != agentv1.CommandState_COMMAND_STATE_UNKNOWN || a.GetResult() != nil {
		t.Fatalf("answer %v, want UNKNOWN", a)
	}

	s.Push(t, epochCommand(31, 2, 1))
	if m := nextOf(t, s); m.GetBegin().GetSubtaskId() != 31 {
		t.Fatalf("got %v, want the go-ahead request", m)
	}
	s.Push(t, query(31, 2, 1))
	if a := answerOf(t, s, 31); a.GetState() != agentv1.CommandState_COMMAND_STATE_WAITING {
		t.Fatalf("answer %v, want WAITING", a)
	}

	// The server restarts: a new stream, a newer epoch; the command waits
	// on, touching nothing, and the query brings its go-ahead request here.
	srv.Epoch.Store(2)
	srv.CloseConns()
	s = srv.NextStream(t)
	s.Push(t, query(31, 2, 2))
	if a := answerOf(t, s, 31); a.GetState() != agentv1.CommandState_COMMAND_STATE_WAITING {
		t.Fatalf("answer on the new stream %v, want WAITING", a)
	}
	m := nextOf(t, s)
	if b := m.GetBegin(); b.GetSubtaskId() != 31 || b.GetAttempt() != 2 {
		t.Fatalf("got %v, want the go-ahead request again on the new stream", m)
	}
	if n := r.Calls(); n != 0 {
		t.Fatalf("runner called %d times before the go-ahead", n)
	}
	s.Push(t, &agentv1.ConnectResponse{Kind: &agentv1.ConnectResponse_BeginAnswer{BeginAnswer: &agentv1.CommandBeginAnswer{
		SubtaskId: 31, Attempt: 2, Proceed: true}}})
	<-r.started
	s.Push(t, query(31, 2, 2))
	if a := answerOf(t, s, 31); a.GetState() != agentv1.CommandState_COMMAND_STATE_RUNNING {
		t.Fatalf("answer %v, want RUNNING", a)
	}

	close(r.release)
	res := resultOf(t, s, 31)
	if res.GetOutcome() != agentv1.CommandOutcome_COMMAND_OUTCOME_SUCCEEDED {
		t.Fatalf("result %v", res)
	}
	finished := func(what string) {
		t.Helper()
		s.Push(t, query(31, 2, 2))
		a := answerOf(t, s, 31)
		if a.GetState() != agentv1.CommandState_COMMAND_STATE_FINISHED || a.GetResult().GetOutcome() != res.GetOutcome() ||
			a.GetResult().GetMessage() != res.GetMessage() || a.GetResult().GetAttempt() != 2 {
			t.Fatalf("answer %s: %v, want FINISHED with %v", what, a, res)
		}
	}
	finished("after the result")
	s.Push(t, ack(31, 2))
	finished("after the ack")
	stop()

	_, _ = runAgentd(t, srv, dir, r)
	s = srv.NextStream(t)
	finished("after agentd restarted")
	if n := r.Calls(); n != 1 {
		t.Fatalf("runner called %d times, want once", n)
	}
}
