package integration_test

import (
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"agentplane/internal/simplan"
)

// ---- a turnstile: a proxy that holds new connections until let through ----

// turnstile forwards connections to target: at once while open; while closed it
// holds them (accepted, their first bytes unread by the server) until pass
// lets them through one by one, oldest first. It makes a server restart's
// reconnect storm as slow as the test wants, without the agents seeing a
// refusal (so their backoff does not grow).
type turnstile struct {
	ln     net.Listener
	target string
	wg     sync.WaitGroup
	mu     sync.Mutex
	open   bool
	held   []net.Conn
	conns  []net.Conn // forwarded, both ends
}

func startTurnstile(t *testing.T, target string) *turnstile {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ts := &turnstile{ln: ln, target: target, open: true}
	t.Cleanup(func() {
		ln.Close()
		ts.mu.Lock()
		for _, c := range append(ts.held, ts.conns...) {
			c.Close()
		}
		ts.held, ts.conns = nil, nil
		ts.mu.Unlock()
		ts.wg.Wait()
	})
	ts.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			ts.mu.Lock()
			open := ts.open
			if !open {
				ts.held = append(ts.held, c)
			}
			ts.mu.Unlock()
			if open {
				ts.forward(c, nil)
			}
		}
	})
	return ts
}

func (ts *turnstile) addr() string { return ts.ln.Addr().String() }

// close makes new connections wait for pass.
func (ts *turnstile) close() {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	ts.open = false
}

// pass lets the oldest held connection whose client is still there through
// and reports whether there was one. A client that gave up (its connect
// timeout) has closed its end: what it sent is readable, then EOF.
func (ts *turnstile) pass() bool {
	for {
		ts.mu.Lock()
		if len(ts.held) == 0 {
			ts.mu.Unlock()
			return false
		}
		c := ts.held[0]
		ts.held = ts.held[1:]
		ts.mu.Unlock()
		var first []byte
		buf := make([]byte, 4096)
		alive := false
		for {
			c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
			n, err := c.Read(buf)
			first = append(first, buf[:n]...)
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				alive = true
				break
			}
			if err != nil {
				break
			}
		}
		if !alive {
			c.Close()
			continue
		}
		c.SetReadDeadline(time.Time{})
		ts.forward(c, first)
		return true
	}
}

// forward connects c to the target, sending first ahead of c's bytes.
func (ts *turnstile) forward(c net.Conn, first []byte) {
	u, err := net.Dial("tcp", ts.target)
	if err != nil {
		c.Close()
		return
	}
	if len(first) > 0 {
		if _, err := u.Write(first); err != nil {
			c.Close()
			u.Close()
			return
		}
	}
	ts.mu.Lock()
	ts.conns = append(ts.conns, c, u)
	ts.mu.Unlock()
	ts.wg.Go(func() { io.Copy(u, c); u.Close() })
	ts.wg.Go(func() { io.Copy(c, u); c.Close() })
}

