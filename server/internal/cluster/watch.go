package cluster

import (
	"context"
	"maps"
	"sync"
	"time"

	"agentplane/server/internal/store"
)

// watcher reads where the hosts some waits care about are (one query for
// all of them, each poll interval), and hands each wait the host's latest
// location. It reads only while something waits for a host whose stream
// is not here (skip says which are): a command whose host is connected here
// costs no read (see Router.dispatchHere).
type watcher struct {
	dir   Directory
	every time.Duration
	skip  func(hostID int64) bool

	mu   sync.Mutex
	subs map[int64]map[*sub]struct{}
	run  bool // the loop runs
	stop chan struct{}
	done sync.WaitGroup
}

// sub is one wait on a host's location: ch holds the latest read.
type sub struct {
	host int64
	ch   chan store.HostStream
}

func newWatcher(dir Directory, every time.Duration, skip func(int64) bool) *watcher {
	return &watcher{dir: dir, every: every, skip: skip, subs: map[int64]map[*sub]struct{}{}, stop: make(chan struct{})}
}

// watch subscribes to the host's location; call the result to end it.
func (w *watcher) watch(host int64) (*sub, func()) {
	s := &sub{host: host, ch: make(chan store.HostStream, 1)}
	w.mu.Lock()
	m := w.subs[host]
	if m == nil {
		m = map[*sub]struct{}{}
		w.subs[host] = m
	}
	m[s] = struct{}{}
	if !w.run {
		select {
		case <-w.stop:
		default:
			w.run = true
			w.done.Add(1)
			go w.loop()
		}
	}
	w.mu.Unlock()
	return s, func() {
		w.mu.Lock()
		defer w.mu.Unlock()
		if m := w.subs[host]; m != nil {
			delete(m, s)
			if len(m) == 0 {
				delete(w.subs, host)
			}
		}
	}
}

// close stops the loop.
func (w *watcher) close() {
	w.mu.Lock()
	select {
	case <-w.stop:
	default:
		close(w.stop)
	}
	w.mu.Unlock()
	w.done.Wait()
}

// loop reads the watched hosts' locations each interval; it ends when none
// is watched (watch starts it again) or on close.
func (w *watcher) loop() {
	defer w.done.Done()
	t := time.NewTicker(w.every)
	defer t.Stop()
	for {
		select {
		case <-w.stop:
			return
		case <-t.C:
		}
		w.mu.Lock()
		if len(w.subs) == 0 {
			w.run = false
			w.mu.Unlock()
			return
		}
		ids := make([]int64, 0, len(w.subs))
		got := map[int64]store.HostStream{}
		for id := range w.subs {
			if w.skip(id) {
				got[id] = store.HostStream{} // here: nothing to read, but waits wake
			} else {
				ids = append(ids, id)
			}
		}
		w.mu.Unlock()
		if len(ids) > 0 {
			ctx, cancel := context.WithTimeout(context.Background(), w.every+time.Second)
			read, err := w.dir.HostReplicas(ctx, ids)
			cancel()
			if err != nil {
				continue // the next tick reads again
			}
			maps.Copy(got, read)
		}
		w.mu.Lock()
		for id, hs := range got {
			for s := range w.subs[id] {
				select { // keep the latest only
				case <-s.ch:
				default:
				}
				s.ch <- hs
			}
		}
		w.mu.Unlock()
	}
}
