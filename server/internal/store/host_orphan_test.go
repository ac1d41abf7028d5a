package store_test

import (
	"context"
	"testing"
	"time"

	"agentplane/server/internal/host"
	"agentplane/server/internal/replica"
)

// The hosts of a replica that died (no heartbeat for the bound, or no
// registration at all) go OFFLINE; those of a live replica, and rows from
// before replicas, keep their status; a host that reconnected to a live
// replica is not touched.
func TestOrphanHostsOfDeadReplicasGoOffline(t *testing.T) {
	ctx := context.Background()
	s := open(t, t.TempDir())
	if _, err := s.RegisterReplica(ctx, replica.Registration{ID: "live", Addr: "10.0.0.1:7070", Version: "v", Incarnation: "i"}, time.Minute); err != nil {
		t.Fatal(err)
	}
	at := time.UnixMilli(1_700_000_000_000)
	reg := func(name, replicaID string) host.Host {
		t.Helper()
		h, err := s.RegisterHost(ctx, host.Host{Name: name, Replica: replicaID}, at)
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	onLive, onDead, old := reg("h1", "live"), reg("h2", "dead"), reg("h3", "")
	reg("h4", "dead")
	moved := reg("h4", "live") // it reconnected to a live replica
	n, err := s.MarkOrphanHostsOffline(ctx, time.Hour)
	if err != nil || n != 1 {
		t.Fatalf("MarkOrphanHostsOffline = %d, %v; want 1 (h2)", n, err)
	}
	want := map[int64]host.Status{onLive.ID: host.StatusOnline, onDead.ID: host.StatusOffline, old.ID: host.StatusOnline, moved.ID: host.StatusOnline}
	for id, st := range want {
		if h, err := s.GetHost(ctx, id); err != nil || h.Status != st {
			t.Fatalf("host %d: %+v, %v; want %s", id, h, err, st)
		}
	}
	// Once the live replica's last heartbeat is older than the bound, its
	// hosts are orphans too (polled: the bound is on the database's clock).
	deadline := time.Now().Add(10 * time.Second)
	for {
		n, err := s.MarkOrphanHostsOffline(ctx, time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		if n == 2 {
			break
		}
		if n != 0 || time.Now().After(deadline) {
			t.Fatalf("MarkOrphanHostsOffline past the heartbeat = %d; want 2 (h1, h4)", n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if h, err := s.GetHost(ctx, old.ID); err != nil || h.Status != host.StatusOnline {
		t.Fatalf("a row from before replicas: %+v, %v; want ONLINE", h, err)
	}
}
