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

func TestHostProcessesAreMergedByName(t *testing.T) {
	ctx := context.Background()
	s := open(t, t.TempDir())
	t0 := time.UnixMilli(1_700_000_000_000)
	t1, t2, t3 := t0.Add(10*time.Second), t0.Add(20*time.Second), t0.Add(30*time.Second)
	agentd := host.Process{PID: 10, Name: "ocp_agentd", Exe: "/home/admin/ocp_agent/bin/ocp_agentd", Cmdline: "ocp_agentd -d", User: "admin", CreateTime: t0}
	mgr := host.Process{PID: 11, Name: "ocp_mgragent", Exe: "/home/admin/ocp_agent/bin/ocp_mgragent", Cmdline: "ocp_mgragent", User: "admin", CreateTime: t0}
	mon := host.Process{PID: 12, Name: "ocp_monagent", Exe: "/home/admin/ocp_agent/bin/ocp_monagent", User: "admin", CreateTime: t1}

	h, err := s.RegisterHost(ctx, host.Host{Name: "h1", InnerIP: "10.0.0.1", InstallHome: "/home/admin/ocp_agent",
		Processes: []host.Process{mgr, agentd}}, t0)
	if err != nil {
		t.Fatal(err)
	}
	if h.InstallHome != "/home/admin/ocp_agent" || h.AgentStatus != host.AgentStarted {
		t.Fatalf("registered %+v", h)
	}

	type want struct {
		name   string
		pid    int32
		status host.AgentStatus
		active time.Time
	}
	check := func(step string, status host.AgentStatus, lastSeen time.Time, ws ...want) {
		t.Helper()
		a, err := s.GetHostAgent(ctx, h.ID)
		if err != nil {
			t.Fatalf("%s: %v", step, err)
		}
		if a.HostID != h.ID || a.InnerIP != "10.0.0.1" || a.InstallHome != "/home/admin/ocp_agent" || a.Version != "" ||
			a.Status != status || !a.LastSeen.Equal(lastSeen) || a.CreateTime.IsZero() {
			t.Fatalf("%s: agent %+v", step, a)
		}
		if len(a.Processes) != len(ws) {
			t.Fatalf("%s: processes %+v", step, a.Processes)
		}
		for i, w := range ws {
			p := a.Processes[i]
			if p.Name != w.name || p.PID != w.pid || p.Status != w.status || !p.LastActiveTime.Equal(w.active) {
				t.Fatalf("%s: process %d is %+v, want %+v", step, i, p, w)
			}
		}
	}
	check("registered", host.AgentStarted, t0,
		want{"ocp_agentd", 10, host.AgentStarted, t0}, want{"ocp_mgragent", 11, host.AgentStarted, t0})

	// ocp_agentd restarted with a new pid, ocp_mgragent gone, ocp_monagent new.
	agentd2 := agentd
	agentd2.PID = 20
	if err := s.HostSeen(ctx, h.ID, t1, []host.Process{mon, agentd2}); err != nil {
		t.Fatal(err)
	}
	check("heartbeat", host.AgentStarted, t1, want{"ocp_agentd", 20, host.AgentStarted, t1},
		want{"ocp_mgragent", 11, host.AgentStopped, t0}, want{"ocp_monagent", 12, host.AgentStarted, t1})
	a, _ := s.GetHostAgent(ctx, h.ID)
	if p := a.Processes[1]; p.Exe != mgr.Exe || p.Cmdline != mgr.Cmdline || p.User != "admin" || !p.CreateTime.Equal(t0) {
		t.Fatalf("a stopped process lost its details: %+v", p)
	}

	// An unchanged report (nil) moves only last_seen, and with it the last
	// active time of the processes that run.
	if err := s.HostSeen(ctx, h.ID, t2, nil); err != nil {
		t.Fatal(err)
	}
	check("unchanged heartbeat", host.AgentStarted, t2, want{"ocp_agentd", 20, host.AgentStarted, t2},
		want{"ocp_mgragent", 11, host.AgentStopped, t0}, want{"ocp_monagent", 12, host.AgentStarted, t2})
	t2b := t2.Add(time.Second)
	if err := s.HostsSeen(ctx, map[int64]time.Time{h.ID: t2b, h.ID + 1000: t2b}); err != nil {
		t.Fatal(err)
	}
	if err := s.HostsSeen(ctx, map[int64]time.Time{h.ID: t2}); err != nil { // older: ignored
		t.Fatal(err)
	}
	check("hosts seen in a batch", host.AgentStarted, t2b, want{"ocp_agentd", 20, host.AgentStarted, t2b},
		want{"ocp_mgragent", 11, host.AgentStopped, t0}, want{"ocp_monagent", 12, host.AgentStarted, t2b})

	// Nothing runs: all STOPPED, details kept, the agent STOPPED.
	if err := s.HostSeen(ctx, h.ID, t3, []host.Process{}); err != nil {
		t.Fatal(err)
	}
	check("all stopped", host.AgentStopped, t3, want{"ocp_agentd", 20, host.AgentStopped, t1},
		want{"ocp_mgragent", 11, host.AgentStopped, t0}, want{"ocp_monagent", 12, host.AgentStopped, t1})
	if hh, _ := s.GetHost(ctx, h.ID); hh.AgentStatus != host.AgentStopped || len(hh.Processes) != 3 {
		t.Fatalf("host %+v", hh)
	}

	// Re-registration merges too, and records the install home it reports.
	t4 := t3.Add(time.Minute)
	h2, err := s.RegisterHost(ctx, host.Host{Name: "h1", InnerIP: "10.0.0.1", InstallHome: "/opt/ocp_agent",
		Processes: []host.Process{mgr}}, t4)
	if err != nil {
		t.Fatal(err)
	}
	if h2.ID != h.ID || h2.InstallHome != "/opt/ocp_agent" || h2.AgentStatus != host.AgentStarted || len(h2.Processes) != 3 ||
		h2.Processes[1].Status != host.AgentStarted || !h2.Processes[1].LastActiveTime.Equal(t4) ||
		h2.Processes[0].Status != host.AgentStopped {
		t.Fatalf("re-registered %+v", h2)
	}
}