// TestRestartStormSlowerThanTheLostBound restarts the server with a batch
// stop of simulated hosts in flight, and lets their agents back in one at a
// time, so that the reconnect storm lasts more than twice --agent-lost-after:
// the server is slow to accept them (on two cores, 10,000 hosts take about a
// minute), but every agent is alive and retrying. No stop may fail for it.
// One host is never let back in: it fails, within --agent-lost-after plus a
// heartbeat interval of the last host's return.
func TestRestartStormSlowerThanTheLostBound(t *testing.T) {
	const (
		hosts     = 10
		prefix    = "storm"
		heartbeat = time.Second
		lostAfter = 2 * time.Second
		every     = 500 * time.Millisecond // one host back each; the storm lasts (hosts-2)*every > 2*lostAfter
	)
	bin := simBinary(t)
	s := startServer(t, "--heartbeat-interval", heartbeat.String(), "--agent-lost-after", lostAfter.String())
	ts := startTurnstile(t, s.grpcAddr)
	p := startProcess(t, "agentplane-sim", []string{"SIM_ADMIN_PASSWORD=" + adminPassword}, bin,
		"--server", ts.addr(), "--ca-file", s.caFile, "--hosts", fmt.Sprint(hosts),
		"--state-dir", tempDir(t), "--name-prefix", prefix, "--stop-delay", "2s",
		"--enroll-user", admin.user, "--enroll-password-env", "SIM_ADMIN_PASSWORD", "--enroll-concurrency", "8",
		"--stats-interval", "100ms", "--log-level", "info")
	ids := s.waitSimOnline(t, p, prefix, hosts, 60*time.Second)
	created := s.opPost(t, "/compute/hosts/batchStopAgents", map[string]any{"hostIds": ids})
	waitFor(t, 30*time.Second, "every host to get its stop", func() bool {
		st, _ := lastSim(t, p, "")
		return st.Commands == hosts
	})

	// Restart with the stops in flight; the agents' reconnections wait at
	// the turnstile, which lets them through one at a time from the moment
	// the new server listens.
	ts.close()
	s.proc.stop(t, 10*time.Second)
	type storm struct {
		first, last time.Time
		err         error
	}
	let := make(chan storm, 1)
	go func() {
		var st storm
		defer func() { let <- st }()
		if !poll(60*time.Second, func() bool {
			c, err := net.Dial("tcp", s.grpcAddr)
			if err == nil {
				c.Close()
			}
			return err == nil
		}) {
			st.err = errors.New("the new server never listened")
			return
		}
		for i := 0; i < hosts-1; i++ {
			if !poll(10*time.Second, ts.pass) {
				st.err = fmt.Errorf("no held agent connection to let through after %d", i)
				return
			}
			if st.last = time.Now(); i == 0 {
				st.first = st.last
			}
			if i < hosts-2 {
				time.Sleep(every)
			}
		}
	}()
	s.restart(t)
	st := <-let
	if st.err != nil {
		t.Fatal(st.err)
	}
	back := st.last
	t.Logf("%d of %d hosts let back in over %s", hosts-1, hosts, back.Sub(st.first).Round(time.Millisecond))

	// The one host never let back in fails, within the bound.
	gone := -1
	var goneAt time.Time
	tk := s.opWait(t, created.ID, 60*time.Second, "a stop to fail or the task to end", func(tk opTask) bool {
		for _, st := range tk.Subtasks {
			if st.Name == stopAllName && st.Status == "FAILED" && gone < 0 {
				gone, goneAt = st.ParallelIdx, time.Now()
			}
		}
		return tk.final()
	})
	if gone < 0 {
		t.Fatalf("task ended %s with no stop failed; the host never let back in must fail", tk.Status)
	}
	// The registration of the last host back is after back; the poll sees
	// the failure up to its interval late.
	if early := back.Add(heartbeat + lostAfter).Sub(goneAt); early > 0 {
		t.Errorf("the host never back failed %s before --agent-lost-after plus a heartbeat interval after the last host came back", early)
	}
	if late := goneAt.Sub(back.Add(heartbeat + lostAfter)); late > 3*time.Second {
		t.Errorf("the host never back failed %s after the bound", late)
	}
	t.Logf("batch %s; host %d (never back) failed %s after the last host came back", tk.Status, gone,
		goneAt.Sub(back).Round(time.Millisecond))
	for i := range hosts {
		for _, name := range []string{prepareStopName, stopAllName, finishName} {
			st := tk.branchSub(t, i, name)
			want := "SUCCESSFUL"
			if i == gone && name != prepareStopName {
				want = map[string]string{stopAllName: "FAILED", finishName: "PENDING"}[name]
			}
			if st.Status != want {
				t.Errorf("branch %d (%s) %q: %s (%q), want %s", i, simplan.HostName(prefix, i), name, st.Status, st.Message, want)
			}
		}
	}
	if msg := tk.branchSub(t, gone, stopAllName).Message; !strings.Contains(msg, "agentd lost: not back within 2s after the server restart") {
		t.Errorf("the host never back failed with %q", msg)
	}
	if tk.Status != "FAILED" {
		t.Errorf("batch ended %s, want FAILED (one host never came back)", tk.Status)
	}
}
