package metrics

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"agentplane/agentd/internal/proc"
	"agentplane/internal/metrics"
)

func TestAgent(t *testing.T) {
	reg := metrics.NewRegistry()
	depth, depthErr := 2, error(nil)
	a := New(reg, func() (int, error) { return depth, depthErr })

	a.CommandDone("stop", time.Second, nil)
	a.CommandDone("stop", time.Second, &proc.StillRunningError{})
	a.CommandDone("stop", time.Second, fmt.Errorf("stopping: %w", context.Canceled))
	a.CommandDone("start", time.Second, errors.New("bin/ocp_agentctl failed"))
	a.CommandDone("reboot", time.Second, nil)
	for labels, want := range map[[2]string]float64{
		{"stop", "succeeded"}: 1, {"stop", "still_running"}: 1, {"stop", "canceled"}: 1,
		{"start", "failed"}: 1, {"start", "succeeded"}: 0, {metrics.Other, "succeeded"}: 1,
	} {
		if got := testutil.ToFloat64(a.commands.WithLabelValues(labels[0], labels[1])); got != want {
			t.Errorf("commands_total%v = %v, want %v", labels, got, want)
		}
	}

	a.SignalSent("SIGTERM")
	a.SignalSent("SIGTERM")
	a.SignalSent("SIGKILL")
	if got := testutil.ToFloat64(a.signals.WithLabelValues("SIGTERM")); got != 2 {
		t.Errorf("signals_sent_total{SIGTERM} = %v, want 2", got)
	}

	a.ScanDone(time.Millisecond, nil)
	a.ScanDone(time.Millisecond, errors.New("no /proc"))
	var m dto.Metric
	_ = a.scans.Write(&m)
	if got := m.GetHistogram().GetSampleCount(); got != 1 {
		t.Errorf("process_scan_duration_seconds_count = %d, want 1", got)
	}
	if got := testutil.ToFloat64(a.scanFailures); got != 1 {
		t.Errorf("process_scan_failures_total = %v, want 1", got)
	}

	a.OnSession(true) // the first stream: not a reconnect
	a.OnSession(false)
	if got := testutil.ToFloat64(a.connected); got != 0 {
		t.Errorf("connected = %v after the stream ended, want 0", got)
	}
	a.OnSession(true)
	if got := testutil.ToFloat64(a.connected); got != 1 {
		t.Errorf("connected = %v, want 1", got)
	}
	if got := testutil.ToFloat64(a.reconnects); got != 1 {
		t.Errorf("reconnects_total = %v, want 1", got)
	}

	const outbox = "agentplane_agentd_outbox_results"
	if err := testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP agentplane_agentd_outbox_results Command results saved in the state dir's outbox and not yet acknowledged by the server.
# TYPE agentplane_agentd_outbox_results gauge
agentplane_agentd_outbox_results 2
`), outbox); err != nil {
		t.Error(err)
	}
	depthErr = errors.New("permission denied")
	if _, err := reg.Gather(); err == nil || !strings.Contains(err.Error(), "permission denied") {
		t.Errorf("gather with an unreadable outbox: %v, want its error", err)
	}
	depthErr = nil

	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		if strings.HasPrefix(p.Metric, "agentplane_") {
			t.Errorf("promlint: %s: %s", p.Metric, p.Text)
		}
	}
}

var _ prometheus.Collector = (*outboxCollector)(nil)
