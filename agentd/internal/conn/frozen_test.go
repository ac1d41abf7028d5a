package conn

import (
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	agentv1 "agentplane/gen/agentplane/agent/v1"
)

// freezer is a TCP proxy to a server whose current connections can be
// frozen: from then on nothing goes through them either way (a server
// frozen by SIGSTOP, or cut off without a reset); new connections pass.
type freezer struct {
	lis  net.Listener
	to   string
	stop chan struct{}
	wg   sync.WaitGroup

	mu    sync.Mutex
	pairs []*frozenPair
}

type frozenPair struct {
	a, b   net.Conn
	frozen atomic.Bool
}

// newFreezer proxies to addr until the test ends.
func newFreezer(t *testing.T, addr string) *freezer {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &freezer{lis: lis, to: addr, stop: make(chan struct{})}
	f.wg.Go(f.accept)
	t.Cleanup(f.close)
	return f
}

func (f *freezer) addr() string { return f.lis.Addr().String() }

func (f *freezer) accept() {
	for {
		a, err := f.lis.Accept()
		if err != nil {
			return
		}
		b, err := net.Dial("tcp", f.to)
		if err != nil {
			a.Close()
			continue
		}
		p := &frozenPair{a: a, b: b}
		f.mu.Lock()
		f.pairs = append(f.pairs, p)
		f.mu.Unlock()
		f.wg.Go(func() { f.pipe(p, a, b) })
		f.wg.Go(func() { f.pipe(p, b, a) })
	}
}

// pipe copies src to dst until either ends; once p is frozen, what it
// reads is held until the proxy closes.
func (f *freezer) pipe(p *frozenPair, src, dst net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if p.frozen.Load() {
			<-f.stop
			return
		}
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				err = werr
			}
		}
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				src.Close()
			}
			dst.Close()
			return
		}
	}
}

// freeze freezes the current connections.
func (f *freezer) freeze() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, p := range f.pairs {
		p.frozen.Store(true)
	}
}

func (f *freezer) close() {
	f.lis.Close()
	close(f.stop)
	f.mu.Lock()
	for _, p := range f.pairs {
		p.a.Close()
		p.b.Close()
	}
	f.mu.Unlock()
	f.wg.Wait()
}

// TestCommandOfAFrozenServerWaitsForTheNextStream: the server freezes just
// after sending a command, before it answers agentd's go-ahead request.
// agentd's go-ahead wait (DefaultBeginTimeout) outlasts its keepalive
// (Dial's), so the stream ends first and the command, touching nothing,
// waits for the next stream; sent again there (by the replica that now
// holds the host), it runs, once, and succeeds. It used to fail, "no
// answer within 10s", 5 s before the keepalive gave up on the server.
func TestCommandOfAFrozenServerWaitsForTheNextStream(t *testing.T) {
	if testing.Short() {
		t.Skip("waits out the keepalive (30 s)")
	}
	t.Parallel()
	r := newFakeRunner(false)
	h := newHarness(t, r, t.TempDir(), time.Second, 0)
	proxy := newFreezer(t, h.cc.Target())
	h.dialVia(proxy.addr())
	h.srv.setBegin(silent)
	h.run()
	fs := h.stream()
	fs.push(t, command(25, 1, time.Minute))
	select {
	case <-fs.begins:
	case <-time.After(waitFor):
		t.Fatal("no go-ahead asked")
	}
	proxy.freeze()
	frozen := time.Now()
	h.srv.setBegin(nil) // the next stream's server confirms

	var fs2 *fakeStream
	select {
	case fs2 = <-h.srv.streams:
	case <-time.After(DefaultBeginTimeout + waitFor):
		t.Fatal("agentd did not leave the frozen server")
	}
	t.Logf("agentd left the frozen server after %s", time.Since(frozen).Round(time.Millisecond))
	if n := r.Calls(); n != 0 {
		t.Fatalf("the runner was called %d times without the server's go-ahead", n)
	}
	fs2.push(t, command(25, 1, time.Minute))
	res := fs2.result(t)
	if res.GetOutcome() != agentv1.CommandOutcome_COMMAND_OUTCOME_SUCCEEDED || r.Calls() != 1 {
		t.Fatalf("result %v after %d runner calls, want SUCCEEDED after one", res, r.Calls())
	}
}
