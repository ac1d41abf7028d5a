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
