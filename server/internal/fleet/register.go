package fleet

import (
	"context"
	"sync"
	"time"

	"agentplane/server/internal/host"
)

// BatchRegistry is a Registry that registers many hosts in one write
// (store.Store.RegisterHosts): hs[i] and errs[i] answer hs' i-th host as
// RegisterHost would.
type BatchRegistry interface {
	RegisterHosts(ctx context.Context, rs []host.Host, at time.Time) (hs []host.Host, errs []error)
}

// registrations gathers the registrations of agents connecting at once
// (Connect) into batches: those that come while a batch is written go
// together in the next. A failover's thousands of reconnects then cost a
// few writes, not one each (each several round trips on MySQL, queued on
// the replica's one writer in front of everything else it writes).
type registrations struct {
	mu      sync.Mutex
	pending []*registration
	running bool
}

type registration struct {
	ctx  context.Context
	r    host.Host
	done chan struct{}
	h    host.Host
	err  error
}

// registerWait bounds the write of one batch of registrations.
const registerWait = 30 * time.Second

// register registers r (RegisterHost), in a batch when the Registry can.
// Once its batch is being written it waits for the answer even if ctx
// ends: the host may be ONLINE with a new epoch, and Connect must end the
// session it then installs, as for a registration that outran ctx.
func (f *Fleet) register(ctx context.Context, r host.Host) (host.Host, error) {
	br, ok := f.cfg.Registry.(BatchRegistry)
	if !ok {
		return f.cfg.Registry.RegisterHost(ctx, r, f.cfg.Now())
	}
	g := &registration{ctx: ctx, r: r, done: make(chan struct{})}
	f.regs.mu.Lock()
	f.regs.pending = append(f.regs.pending, g)
	if !f.regs.running {
		f.regs.running = true
		go f.registerBatches(br)
	}
	f.regs.mu.Unlock()
	<-g.done
	return g.h, g.err
}

// registerBatches writes the pending registrations, batch after batch,
// until none is pending. A registration whose ctx ended before its batch
// is not written.
func (f *Fleet) registerBatches(br BatchRegistry) {
	for {
		f.regs.mu.Lock()
		batch := f.regs.pending
		f.regs.pending = nil
		if len(batch) == 0 {
			f.regs.running = false
			f.regs.mu.Unlock()
			return
		}
		f.regs.mu.Unlock()
		var rs []host.Host
		var live []*registration
		for _, g := range batch {
			if err := g.ctx.Err(); err != nil {
				g.err = context.Cause(g.ctx)
				close(g.done)
				continue
			}
			rs = append(rs, g.r)
			live = append(live, g)
		}
		if len(live) == 0 {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), registerWait)
		hs, errs := br.RegisterHosts(ctx, rs, f.cfg.Now())
		cancel()
		for i, g := range live {
			g.h, g.err = hs[i], errs[i]
			close(g.done)
		}
	}
}
