package store

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"agentplane/server/internal/errs"
	"agentplane/server/internal/host"
)

// TestABurstOfStreamEndsIsFewWrites: many streams ending at once are
// written OFFLINE in fewer groups than calls, each still a compare-and-swap
// on its epoch with its own answer: a host whose epoch moved (its stream
// registered again) stays ONLINE and its caller learns it was not written,
// while the others of the same group go OFFLINE; a host that does not
// exist gets ErrNotFound; a caller whose ctx ended is not written.
func TestABurstOfStreamEndsIsFewWrites(t *testing.T) {
	ctx := context.Background()
	// Over two chunks when one group takes them all; one more host for a
	// caller whose ctx ended.
	const n = 600
	s, regs := groupTestHosts(t, n+1, func(int) string { return "a" })
	at := time.UnixMilli(1_700_000_000_000)
	// Every third host's stream moved to replica b (a newer epoch): its
	// old stream's end must leave it ONLINE. Every third but one also ends
	// its new stream in the same burst: both ends are answered.
	type call struct {
		id, epoch int64
		wrote     bool
		want      error
	}
	var calls []call
	moved := map[int64]bool{}
	for i, h := range regs[:n] {
		switch i % 3 {
		case 0:
			calls = append(calls, call{h.ID, h.Epoch, true, nil})
		case 1, 2:
			b, err := s.RegisterHost(ctx, host.Host{Name: h.Name, Replica: "b"}, at)
			if err != nil || b.Epoch != h.Epoch+1 {
				t.Fatalf("moving %s: %+v, %v", h.Name, b, err)
			}
			calls = append(calls, call{h.ID, h.Epoch, false, nil})
			if i%3 == 2 {
				calls = append(calls, call{h.ID, b.Epoch, true, nil})
			} else {
				moved[h.ID] = true
			}
		}
	}
	calls = append(calls, call{regs[n].ID + 1000, 1, false, errs.ErrNotFound})
	done, cancel := context.WithCancel(ctx)
	cancel()
	// The writer is held until every call is queued: the first group's
	// write waits behind it, and all the others must go in the next.
	hold, held := make(chan struct{}), make(chan struct{})
	holding := make(chan error, 1)
	go func() {
		holding <- s.tx(ctx, func(context.Context, *wtx) error {
			close(held)
			<-hold
			return nil
		})
	}()
	<-held
	var wg sync.WaitGroup
	queued := func(want int) {
		t.Helper()
		for deadline := time.Now().Add(time.Minute); s.offlines.queuedReqs() < want; {
			if time.Now().After(deadline) {
				close(hold)
				t.Fatalf("%d of %d calls queued after a minute", s.offlines.queuedReqs(), want)
			}
			time.Sleep(time.Millisecond)
		}
	}
	for _, c := range calls {
		wg.Go(func() {
			wrote, err := s.SetHostOffline(ctx, c.id, c.epoch)
			if wrote != c.wrote || c.want == nil && err != nil || c.want != nil && !errors.Is(err, c.want) {
				t.Errorf("host %d at epoch %d: wrote %t, %v; want %t, %v", c.id, c.epoch, wrote, err, c.wrote, c.want)
			}
		})
	}
	queued(len(calls))
	// Last, so that the first group (whose write waits) is not it alone.
	wg.Go(func() {
		if _, err := s.SetHostOffline(done, regs[n].ID, regs[n].Epoch); !errors.Is(err, context.Canceled) {
			t.Errorf("SetHostOffline with a done ctx: %v", err)
		}
	})
	queued(len(calls) + 1)
	close(hold)
	if err := <-holding; err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if g := s.offlines.groupRuns(); g != 2 {
		t.Fatalf("%d calls in %d groups, want 2", len(calls)+1, g)
	}
	for _, h := range regs {
		got, err := s.HostState(ctx, h.ID)
		if err != nil {
			t.Fatal(err)
		}
		want := host.StatusOffline
		if moved[h.ID] || h.ID == regs[n].ID {
			want = host.StatusOnline
		}
		if got.Status != want {
			t.Errorf("host %d (%s): %s, want %s", h.ID, h.Name, got.Status, want)
		}
	}
}
