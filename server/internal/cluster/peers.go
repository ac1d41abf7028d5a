package cluster

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"

	replicav1 "agentplane/gen/agentplane/replica/v1"
	"agentplane/server/internal/errs"
	"agentplane/server/internal/replica"
)

// PeersConfig configures Peers.
type PeersConfig struct {
	// Self is this replica's id: never dialled.
	Self string
	Dir  Directory
	// Lease is the registry's: a replica whose last heartbeat is older is
	// not live. Default replica.DefaultLease.
	Lease time.Duration
	// TLS dials the peers (pki.Authority.PeerTLSConfig: the replica's own
	// client certificate). Required.
	TLS *tls.Config
	// OnGone, if set, is called when a peer's connection, once up, is lost
	// and dialling its address again is refused: its process is gone (a
	// timeout, which may be a partition, is not enough). Called once each
	// time a connection that was up is lost so, from its own goroutine.
	OnGone func(replicaID string)
	// ListEvery is how long a read of the registry is reused; default 1s.
	ListEvery time.Duration
	// Keepalive pings an idle connection this often and gives up on it
	// KeepaliveTimeout later without an answer, so a frozen peer is
	// noticed within their sum; defaults 10s and 5s (the replicas'
	// servers accept a ping every 5 s at the most: rpc.NewServer).
	KeepaliveTime, KeepaliveTimeout time.Duration
	// DialTimeout bounds a connection attempt; default 3s.
	DialTimeout time.Duration
	// ConnectEvery is how often Peers connects to the live replicas it has
	// no connection to yet (default 5s): a connection held to every peer is
	// what notices its process gone (OnGone) at once, instead of after its
	// lease and a sweep. Negative: only on demand.
	ConnectEvery time.Duration
	Log          zerolog.Logger
}

// Peers holds one connection to each other live replica, dialled by its
// registered address (--advertise-addr) with mutual TLS, made ahead of need
// (ConnectEvery) so that a peer's death is noticed as it happens.
type Peers struct {
	cfg    PeersConfig
	ctx    context.Context // ended by Close: the watchers
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	conns   map[string]*peerConn
	list    []replica.Info // the registry, read at listAt
	listAt  time.Time
	listing chan struct{} // closed when the read in progress ends; nil when none
	listErr error
	closed  bool
}

// peerConn is one connection to a replica.
type peerConn struct {
	id, addr string
	cc       *grpc.ClientConn
	client   replicav1.ReplicaServiceClient
}

// errNotLive: the replica is not live in the registry, or unknown.
var errNotLive = errs.New(errs.ErrUnavailable, "replica not live")

// NewPeers returns Peers; Close ends their connections.
func NewPeers(cfg PeersConfig) *Peers {
	if cfg.Lease <= 0 {
		cfg.Lease = replica.DefaultLease
	}
	if cfg.ListEvery <= 0 {
		cfg.ListEvery = time.Second
	}
	if cfg.KeepaliveTime <= 0 {
		cfg.KeepaliveTime = 10 * time.Second
	}
	if cfg.KeepaliveTimeout <= 0 {
		cfg.KeepaliveTimeout = 5 * time.Second
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 3 * time.Second
	}
	if cfg.ConnectEvery == 0 {
		cfg.ConnectEvery = 5 * time.Second
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &Peers{cfg: cfg, ctx: ctx, cancel: cancel, conns: map[string]*peerConn{}}
	if cfg.ConnectEvery > 0 {
		p.wg.Add(1)
		go p.connectAll()
	}
	return p
}

// connectAll connects to every live peer, at once and then every
// ConnectEvery, until Close: one registry read (shared with the other
// callers, see replicas) per round.
func (p *Peers) connectAll() {
	defer p.wg.Done()
	t := time.NewTicker(p.cfg.ConnectEvery)
	defer t.Stop()
	for {
		if live, err := p.Live(p.ctx); err == nil {
			p.dropNotLive(live)
			for _, r := range live {
				_, _ = p.client(p.ctx, r.ID) // an error: the next round tries again
			}
		}
		select {
		case <-p.ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Close closes the connections and waits for their watchers.
func (p *Peers) Close() {
	p.mu.Lock()
	p.closed = true
	conns := p.conns
	p.conns = map[string]*peerConn{}
	p.mu.Unlock()
	p.cancel()
	for _, c := range conns {
		_ = c.cc.Close()
	}
	p.wg.Wait()
}

// Live returns the other replicas live in the registry (read at most once
// per ListEvery, one read at a time).
func (p *Peers) Live(ctx context.Context) ([]replica.Info, error) {
	all, err := p.replicas(ctx)
	if err != nil {
		return nil, err
	}
	var out []replica.Info
	for _, r := range all {
		if r.Live && r.ID != p.cfg.Self {
			out = append(out, r)
		}
	}
	return out, nil
}

// live returns replica id's registration if it is live.
func (p *Peers) live(ctx context.Context, id string) (replica.Info, bool, error) {
	all, err := p.replicas(ctx)
	if err != nil {
		return replica.Info{}, false, err
	}
	i := slices.IndexFunc(all, func(r replica.Info) bool { return r.ID == id })
	if i < 0 {
		return replica.Info{}, false, nil
	}
	return all[i], all[i].Live, nil
}

func (p *Peers) replicas(ctx context.Context) ([]replica.Info, error) {
	for {
		p.mu.Lock()
		if time.Since(p.listAt) < p.cfg.ListEvery {
			list := p.list
			p.mu.Unlock()
			return list, nil
		}
		if w := p.listing; w != nil {
			p.mu.Unlock()
			select {
			case <-w:
				p.mu.Lock()
				err := p.listErr
				p.mu.Unlock()
				if err != nil {
					return nil, err
				}
				continue
			case <-ctx.Done():
				return nil, context.Cause(ctx)
			}
		}
		w := make(chan struct{})
		p.listing = w
		p.mu.Unlock()
		list, err := p.cfg.Dir.ListReplicas(ctx, p.cfg.Lease)
		p.mu.Lock()
		p.listing, p.listErr = nil, err
		if err == nil {
			p.list, p.listAt = list, time.Now()
		}
		p.mu.Unlock()
		close(w)
		if err != nil {
			return nil, fmt.Errorf("reading the replicas registry: %w", err)
		}
		return list, nil
	}
}

// client returns the connection to replica id, dialled if needed, while
// the registry says it is live; an errNotLive error otherwise.
func (p *Peers) client(ctx context.Context, id string) (replicav1.ReplicaServiceClient, error) {
	info, ok, err := p.live(ctx, id)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("replica %q: %w", id, errNotLive)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, fmt.Errorf("replica %q: shutting down: %w", id, errs.ErrUnavailable)
	}
	if c := p.conns[id]; c != nil {
		if c.addr == info.Addr {
			return c.client, nil
		}
		p.drop(c) // restarted elsewhere
	}
	cc, err := grpc.NewClient(info.Addr,
		grpc.WithTransportCredentials(credentials.NewTLS(p.cfg.TLS)),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: p.cfg.KeepaliveTime, Timeout: p.cfg.KeepaliveTimeout, PermitWithoutStream: true}),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 500 * time.Millisecond},
			MinConnectTimeout: p.cfg.DialTimeout,
		}),
		grpc.WithIdleTimeout(0), // stays connected: a lost peer is noticed (watch)
	)
	if err != nil {
		return nil, fmt.Errorf("replica %q at %s: %w: %w", id, info.Addr, err, errs.ErrUnavailable)
	}
	c := &peerConn{id: id, addr: info.Addr, cc: cc, client: replicav1.NewReplicaServiceClient(cc)}
	p.conns[id] = c
	cc.Connect()
	p.wg.Add(1)
	go p.watch(c)
	p.cfg.Log.Info().Str("peer", id).Str("addr", info.Addr).Msg("dialling replica")
	return c.client, nil
}

