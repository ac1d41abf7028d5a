package conn

import (
	"context"
	"math/rand/v2"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"google.golang.org/grpc/credentials/insecure"

	"agentplane/agentd/internal/backoff"
	"agentplane/agentd/internal/servers"
	"agentplane/agentd/internal/state"
	"agentplane/agentd/internal/testsrv"
)

// Tests of a Client over several servers (servers.Pool), on real sockets:
// plaintext test servers on loopback.

const bootToken = "boot-token"

// deadAddr returns a loopback address where nothing listens.
func deadAddr(t *testing.T) string {
	t.Helper()
	l, err := new(net.ListenConfig).Listen(t.Context(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// multiClient runs a Client over the servers of list until the test ends
// or stop is called.
type multiClient struct {
	logs   *testsrv.Logs
	cancel context.CancelFunc
	done   chan error
}

func runMulti(t *testing.T, list string, seed uint64, b backoff.Backoff) *multiClient {
	t.Helper()
	return runMultiWelcome(t, list, seed, b, 0)
}

// runMultiWelcome is runMulti with a WelcomeTimeout (0: the default).
func runMultiWelcome(t *testing.T, list string, seed uint64, b backoff.Backoff, welcome time.Duration) *multiClient {
	t.Helper()
	entries, err := servers.Parse(list)
	if err != nil {
		t.Fatal(err)
	}
	st, err := state.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	logs := &testsrv.Logs{}
	log := zerolog.New(zerolog.MultiLevelWriter(logs, zerolog.NewTestWriter(t))).Level(zerolog.DebugLevel)
	pool := servers.NewPool(servers.Config{Entries: entries, Creds: insecure.NewCredentials(), Options: DialOptions(),
		Rand: rand.New(rand.NewPCG(seed, 0)), Log: log})
	c := New(Config{
		Servers: pool, State: st, Runner: newFakeRunner(false),
		Token: bootToken, HostName: "h1", InstallHome: "/home/admin/ocp_agent",
		Backoff: b, WelcomeTimeout: welcome, ShutdownTimeout: time.Second, Log: log,
	})
	ctx, cancel := context.WithCancel(context.Background())
	m := &multiClient{logs: logs, cancel: cancel, done: make(chan error, 1)}
	go func() { m.done <- c.Run(ctx); pool.Close() }()
	t.Cleanup(func() { m.stop(t) })
	return m
}

// stop cancels Run and waits for it, within waitFor.
func (m *multiClient) stop(t *testing.T) {
	t.Helper()
	m.cancel()
	select {
	case err := <-m.done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
		m.done <- nil
	case <-time.After(waitFor):
		t.Fatal("Run did not return after cancel")
	}
}

func startPlain(t *testing.T, n int) ([]*testsrv.Server, []string) {
	t.Helper()
	var srvs []*testsrv.Server
	var addrs []string
	for range n {
		s := testsrv.Start(t, testsrv.Options{Plaintext: true, Token: bootToken})
		srvs = append(srvs, s)
		addrs = append(addrs, s.Addr)
	}
	return srvs, addrs
}

// anyStream waits up to within for a stream on one of srvs and returns its
// server's index.
func anyStream(t *testing.T, srvs []*testsrv.Server, within time.Duration) (int, *testsrv.Stream) {
	t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		for i, s := range srvs {
			select {
			case st := <-s.Streams():
				return i, st
			default:
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("no stream on any server within %s", within)
	return -1, nil
}

// seedStartingAt returns a seed whose pool tries addr first.
func seedStartingAt(t *testing.T, list, addr string) uint64 {
	t.Helper()
	entries, err := servers.Parse(list)
	if err != nil {
		t.Fatal(err)
	}
	for seed := range uint64(1000) {
		p := servers.NewPool(servers.Config{Entries: entries, Creds: insecure.NewCredentials(), Rand: rand.New(rand.NewPCG(seed, 0))})
		sc, err := p.Next(t.Context())
		p.Close()
		if err != nil {
			t.Fatal(err)
		}
		if sc.Endpoint.Addr == addr {
			return seed
		}
	}
	t.Fatalf("no seed starts at %s", addr)
	return 0
}

// failover bounds the move to another server once the one of the stream
// stopped: the stream's end is seen at once (the connection closes), the
// next server is tried within Backoff.Base, and it answers at once.
const failover = 3 * time.Second

func TestStoppedServerFailsOverToAnother(t *testing.T) {
	srvs, addrs := startPlain(t, 3)
	m := runMulti(t, strings.Join(addrs, ","), 1, backoff.Backoff{})
	i, st := anyStream(t, srvs, waitFor)
	if st.Hello.GetToken() != bootToken {
		t.Fatalf("hello %v", st.Hello)
	}
	poll(t, "the log of connecting to "+addrs[i], func() bool { return m.logs.Count("connected to server", addrs[i]) == 1 })

	// Stop that server: another one within the bound, then the last one.
	left := map[int]bool{0: true, 1: true, 2: true}
	for range 2 {
		delete(left, i)
		srvs[i].Stop()
		start := time.Now()
		prev := i
		i, _ = anyStream(t, srvs, failover)
		if !left[i] {
			t.Fatalf("reconnected to server %d, which was stopped", i)
		}
		t.Logf("server %d stopped: on server %d after %s", prev, i, time.Since(start))
		if m.logs.Count("connection to server lost", addrs[prev]) == 0 {
			t.Fatalf("no log of leaving %s", addrs[prev])
		}
		poll(t, "the log of connecting to "+addrs[i], func() bool { return m.logs.Count("connected to server", addrs[i]) == 1 })
	}
	m.stop(t)
}

func TestDeadFirstServerThenLiveOne(t *testing.T) {
	srvs, addrs := startPlain(t, 1)
	dead := deadAddr(t)
	list := dead + "," + addrs[0]
	seed := seedStartingAt(t, list, dead)
	start := time.Now()
	m := runMulti(t, list, seed, backoff.Backoff{})
	// Refused at once, then the live one after at most Base (200ms).
	srvs[0].NextStream(t)
	if d := time.Since(start); d > failover {
		t.Fatalf("connected after %s; want within %s", d, failover)
	}
	poll(t, "the log of connecting to the live server", func() bool { return m.logs.Count("connected to server", addrs[0]) == 1 })
	if n := m.logs.Count("connection to server lost", dead); n != 1 {
		t.Fatalf("%d lines for leaving the dead server, want 1", n)
	}
	m.stop(t)
}

func TestAllServersDownRetriesWithBackoffUntilCanceled(t *testing.T) {
	list := deadAddr(t) + "," + deadAddr(t)
	b := backoff.Backoff{Base: 20 * time.Millisecond, Cap: 100 * time.Millisecond}
	m := runMulti(t, list, 7, b)
	// Retried round after round...
	poll(t, "ten failed attempts", func() bool { return m.logs.Count("connection to server lost", "") >= 10 })
	// ... but not hot: an attempt waits at most Cap, on average at least
	// Base/2 (jitter), so 1s holds no more than a few hundred.
	n0 := m.logs.Count("connection to server lost", "")
	time.Sleep(time.Second)
	if n := m.logs.Count("connection to server lost", "") - n0; n > 300 {
		t.Fatalf("%d attempts in a second: a hot loop", n)
	}
	start := time.Now()
	m.stop(t)
	if d := time.Since(start); d > time.Second {
		t.Fatalf("Run returned %s after cancel", d)
	}
}

// TestSilentServerTimesOutThenNext: a first server that accepts TCP
// connections and never answers costs WelcomeTimeout, then the next one is
// tried.
func TestSilentServerTimesOutThenNext(t *testing.T) {
	srvs, addrs := startPlain(t, 1)
	silent, err := new(net.ListenConfig).Listen(t.Context(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close() // the kernel accepts; nobody reads or writes
	list := silent.Addr().String() + "," + addrs[0]
	seed := seedStartingAt(t, list, silent.Addr().String())
	const welcome = 300 * time.Millisecond
	start := time.Now()
	m := runMultiWelcome(t, list, seed, backoff.Backoff{}, welcome)
	srvs[0].NextStream(t)
	if d := time.Since(start); d < welcome || d > failover {
		t.Fatalf("connected after %s; want after the silent server's %s, within %s", d, welcome, failover)
	}
	if n := m.logs.Count("connection to server lost", silent.Addr().String()); n != 1 {
		t.Fatalf("%d lines for leaving the silent server, want 1", n)
	}
	m.stop(t)
}

func TestSlowFailuresCountAsRounds(t *testing.T) {
	c := &Client{cfg: Config{StableAfter: 10 * time.Second}}
	for _, tc := range []struct {
		name     string
		welcomed bool
		took     time.Duration
		want     int
	}{
		{"refused at once: the next server now", false, 10 * time.Millisecond, 3},
		{"no connection for seconds: busy", false, busyAfter, 1},
		{"no welcome within the timeout: busy", false, DefaultWelcomeTimeout, 1},
		{"a stream ended soon after its welcome: busy", true, 3 * time.Second, 1},
		{"a stable stream lost: the next server now", true, time.Minute, 3},
	} {
		if got := c.round(3, tc.welcomed, tc.took); got != tc.want {
			t.Errorf("%s: round %d, want %d", tc.name, got, tc.want)
		}
	}
}
