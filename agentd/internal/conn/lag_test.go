package conn

import (
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	agentv1 "agentplane/gen/agentplane/agent/v1"
)

// lagger is a TCP proxy to a server whose answers can be made late: from
// lag on, each chunk the server sends reaches the client that long after
// it was sent, in order (a server on starved cores taking a reconnect
// storm: it answers pings, and everything else, seconds late). What the
// client sends goes through at once.
type lagger struct {
	lis net.Listener
	to  string
	by  atomic.Int64 // the server's lag, in nanoseconds
	wg  sync.WaitGroup

	mu    sync.Mutex
	conns []net.Conn
}

// newLagger proxies to addr until the test ends.
func newLagger(t *testing.T, addr string) *lagger {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := &lagger{lis: lis, to: addr}
	l.wg.Go(l.accept)
	t.Cleanup(l.close)
	return l
}

func (l *lagger) addr() string { return l.lis.Addr().String() }

// lag delays what the server sends from now on by d.
func (l *lagger) lag(d time.Duration) { l.by.Store(int64(d)) }

func (l *lagger) accept() {
	for {
		a, err := l.lis.Accept()
		if err != nil {
			return
		}
		b, err := net.Dial("tcp", l.to)
		if err != nil {
			a.Close()
			continue
		}
		l.mu.Lock()
		l.conns = append(l.conns, a, b)
		l.mu.Unlock()
		l.wg.Go(func() { copyLate(a, b, nil) })
		l.wg.Go(func() { copyLate(b, a, &l.by) })
	}
}

// copyLate copies src to dst, each chunk lag after it was read (nil: at
// once), until either ends; then it closes both.
func copyLate(src, dst net.Conn, lag *atomic.Int64) {
	type chunk struct {
		due time.Time
		b   []byte
	}
	q := make(chan chunk, 1024)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for c := range q {
			time.Sleep(time.Until(c.due))
			if _, err := dst.Write(c.b); err != nil {
				return
			}
		}
	}()
	defer func() {
		close(q)
		<-done
		src.Close()
		dst.Close()
	}()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			due := time.Now()
			if lag != nil {
				due = due.Add(time.Duration(lag.Load()))
			}
			select {
			case q <- chunk{due: due, b: append([]byte(nil), buf[:n]...)}:
			case <-done:
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (l *lagger) close() {
	l.lis.Close()
	l.mu.Lock()
	for _, c := range l.conns {
		c.Close()
	}
	l.mu.Unlock()
	l.wg.Wait()
}

// TestLateServerKeepsItsStream: a server that answers everything 8 s late
// (pings included) keeps agentd's established stream, which still delivers
// a command and its result. With the keepalive given up 5 s after its ping
// (10 s of silence), agentd dropped such a stream 15 s in and reconnected:
// during a replica's failover every survivor's streams did so at once, and
// each reconnect made the survivors slower still.
func TestLateServerKeepsItsStream(t *testing.T) {
	if testing.Short() {
		t.Skip("waits out a keepalive ping answered late (about 40 s)")
	}
	t.Parallel()
	const late = 8 * time.Second
	r := newFakeRunner(false)
	// Heartbeats every minute: the stream idles, as a fleet's does between
	// heartbeats, and agentd's keepalive pings.
	h := newHarness(t, r, t.TempDir(), time.Minute, 0)
	proxy := newLagger(t, h.cc.Target())
	h.dialVia(proxy.addr())
	h.run()
	fs := h.stream()
	proxy.lag(late) // the Welcome too, maybe: well within WelcomeTimeout

	// agentd's first ping goes after keepaliveTime of silence and is
	// answered late; the old keepalive gave up at keepaliveTime + 5 s.
	watch := time.NewTimer(keepaliveTime + late + 4*time.Second)
	defer watch.Stop()
	select {
	case <-h.srv.streams:
		t.Fatal("agentd dropped the stream of a server answering late, and reconnected")
	case <-watch.C:
	}
	select {
	case fs.send <- command(31, 1, time.Minute):
	case <-time.After(waitFor):
		t.Fatal("the stream ended: agentd dropped the stream of a server answering late")
	}
	deadline := time.After(2*late + waitFor)
	for {
		select {
		case <-h.srv.streams:
			t.Fatal("agentd dropped the stream of a server answering late, and reconnected")
		case <-deadline:
			t.Fatal("no result on the late server's stream")
		case m := <-fs.reqs:
			res := m.GetResult()
			if res == nil {
				continue
			}
			if res.GetOutcome() != agentv1.CommandOutcome_COMMAND_OUTCOME_SUCCEEDED || r.Calls() != 1 {
				t.Fatalf("result %v after %d runner calls, want SUCCEEDED after one", res, r.Calls())
			}
			return
		}
	}
}

// dialVia makes the harness's Client reach its server through addr (a
// proxy to it), with agentd's own dial options (keepalive, connect
// timeout). Call it before run.
func (h *harness) dialVia(addr string) {
	h.t.Helper()
	h.cc.Close()
	cc, err := grpc.NewClient(addr, append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, DialOptions()...)...)
	if err != nil {
		h.t.Fatal(err)
	}
	h.cc = cc // closed by newHarness's cleanup
}
