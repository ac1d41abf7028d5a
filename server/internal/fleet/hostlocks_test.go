package fleet

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"agentplane/server/internal/host"
)

// gatedRegistry holds each RegisterHost until want of them are in at once
// (or gateWait passes), and records the most seen at once.
type gatedRegistry struct {
	*registry
	want int

	mu     sync.Mutex
	in     int
	most   int
	enough chan struct{}
}

const gateWait = 5 * time.Second

func (g *gatedRegistry) RegisterHost(ctx context.Context, h host.Host, at time.Time) (host.Host, error) {
	g.mu.Lock()
	g.in++
	g.most = max(g.most, g.in)
	if g.in == g.want {
		close(g.enough)
	}
	g.mu.Unlock()
	select {
	case <-g.enough:
	case <-time.After(gateWait):
	}
	g.mu.Lock()
	g.in--
	g.mu.Unlock()
	return g.registry.RegisterHost(ctx, h, at)
}

// TestHostsRegisterAtOnce: hosts connecting at once register at once, even
// hosts whose ids the old striped locks (id mod 256) put on one stripe:
// those registered one after another, each behind a whole store write
// group, so that during a failover their Welcomes came after agentd gave up.
func TestHostsRegisterAtOnce(t *testing.T) {
	reg := newRegistry()
	const n = 4
	var ids []int64
	for i := range 3*256 + 1 {
		h, err := reg.RegisterHost(context.Background(), host.Host{Name: fmt.Sprintf("h%d", i+1)}, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		if i%256 == 0 {
			ids = append(ids, h.ID) // 1, 257, 513, 769
		}
	}
	g := &gatedRegistry{registry: reg, want: n, enough: make(chan struct{})}
	f := certFleet(reg)
	f.cfg.Registry = g
	defer f.Close()
	var wg sync.WaitGroup
	errc := make(chan error, n)
	for _, id := range ids {
		wg.Go(func() {
			name := fmt.Sprintf("h%d", id)
			s, _, err := f.Connect(context.Background(), Hello{Identity: &Identity{HostID: id, HostName: name}, HostName: name})
			if err != nil {
				errc <- err
				return
			}
			f.Disconnect(s)
		})
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	if g.most != n {
		t.Fatalf("at most %d of %d hosts registered at once", g.most, n)
	}
}

// batchRegistry registers through RegisterHosts, counting the calls; the
// first waits until want registrations are pending behind it.
type batchRegistry struct {
	*registry
	f    *Fleet
	want int

	mu    sync.Mutex
	calls int
	hosts int
}

func (b *batchRegistry) RegisterHosts(ctx context.Context, rs []host.Host, at time.Time) ([]host.Host, []error) {
	b.mu.Lock()
	b.calls++
	first := b.calls == 1
	b.hosts += len(rs)
	b.mu.Unlock()
	if first {
		for deadline := time.Now().Add(gateWait); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
			b.f.regs.mu.Lock()
			n := len(b.f.regs.pending)
			b.f.regs.mu.Unlock()
			if n == b.want-len(rs) {
				break
			}
		}
	}
	hs, errs := make([]host.Host, len(rs)), make([]error, len(rs))
	for i, r := range rs {
		hs[i], errs[i] = b.registry.RegisterHost(ctx, r, at)
	}
	return hs, errs
}

// TestABurstOfConnectsIsFewWrites: n agents connecting at once are
// registered in two writes (the first, and all that came while it was
// written), each getting its own host and epoch, not in n.
func TestABurstOfConnectsIsFewWrites(t *testing.T) {
	reg := newRegistry()
	const n = 50
	for i := range n {
		if _, err := reg.RegisterHost(context.Background(), host.Host{Name: fmt.Sprintf("h%d", i+1)}, time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	f := certFleet(reg)
	b := &batchRegistry{registry: reg, f: f, want: n}
	f.cfg.Registry = b
	defer f.Close()
	var wg sync.WaitGroup
	errc := make(chan error, n)
	for id := int64(1); id <= n; id++ {
		wg.Go(func() {
			name := fmt.Sprintf("h%d", id)
			s, w, err := f.Connect(context.Background(), Hello{Identity: &Identity{HostID: id, HostName: name}, HostName: name})
			if err != nil {
				errc <- err
				return
			}
			if s.HostID != id || w.Epoch != 2 {
				errc <- fmt.Errorf("host %d: session of host %d, epoch %d", id, s.HostID, w.Epoch)
			}
			f.Disconnect(s)
		})
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	if b.calls != 2 || b.hosts != n {
		t.Fatalf("%d registrations in %d writes, want %d in 2", b.hosts, b.calls, n)
	}
}
