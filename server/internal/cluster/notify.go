package cluster

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/rs/zerolog"

	replicav1 "agentplane/gen/agentplane/replica/v1"
)

// Notifier tells the other live replicas which tasks changed here
// (ReplicaService.Notify), best effort: the ids noted for a peer are merged
// and sent in one call at most every Every, by one goroutine per peer, at
// most MaxPending ids waiting per peer (more are dropped and counted: the
// peers' slow sweep catches what a lost notification misses).
type Notifier struct {
	peers   *Peers
	every   time.Duration
	max     int
	timeout time.Duration
	log     zerolog.Logger
	send    func(ctx context.Context, peer string, ids []int64) error // tests replace it

	mu     sync.Mutex
	queues map[string]*queue
	closed bool
	wg     sync.WaitGroup
	stop   chan struct{}
}

// queue is what waits for one peer.
type queue struct {
	ids     map[int64]struct{}
	dropped int
	kick    chan struct{} // buffered 1
}

// NotifierConfig configures a Notifier.
type NotifierConfig struct {
	Peers *Peers
	// Every is the least time between two calls to one peer; default 20ms.
	Every time.Duration
	// MaxPending bounds the ids waiting for one peer; default 10,000.
	MaxPending int
	// Timeout bounds one call; default 2s.
	Timeout time.Duration
	Log     zerolog.Logger
}

// NewNotifier returns a Notifier; Close stops it.
func NewNotifier(cfg NotifierConfig) *Notifier {
	n := &Notifier{peers: cfg.Peers, every: cfg.Every, max: cfg.MaxPending, timeout: cfg.Timeout, log: cfg.Log,
		queues: map[string]*queue{}, stop: make(chan struct{})}
	if n.every <= 0 {
		n.every = 20 * time.Millisecond
	}
	if n.max <= 0 {
		n.max = 10_000
	}
	if n.timeout <= 0 {
		n.timeout = 2 * time.Second
	}
	n.send = n.notify
	return n
}

// Changed notes that tasks ids changed here, for every live peer (the
// engine's OnChange). It does not block on the network. A nil Notifier
// (no peers: --insecure) ignores the changes.
func (n *Notifier) Changed(ids []int64) {
	if n == nil || len(ids) == 0 || n.peers == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), n.timeout)
	defer cancel()
	live, err := n.peers.Live(ctx) // cached: at most one read per ListEvery
	if err != nil {
		n.log.Debug().Err(err).Msg("task change not sent to the other replicas: registry unreadable")
		return
	}
	peers := make([]string, 0, len(live))
	for _, r := range live {
		peers = append(peers, r.ID)
	}
	n.enqueue(peers, ids)
}

// enqueue adds ids to each peer's queue, starting its sender if needed.
func (n *Notifier) enqueue(peers []string, ids []int64) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return
	}
	for _, p := range peers {
		q := n.queues[p]
		if q == nil {
			q = &queue{ids: map[int64]struct{}{}, kick: make(chan struct{}, 1)}
			n.queues[p] = q
			n.wg.Add(1)
			go n.run(p, q)
		}
		for _, id := range ids {
			if _, ok := q.ids[id]; !ok && len(q.ids) >= n.max {
				q.dropped++
				continue
			}
			q.ids[id] = struct{}{}
		}
		select {
		case q.kick <- struct{}{}:
		default:
		}
	}
}

// run sends peer's queue, one call at a time, at most one per every. It
// ends with the Notifier, or when the queue stays empty for a minute (a
// peer gone).
func (n *Notifier) run(peer string, q *queue) {
	defer n.wg.Done()
	idle := time.NewTimer(time.Minute)
	defer idle.Stop()
	for {
		select {
		case <-n.stop:
			return
		case <-idle.C:
			n.mu.Lock()
			if len(q.ids) == 0 {
				delete(n.queues, peer)
				n.mu.Unlock()
				return
			}
			n.mu.Unlock()
		case <-q.kick:
		}
		idle.Reset(time.Minute)
		n.mu.Lock()
		ids := make([]int64, 0, len(q.ids))
		for id := range q.ids {
			ids = append(ids, id)
		}
		clear(q.ids)
		dropped := q.dropped
		q.dropped = 0
		n.mu.Unlock()
		if len(ids) == 0 {
			continue
		}
		if dropped > 0 {
			n.log.Warn().Str("peer", peer).Int("dropped", dropped).Msg("too many task changes queued for a replica; its sweep catches the rest")
		}
		slices.Sort(ids)
		began := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), n.timeout)
		if err := n.send(ctx, peer, ids); err != nil {
			n.log.Debug().Err(err).Str("peer", peer).Int("tasks", len(ids)).Msg("notifying a replica of task changes failed; its sweep catches them")
		}
		cancel()
		if wait := n.every - time.Since(began); wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-n.stop:
				t.Stop()
				return
			case <-t.C:
			}
		}
	}
}

func (n *Notifier) notify(ctx context.Context, peer string, ids []int64) error {
	c, err := n.peers.client(ctx, peer)
	if err != nil {
		return err
	}
	_, err = c.Notify(ctx, &replicav1.NotifyRequest{TaskIds: ids})
	return err
}

// Close stops the senders; what waits is dropped.
func (n *Notifier) Close() {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return
	}
	n.closed = true
	close(n.stop)
	n.mu.Unlock()
	n.wg.Wait()
}