// dropNotLive drops the connections that are down to replicas not in live
// (dead past their lease, or deregistered).
func (p *Peers) dropNotLive(live []replica.Info) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for id, c := range p.conns {
		if !slices.ContainsFunc(live, func(r replica.Info) bool { return r.ID == id }) && c.cc.GetState() != connectivity.Ready {
			p.drop(c)
		}
	}
}

// drop closes c and forgets it. Callers hold mu.
func (p *Peers) drop(c *peerConn) {
	if p.conns[c.id] == c {
		delete(p.conns, c.id)
	}
	p.wg.Add(1)
	go func() { // not under mu: Close waits for the connection's goroutines
		defer p.wg.Done()
		_ = c.cc.Close()
	}()
}

// watch follows c's state: once it was up, a failure after which its
// address refuses connections means the peer's process is gone (OnGone,
// once per time it was up). c stays, for the replica's restart at the
// same address; connectAll drops it once the replica is not live.
func (p *Peers) watch(c *peerConn) {
	defer p.wg.Done()
	wasUp := false
	for {
		st := c.cc.GetState()
		switch st {
		case connectivity.Ready:
			if !wasUp {
				p.cfg.Log.Info().Str("peer", c.id).Str("addr", c.addr).Msg("connected to replica")
			}
			wasUp = true
		case connectivity.TransientFailure, connectivity.Idle:
			if wasUp && p.refused(c.addr) {
				p.cfg.Log.Warn().Str("peer", c.id).Str("addr", c.addr).Msg("replica gone: its connection was lost and its address refuses connections")
				// The connection stays: gRPC redials it with backoff, so a
				// replica restarted at the same address is connected again
				// at once, and its next death noticed too. connectAll drops
				// it once the registry no longer has the replica live.
				wasUp = false
				if p.cfg.OnGone != nil && p.ctx.Err() == nil {
					p.cfg.OnGone(c.id)
				}
			}
			if st == connectivity.Idle {
				c.cc.Connect()
			}
		case connectivity.Shutdown:
			return
		}
		if !c.cc.WaitForStateChange(p.ctx, st) {
			return
		}
	}
}

// refused reports whether a TCP connection to addr is refused (nothing
// listens there), as opposed to timing out.
func (p *Peers) refused(addr string) bool {
	ctx, cancel := context.WithTimeout(p.ctx, p.cfg.DialTimeout)
	defer cancel()
	conn, err := new(net.Dialer).DialContext(ctx, "tcp", addr)
	if err == nil {
		_ = conn.Close()
		return false
	}
	return errors.Is(err, syscall.ECONNREFUSED)
}
