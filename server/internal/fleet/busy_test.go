package fleet

import (
	"context"
	"errors"
	"testing"
	"time"
)

// TestNothingIsLostWhileTheServerIsBusy: while the server reports itself
// busy (connections waiting for a handshake slot during a failover's
// reconnects), a command whose host's stream dropped keeps waiting for it,
// and a silent session stays; both are lost only LostAfter after the last
// busy moment. Before, the command failed "agentd lost" LostAfter after the
// stream dropped, though its agentd was queued behind the others.
func TestNothingIsLostWhileTheServerIsBusy(t *testing.T) {
	reg := newRegistry()
	f := newLossyFleet(reg)
	s := connect(t, f, "h1")
	quiet := connect(t, f, "h2") // sends nothing: its watchdog runs
	done := dispatch(context.Background(), f, s.HostID, Command{SubtaskID: 7, Attempt: 1, StopAgent: &StopAgent{}})
	if m := next(t, s); m.Command == nil {
		t.Fatalf("got %+v, want the command", m)
	}
	f.Disconnect(s) // the stream dropped

	var lastBusy time.Time
	for end := time.Now().Add(4 * lostAfter); time.Now().Before(end); {
		lastBusy = time.Now()
		f.Busy()
		select {
		case d := <-done:
			t.Fatalf("dispatch ended while the server was busy: %+v", d)
		case <-quiet.Done():
			t.Fatalf("a session was lost while the server was busy: %v", quiet.Err())
		case <-time.After(lostAfter / 4):
		}
	}
	d := result(t, done)
	if !errors.Is(d.err, ErrAgentLost) {
		t.Fatalf("dispatch: %+v, want ErrAgentLost once the server is no longer busy", d)
	}
	if since := time.Since(lastBusy); since < lostAfter {
		t.Fatalf("lost %s after the server was last busy, before the bound", since)
	}
	waitDone(t, quiet)
	if !errors.Is(quiet.Err(), ErrLost) {
		t.Fatalf("silent session ended with %v, want ErrLost", quiet.Err())
	}
	f.Disconnect(quiet)
}

// TestAgentBackAfterABusySpellGetsItsCommand: the host whose stream
// dropped comes back while the server is busy, past LostAfter since it
// was last heard, and its waiting command is sent again and answered.
func TestAgentBackAfterABusySpellGetsItsCommand(t *testing.T) {
	reg := newRegistry()
	f := newLossyFleet(reg)
	s := connect(t, f, "h1")
	cmd := Command{SubtaskID: 8, Attempt: 1, StopAgent: &StopAgent{}}
	done := dispatch(context.Background(), f, s.HostID, cmd)
	if m := next(t, s); m.Command == nil {
		t.Fatalf("got %+v, want the command", m)
	}
	f.Disconnect(s)
	for end := time.Now().Add(2 * lostAfter); time.Now().Before(end); {
		f.Busy()
		time.Sleep(lostAfter / 4)
	}
	s2 := connect(t, f, "h1")
	m := next(t, s2)
	if m.Command == nil || m.Command.SubtaskID != 8 {
		t.Fatalf("got %+v, want the command again", m)
	}
	if err := f.Receive(context.Background(), s2, Inbound{Result: &Result{SubtaskID: 8, Attempt: 1, Outcome: Succeeded}}); err != nil {
		t.Fatal(err)
	}
	if d := result(t, done); d.err != nil || d.r.Outcome != Succeeded {
		t.Fatalf("dispatch: %+v, want the result", d)
	}
}
