package store

import (
	"context"
	"sync"
)

// grouper runs many callers' requests of one kind as few calls of a
// function over all of them: a request waits while the group before it
// runs, then runs with every request that came meanwhile (a group commit,
// as the writer's, for a statement that can take many rows). A lone
// request runs at once. At 10,000 hosts a batch's per-host reads and
// writes (a host's state, where its stream is, its lock's release) become
// a few statements of hundreds of rows, not 10,000 round trips each. The
// zero value is ready.
type grouper[R, V any] struct {
	mu      sync.Mutex
	next    *group[R, V] // requests waiting for the running group
	running bool
	runs    int // groups run, for tests
	queued  int // requests queued, for tests
}

type group[R, V any] struct {
	reqs []R
	out  []result[V]
	done chan struct{} // closed once out is set
}

// result is one request's outcome.
type result[V any] struct {
	v   V
	err error
}

// do queues req for run and returns its outcome once its group has run,
// or ctx's error when ctx ends first (the request may still run). run is
// given the group's requests and returns their outcomes in their order;
// it is called from one goroutine at a time.
func (g *grouper[R, V]) do(ctx context.Context, req R, run func([]R) []result[V]) (V, error) {
	g.mu.Lock()
	b := g.next
	if b == nil {
		b = &group[R, V]{done: make(chan struct{})}
		g.next = b
	}
	i := len(b.reqs)
	b.reqs = append(b.reqs, req)
	g.queued++
	if !g.running {
		g.running = true
		go g.loop(run)
	}
	g.mu.Unlock()
	select {
	case <-b.done:
		return b.out[i].v, b.out[i].err
	case <-ctx.Done():
		var zero V
		return zero, ctx.Err()
	}
}

// loop runs the groups until none is waiting.
func (g *grouper[R, V]) loop(run func([]R) []result[V]) {
	for {
		g.mu.Lock()
		b := g.next
		g.next = nil
		if b == nil {
			g.running = false
			g.mu.Unlock()
			return
		}
		g.runs++
		g.mu.Unlock()
		b.out = run(b.reqs)
		close(b.done)
	}
}

// queuedReqs is the number of requests g has been given.
func (g *grouper[R, V]) queuedReqs() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.queued
}

// groupRuns is the number of groups g has run.
func (g *grouper[R, V]) groupRuns() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.runs
}
