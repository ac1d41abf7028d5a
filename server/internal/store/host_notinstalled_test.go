package store_test

import (
	"context"
	"testing"
	"time"

	"agentplane/server/internal/host"
)

// A host whose agentd found no install home is NOT_INSTALLED while nothing
// runs there: through reports of no process and a stop's Finish; a running
// base process, or a registration with an install home, ends it.
func TestHostNotInstalled(t *testing.T) {
	ctx := context.Background()
	s := open(t, t.TempDir())
	at := time.UnixMilli(1_700_000_000_000)
	status := func(want host.AgentStatus) {
		t.Helper()
		h, err := s.GetHost(ctx, 1)
		if err != nil {
			t.Fatal(err)
		}
		if h.AgentStatus != want {
			t.Fatalf("agent status %s, want %s", h.AgentStatus, want)
		}
	}
	reg := host.Host{Name: "bare", InstallHome: "/nowhere", AgentStatus: host.AgentNotInstalled}
	h, err := s.RegisterHost(ctx, reg, at)
	if err != nil || h.ID != 1 || h.AgentStatus != host.AgentNotInstalled {
		t.Fatalf("registered %+v, %v; want host 1 NOT_INSTALLED", h, err)
	}
	if err := s.HostSeen(ctx, 1, at.Add(time.Second), []host.Process{}); err != nil {
		t.Fatal(err)
	}
	status(host.AgentNotInstalled)
	if err := s.FinishAgentOperation(ctx, 1, 7, host.AgentStopped); err != nil {
		t.Fatal(err)
	}
	status(host.AgentNotInstalled)
	if _, err := s.RegisterHost(ctx, reg, at.Add(2*time.Second)); err != nil {
		t.Fatal(err)
	}
	status(host.AgentNotInstalled)
	running := []host.Process{{PID: 42, Name: "ocp_agentd", Status: host.AgentStarted}}
	if err := s.HostSeen(ctx, 1, at.Add(3*time.Second), running); err != nil {
		t.Fatal(err)
	}
	status(host.AgentStarted)

	// Registered again with an install home: STOPPED once nothing runs.
	if _, err := s.RegisterHost(ctx, host.Host{Name: "bare", InstallHome: "/home/admin/ocp_agent"}, at.Add(4*time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := s.FinishAgentOperation(ctx, 1, 8, host.AgentStopped); err != nil {
		t.Fatal(err)
	}
	status(host.AgentStopped)
}
