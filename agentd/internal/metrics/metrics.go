// Package metrics is agentd's Prometheus adapter: it owns agentd's metrics
// and implements proc.Observer (commands, signals, scans) and conn's
// OnSession hook (connection, reconnects); the outbox depth is read from
// the state dir at each scrape. Every label takes a value from a fixed set.
package metrics

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"agentplane/agentd/internal/proc"
	"agentplane/internal/metrics"
)

const (
	ns        = metrics.Namespace
	subsystem = "agentd"
)

// Agent holds agentd's metrics, registered in one registry.
type Agent struct {
	commands     *prometheus.CounterVec
	commandTime  *prometheus.HistogramVec
	signals      *prometheus.CounterVec
	scans        prometheus.Histogram
	scanFailures prometheus.Counter
	connected    prometheus.Gauge
	reconnects   prometheus.Counter

	mu      sync.Mutex
	streams int // streams welcomed so far
}

// New creates agentd's metrics and registers them in reg (the registry
// main owns; see internal/metrics.NewRegistry). outbox, read at each
// scrape, counts the results not yet acknowledged (state.State.Outbox).
func New(reg prometheus.Registerer, outbox func() (int, error)) *Agent {
	a := &Agent{
		commands: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: subsystem, Name: "commands_total",
			Help: "Commands run on the OCP Agent's base processes, by kind (stop, start) and outcome (succeeded; still_running: processes survived the stop; canceled: cut short by a cancel, a timeout or shutdown; failed).",
		}, []string{"kind", "outcome"}),
		commandTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: ns, Subsystem: subsystem, Name: "command_duration_seconds",
			Help:    "Time a command on the base processes took, by kind (stop, start).",
			Buckets: []float64{0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600},
		}, []string{"kind"}),
		signals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: subsystem, Name: "signals_sent_total",
			Help: "Signals sent to the OCP Agent's base processes, by signal (SIGTERM, SIGKILL).",
		}, []string{"signal"}),
		scans: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: ns, Subsystem: subsystem, Name: "process_scan_duration_seconds",
			Help:    "Time a full scan of /proc for the base processes took.",
			Buckets: []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1},
		}),
		scanFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Subsystem: subsystem, Name: "process_scan_failures_total",
			Help: "Full scans of /proc that failed.",
		}),
		connected: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Subsystem: subsystem, Name: "connected",
			Help: "1 while agentd's stream to a server is welcomed, else 0.",
		}),
		reconnects: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Subsystem: subsystem, Name: "reconnects_total",
			Help: "Streams to a server welcomed after the first one: each is a reconnection after a stream ended.",
		}),
	}
	for _, kind := range []string{"stop", "start"} {
		a.commandTime.WithLabelValues(kind)
		for _, o := range []string{"succeeded", "still_running", "canceled", "failed"} {
			a.commands.WithLabelValues(kind, o)
		}
	}
	for _, sig := range []string{"SIGTERM", "SIGKILL"} {
		a.signals.WithLabelValues(sig)
	}
	reg.MustRegister(a.commands, a.commandTime, a.signals, a.scans, a.scanFailures, a.connected, a.reconnects,
		&outboxCollector{read: outbox, desc: prometheus.NewDesc(prometheus.BuildFQName(ns, subsystem, "outbox_results"),
			"Command results saved in the state dir's outbox and not yet acknowledged by the server.", nil, nil)})
	return a
}

var _ proc.Observer = (*Agent)(nil)

// ScanDone implements proc.Observer.
func (a *Agent) ScanDone(took time.Duration, err error) {
	if err != nil {
		a.scanFailures.Inc()
		return
	}
	a.scans.Observe(took.Seconds())
}

// SignalSent implements proc.Observer.
func (a *Agent) SignalSent(sig string) {
	if sig != "SIGTERM" && sig != "SIGKILL" {
		sig = metrics.Other
	}
	a.signals.WithLabelValues(sig).Inc()
}

// CommandDone implements proc.Observer.
func (a *Agent) CommandDone(kind string, took time.Duration, err error) {
	if kind != "stop" && kind != "start" {
		kind = metrics.Other
	}
	a.commands.WithLabelValues(kind, outcome(err)).Inc()
	a.commandTime.WithLabelValues(kind).Observe(took.Seconds())
}

func outcome(err error) string {
	switch {
	case err == nil:
		return "succeeded"
	case errors.Is(err, proc.ErrStillRunning):
		return "still_running"
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return "canceled"
	}
	return "failed"
}

// OnSession is conn.Config.OnSession: connected true once a stream is
// welcomed, false when it ends.
func (a *Agent) OnSession(connected bool) {
	if !connected {
		a.connected.Set(0)
		return
	}
	a.connected.Set(1)
	a.mu.Lock()
	a.streams++
	again := a.streams > 1
	a.mu.Unlock()
	if again {
		a.reconnects.Inc()
	}
}

// outboxCollector reads the outbox depth at each scrape; a failure to read
// it is the scrape's error for that metric alone.
type outboxCollector struct {
	read func() (int, error)
	desc *prometheus.Desc
}

func (c *outboxCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *outboxCollector) Collect(ch chan<- prometheus.Metric) {
	n, err := c.read()
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.desc, err)
		return
	}
	ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(n))
}
