package store_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"agentplane/server/internal/host"
)

// Every registration (one per agent stream) adds one to the host's epoch,
// in the write that marks it ONLINE, and only to that host's; the epoch is
// read back with the host, and concurrent registrations (grouped by the
// writer) each get their own.
func TestRegisterHostBumpsTheEpochByOnePerStream(t *testing.T) {
	ctx := context.Background()
	s := open(t, t.TempDir())
	at := time.UnixMilli(1_700_000_000_000)
	for want := int64(1); want <= 3; want++ {
		h, err := s.RegisterHost(ctx, host.Host{Name: "h1"}, at)
		if err != nil {
			t.Fatal(err)
		}
		if h.Epoch != want || h.Status != host.StatusOnline {
			t.Fatalf("registration %d: epoch %d, status %s", want, h.Epoch, h.Status)
		}
	}
	other, err := s.RegisterHost(ctx, host.Host{Name: "h2"}, at)
	if err != nil {
		t.Fatal(err)
	}
	if other.Epoch != 1 {
		t.Fatalf("another host's first epoch %d, want 1", other.Epoch)
	}

	const streams = 20
	var wg sync.WaitGroup
	got := make(chan int64, streams)
	for range streams {
		wg.Go(func() {
			h, err := s.RegisterHost(ctx, host.Host{Name: "h1"}, at)
			if err != nil {
				t.Error(err)
				return
			}
			got <- h.Epoch
		})
	}
	wg.Wait()
	close(got)
	seen := map[int64]bool{}
	for e := range got {
		if seen[e] || e < 4 || e > 3+streams {
			t.Fatalf("epoch %d handed out twice or out of range", e)
		}
		seen[e] = true
	}
	h, err := s.GetHost(ctx, other.ID-1)
	if err != nil {
		t.Fatal(err)
	}
	if h.Name != "h1" || h.Epoch != 3+streams {
		t.Fatalf("stored %q with epoch %d, want h1 with %d", h.Name, h.Epoch, 3+streams)
	}
	if err := s.SetHostStatus(ctx, h.ID, host.StatusOffline); err != nil {
		t.Fatal(err)
	}
	if h, err = s.GetHost(ctx, h.ID); err != nil || h.Epoch != 3+streams {
		t.Fatalf("epoch after OFFLINE: %+v, %v", h, err)
	}
}
