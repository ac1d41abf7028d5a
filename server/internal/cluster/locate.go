package cluster

import (
	"context"
	"sync"
	"time"

	"agentplane/server/internal/store"
)

// locations reads single hosts' locations (Router.locate) in batches: the
// hosts asked for while a read runs are read together by the next, one
// query (HostReplicas) for all of them. A batch stop of 10,000 hosts, or a
// failover re-dispatching thousands of commands, asks for thousands of
// hosts at once: read one by one, they took every read connection of the
// store and queued for them, and so did the reads of the agents
// reconnecting meanwhile (Connect's host and certificate checks), whose
// Welcomes came late.
type locations struct {
	dir  Directory
	wait time.Duration // bounds one read

	base   context.Context // canceled by close
	cancel context.CancelFunc

	mu      sync.Mutex
	pending map[int64][]chan located // asked for, not read yet
	running bool                     // a read loop runs
	closed  bool
	done    sync.WaitGroup
}

// located is one host's answer: its location, whether the host exists,
// or the read's error.
type located struct {
	hs  store.HostStream
	ok  bool
	err error
}

func newLocations(dir Directory, wait time.Duration) *locations {
	base, cancel := context.WithCancel(context.Background())
	return &locations{dir: dir, wait: wait, base: base, cancel: cancel, pending: map[int64][]chan located{}}
}

// read returns where the host's stream is (ok false: no such host), read
// with the other hosts asked for meanwhile; ctx's error when it ends first.
func (l *locations) read(ctx context.Context, hostID int64) (store.HostStream, bool, error) {
	ch := make(chan located, 1)
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return store.HostStream{}, false, context.Canceled
	}
	l.pending[hostID] = append(l.pending[hostID], ch)
	if !l.running {
		l.running = true
		l.done.Add(1)
		go l.loop()
	}
	l.mu.Unlock()
	select {
	case r := <-ch:
		return r.hs, r.ok, r.err
	case <-ctx.Done():
		return store.HostStream{}, false, ctx.Err()
	}
}

// loop reads what is pending, batch after batch, until nothing is.
func (l *locations) loop() {
	defer l.done.Done()
	for {
		l.mu.Lock()
		batch := l.pending
		if len(batch) == 0 {
			l.running = false
			l.mu.Unlock()
			return
		}
		l.pending = map[int64][]chan located{}
		l.mu.Unlock()
		ids := make([]int64, 0, len(batch))
		for id := range batch {
			ids = append(ids, id)
		}
		ctx, cancel := context.WithTimeout(l.base, l.wait)
		got, err := l.dir.HostReplicas(ctx, ids)
		cancel()
		for id, chs := range batch {
			hs, ok := got[id]
			for _, ch := range chs {
				ch <- located{hs: hs, ok: ok, err: err}
			}
		}
	}
}

// close cancels a read in progress and waits for the loop to end; reads
// after it fail.
func (l *locations) close() {
	l.mu.Lock()
	l.closed = true
	l.mu.Unlock()
	l.cancel()
	l.done.Wait()
}
