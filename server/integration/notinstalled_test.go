package integration_test

import (
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// An agentd whose --install-home does not exist warns at startup, its host's
// agent shows NOT_INSTALLED, and a stop succeeds (nothing runs) with a log
// that says no OCP Agent is installed there, not that none was running.
func TestAgentNotInstalled(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	home := filepath.Join(tempDir(t), "no", "ocp_agent")
	a := s.startAgentd(t, home, time.Second)
	waitFor(t, 10*time.Second, "agentd's warning about the missing install home", func() bool {
		return strings.Contains(a.proc.log(), "no OCP Agent is installed at "+home) && strings.Contains(a.proc.log(), "--install-home")
	})
	if h := s.getHost(t, a.hostID); h.AgentStatus != "NOT_INSTALLED" {
		t.Errorf("host's agentStatus %q, want NOT_INSTALLED", h.AgentStatus)
	}
	agentStatus := func() string {
		r := s.call(t, http.MethodGet, fmt.Sprintf("/api/v2/compute/hosts/%d/agent", a.hostID), admin, nil)
		var ag struct {
			Status string `json:"status"`
		}
		r.decode(t, &ag)
		return ag.Status
	}
	if st := agentStatus(); st != "NOT_INSTALLED" {
		t.Errorf("agent view status %q, want NOT_INSTALLED", st)
	}

	created := s.stopOK(t, a.hostID)
	tk := s.waitFinal(t, created.ID)
	stop := tk.subtask("Stop all OCP agent processes")
	if tk.Status != "SUCCESSFUL" {
		t.Fatalf("stop ended %s, want SUCCESSFUL (nothing runs)", tk.Status)
	}
	if log := s.subtaskLog(t, created.ID, stop.ID); !strings.Contains(log, "no OCP Agent is installed at "+home) {
		t.Errorf("Stop's log does not say no OCP Agent is installed at %s:\n%s", home, log)
	}
	if st := agentStatus(); st != "NOT_INSTALLED" {
		t.Errorf("agent view status after the stop %q, want NOT_INSTALLED", st)
	}
}