func TestHostAgentOfAMissingHost(t *testing.T) {
	ctx := context.Background()
	s := open(t, t.TempDir())
	if _, err := s.GetHostAgent(ctx, 99); !errors.Is(err, errs.ErrNotFound) {
		t.Fatalf("GetHostAgent: %v, want ErrNotFound", err)
	}
	if err := s.HostSeen(ctx, 99, time.Now(), []host.Process{}); !errors.Is(err, errs.ErrNotFound) {
		t.Fatalf("HostSeen: %v, want ErrNotFound", err)
	}
}

// HostState is GetHost without the process list.
func TestHostStateMatchesGetHost(t *testing.T) {
	s := open(t, t.TempDir())
	ctx := context.Background()
	h, err := s.RegisterHost(ctx, host.Host{Name: "h1", Processes: []host.Process{{PID: 1, Name: "ocp_agentd"}}}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := s.LockHost(ctx, h.ID, 42); err != nil {
		t.Fatal(err)
	}
	full, err := s.GetHost(ctx, h.ID)
	if err != nil {
		t.Fatal(err)
	}
	brief, err := s.HostState(ctx, h.ID)
	if err != nil {
		t.Fatal(err)
	}
	if brief.Processes != nil || brief.ID != full.ID || brief.Name != full.Name || brief.Status != full.Status ||
		brief.AgentStatus != full.AgentStatus || !brief.LastSeen.Equal(full.LastSeen) || brief.OpTaskID != full.OpTaskID ||
		!brief.RevokeTime.Equal(full.RevokeTime) || brief.OpTaskID != 42 {
		t.Fatalf("HostState %+v, GetHost %+v", brief, full)
	}
	if _, err := s.HostState(ctx, h.ID+100); !errors.Is(err, errs.ErrNotFound) {
		t.Fatalf("missing host: %v", err)
	}
}

// A starting server expects back the hosts ONLINE, holding an operation's
// lock, or seen lately; not those long gone, nor revoked ones.
func TestExpectedBack(t *testing.T) {
	ctx := context.Background()
	s := open(t, t.TempDir())
	now := time.Now()
	reg := func(name string, at time.Time, st host.Status) int64 {
		t.Helper()
		h, err := s.RegisterHost(ctx, host.Host{Name: name}, at)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.SetHostStatus(ctx, h.ID, st); err != nil {
			t.Fatal(err)
		}
		return h.ID
	}
	online := reg("online", now.Add(-time.Hour), host.StatusOnline)
	recent := reg("recent", now.Add(-time.Second), host.StatusOffline)
	reg("gone", now.Add(-time.Hour), host.StatusOffline)
	locked := reg("locked", now.Add(-time.Hour), host.StatusOffline)
	if _, _, err := s.CreateTask(ctx, withSubtasks(plan(locked))); err != nil {
		t.Fatal(err)
	}
	revoked := reg("revoked", now, host.StatusOnline)
	if _, err := s.RevokeHost(ctx, revoked, now); err != nil {
		t.Fatal(err)
	}
	got, err := s.ExpectedBack(ctx, now.Add(-30*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(got)
	if want := []int64{online, recent, locked}; !slices.Equal(got, want) {
		t.Fatalf("expected back %v, want %v", got, want)
	}
}
