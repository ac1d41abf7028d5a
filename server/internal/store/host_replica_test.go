package store_test

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"agentplane/server/internal/errs"
	"agentplane/server/internal/host"
)

// The host's rows follow its stream when it moves between replicas: each
// registration records its replica with the epoch; the OFFLINE write of a
// stream that ended is a compare-and-swap on its epoch, so a stale session's
// end does not undo the newer stream's ONLINE; a starting replica marks
// OFFLINE, and expects back, only its own hosts (and rows from before).
func TestHostReplicaFollowsTheStream(t *testing.T) {
	ctx := context.Background()
	s := open(t, t.TempDir())
	at := time.UnixMilli(1_700_000_000_000)
	onA, err := s.RegisterHost(ctx, host.Host{Name: "h1", Replica: "a"}, at)
	if err != nil {
		t.Fatal(err)
	}
	onB, err := s.RegisterHost(ctx, host.Host{Name: "h1", Replica: "b"}, at)
	if err != nil {
		t.Fatal(err)
	}
	if onA.Replica != "a" || onB.Replica != "b" || onB.Epoch != onA.Epoch+1 {
		t.Fatalf("registrations %+v then %+v", onA, onB)
	}
	hs, err := s.HostReplica(ctx, onB.ID)
	if err != nil || hs.Replica != "b" || hs.Epoch != onB.Epoch || hs.Status != host.StatusOnline {
		t.Fatalf("HostReplica: %+v, %v", hs, err)
	}
	all, err := s.HostReplicas(ctx, []int64{onB.ID, 999})
	if err != nil || len(all) != 1 || all[onB.ID] != hs {
		t.Fatalf("HostReplicas: %+v, %v", all, err)
	}
	// A's session ends after B's began: its OFFLINE changes nothing.
	if wrote, err := s.SetHostOffline(ctx, onA.ID, onA.Epoch); err != nil || wrote {
		t.Fatalf("stale SetHostOffline: wrote %t, %v", wrote, err)
	}
	if h, err := s.GetHost(ctx, onB.ID); err != nil || h.Status != host.StatusOnline || h.Replica != "b" {
		t.Fatalf("after a stale session's end: %+v, %v", h, err)
	}
	if _, err := s.SetHostOffline(ctx, 999, 1); !errors.Is(err, errs.ErrNotFound) {
		t.Fatalf("SetHostOffline of no host: %v, want ErrNotFound", err)
	}
	// Replica a restarts: b's host stays ONLINE and is not a's to expect.
	other, err := s.RegisterHost(ctx, host.Host{Name: "h2", Replica: "a"}, at)
	if err != nil {
		t.Fatal(err)
	}
	old, err := s.RegisterHost(ctx, host.Host{Name: "h3"}, at) // a row from before replicas
	if err != nil {
		t.Fatal(err)
	}
	back, err := s.ExpectedBackOn(ctx, "a", at.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(back)
	if want := []int64{other.ID, old.ID}; !slices.Equal(back, want) {
		t.Fatalf("ExpectedBackOn(a) = %v, want %v", back, want)
	}
	if err := s.MarkReplicaOffline(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	for id, want := range map[int64]host.Status{onB.ID: host.StatusOnline, other.ID: host.StatusOffline, old.ID: host.StatusOffline} {
		if h, err := s.GetHost(ctx, id); err != nil || h.Status != want {
			t.Fatalf("host %d after MarkReplicaOffline(a): %+v, %v; want %s", id, h, err, want)
		}
	}
	// The current stream's end is written.
	if wrote, err := s.SetHostOffline(ctx, onB.ID, onB.Epoch); err != nil || !wrote {
		t.Fatalf("SetHostOffline: wrote %t, %v", wrote, err)
	}
	if h, err := s.GetHost(ctx, onB.ID); err != nil || h.Status != host.StatusOffline {
		t.Fatalf("after the stream's end: %+v, %v", h, err)
	}
}
