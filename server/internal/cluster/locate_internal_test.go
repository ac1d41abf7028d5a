package cluster

import (
	"context"
	"sync"
	"testing"
	"time"

	"agentplane/server/internal/replica"
	"agentplane/server/internal/store"
)

// countingDir answers HostReplicas with replica "r2" for every host,
// counting the calls; the first waits for release.
type countingDir struct {
	release chan struct{}

	mu    sync.Mutex
	calls int
	hosts int
}

func (d *countingDir) HostReplicas(ctx context.Context, ids []int64) (map[int64]store.HostStream, error) {
	d.mu.Lock()
	d.calls++
	first := d.calls == 1
	d.hosts += len(ids)
	d.mu.Unlock()
	if first {
		select {
		case <-d.release:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	got := map[int64]store.HostStream{}
	for _, id := range ids {
		got[id] = store.HostStream{Replica: "r2", Epoch: id}
	}
	return got, nil
}

func (d *countingDir) ListReplicas(context.Context, time.Duration) ([]replica.Info, error) {
	return nil, nil
}

// TestLocationsAreReadInBatches: a burst of single-host location reads
// costs two queries, not one each: the ones asked for while the first
// runs are read together by the next. Each gets its own host's answer.
func TestLocationsAreReadInBatches(t *testing.T) {
	d := &countingDir{release: make(chan struct{})}
	l := newLocations(d, 5*time.Second)
	defer l.close()
	const n = 200
	var wg sync.WaitGroup
	errs := make(chan string, n)
	for id := int64(1); id <= n; id++ {
		wg.Go(func() {
			hs, ok, err := l.read(context.Background(), id)
			if err != nil || !ok || hs.Replica != "r2" || hs.Epoch != id {
				errs <- "wrong answer"
			}
		})
	}
	// Let the first read start, and the rest queue behind it.
	deadline := time.Now().Add(5 * time.Second)
	for {
		l.mu.Lock()
		queued := 0
		for _, chs := range l.pending {
			queued += len(chs)
		}
		l.mu.Unlock()
		d.mu.Lock()
		started := d.calls
		d.mu.Unlock()
		if started == 1 && queued == n-d.hostsRead() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("reads not queued: %d calls, %d pending", started, queued)
		}
		time.Sleep(time.Millisecond)
	}
	close(d.release)
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Fatal(e)
	}
	if d.calls != 2 || d.hosts != n {
		t.Fatalf("%d hosts read in %d queries, want %d in 2", d.hosts, d.calls, n)
	}
}

func (d *countingDir) hostsRead() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.hosts
}

// TestLocationsClose: a read in progress ends at close, and reads after it
// fail at once.
func TestLocationsClose(t *testing.T) {
	d := &countingDir{release: make(chan struct{})}
	l := newLocations(d, time.Minute)
	errc := make(chan error, 1)
	go func() {
		_, _, err := l.read(context.Background(), 1)
		errc <- err
	}()
	for deadline := time.Now().Add(5 * time.Second); d.hostsRead() == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the read did not start")
		}
	}
	l.close()
	if err := <-errc; err == nil {
		t.Fatal("a read in progress at close succeeded")
	}
	if _, _, err := l.read(context.Background(), 2); err == nil {
		t.Fatal("a read after close succeeded")
	}
}
