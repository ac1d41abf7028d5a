package store_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"agentplane/server/internal/errs"
	"agentplane/server/internal/host"
)

// RegisterHosts answers each host as RegisterHost would: existing hosts
// ONLINE on the replica with their epoch raised by one and their reports
// merged, new hosts created at epoch 1, a revoked host refused and left
// as it was, a host named twice given two epochs; more hosts than one
// statement takes. (On MySQL the existing ones are one write: a few
// statements per hundred hosts.)
func TestRegisterHostsIsRegisterHostForEach(t *testing.T) {
	ctx := context.Background()
	s := open(t, t.TempDir())
	at := time.UnixMilli(1_700_000_000_000)
	const known = 250
	before := map[string]host.Host{}
	for i := range known {
		name := fmt.Sprintf("h%d", i)
		h, err := s.RegisterHost(ctx, host.Host{Name: name, Replica: "r0",
			Processes: []host.Process{{Name: "ocp_agentd", PID: 1}}}, at)
		if err != nil {
			t.Fatal(err)
		}
		before[name] = h
	}
	revoked := before["h7"]
	if _, err := s.RevokeHost(ctx, revoked.ID, at); err != nil {
		t.Fatal(err)
	}
	later := at.Add(time.Minute)
	var rs []host.Host
	for i := range known {
		rs = append(rs, host.Host{Name: fmt.Sprintf("h%d", i), InnerIP: "10.0.0.9", AgentdVersion: "v2", Replica: "r1",
			Processes: []host.Process{{Name: "ocp_mgragent", PID: 2}}})
	}
	rs = append(rs, host.Host{Name: "new1", Replica: "r1"}, host.Host{Name: "h3", Replica: "r1"}, host.Host{Name: ""})
	hs, fails := s.RegisterHosts(ctx, rs, later)
	if len(hs) != len(rs) || len(fails) != len(rs) {
		t.Fatalf("%d hosts and %d errors for %d registrations", len(hs), len(fails), len(rs))
	}
	for i, r := range rs[:known] {
		h, err := hs[i], fails[i]
		if r.Name == "h7" {
			if !errors.Is(err, errs.ErrPermissionDenied) {
				t.Fatalf("revoked host: %v, want ErrPermissionDenied", err)
			}
			got, gerr := s.GetHost(ctx, revoked.ID)
			if gerr != nil || got.Epoch != revoked.Epoch || got.Replica != "r0" {
				t.Fatalf("revoked host written: %+v, %v", got, gerr)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%s: %v", r.Name, err)
		}
		want := before[r.Name].Epoch + 1
		if r.Name == "h3" {
			want++ // registered twice: this one or the other got the later epoch
		}
		if h.ID != before[r.Name].ID || h.Status != host.StatusOnline || h.Replica != "r1" || h.InnerIP != "10.0.0.9" ||
			h.AgentdVersion != "v2" || (h.Epoch != before[r.Name].Epoch+1 && h.Epoch != want) || !h.LastSeen.Equal(later) {
			t.Fatalf("%s registered as %+v (before %+v)", r.Name, h, before[r.Name])
		}
		if len(h.Processes) != 2 || h.Processes[0].Name != "ocp_agentd" || h.Processes[0].Status != host.AgentStopped ||
			h.Processes[1].Name != "ocp_mgragent" || h.Processes[1].Status != host.AgentStarted || h.AgentStatus != host.AgentStarted {
			t.Fatalf("%s processes not merged: %+v, agent %s", r.Name, h.Processes, h.AgentStatus)
		}
		stored, err := s.GetHost(ctx, h.ID)
		if err != nil || stored.Epoch < h.Epoch || stored.Status != host.StatusOnline || stored.Replica != "r1" {
			t.Fatalf("%s stored as %+v, %v", r.Name, stored, err)
		}
	}
	if h, err := hs[known], fails[known]; err != nil || h.Epoch != 1 || h.ID == 0 || h.Replica != "r1" {
		t.Fatalf("new host: %+v, %v", h, err)
	}
	h3a, h3b := hs[3], hs[known+1]
	if fails[known+1] != nil || h3a.Epoch == h3b.Epoch || max(h3a.Epoch, h3b.Epoch) != before["h3"].Epoch+2 {
		t.Fatalf("a host registered twice got epochs %d and %d (before %d): %v", h3a.Epoch, h3b.Epoch, before["h3"].Epoch, fails[known+1])
	}
	if !errors.Is(fails[known+2], errs.ErrInvalidArgument) {
		t.Fatalf("a host without a name: %v", fails[known+2])
	}
}
