package main

import (
	"context"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"agentplane/internal/metrics"
	srvmetrics "agentplane/server/internal/metrics"
)

// defaultMetricsAddr is --metrics-addr's default: loopback, in the gRPC
// listener's (7070) family.
const defaultMetricsAddr = "127.0.0.1:7090"

const metricsUsage = "serve Prometheus metrics at /metrics on this host:port, a listener of its own without authentication (empty: off; bind it to an address only the scrapers reach)"

// startMetrics creates the registry this process owns and the server's
// metrics in it, and serves them on addr unless addr is empty.
// closeMetrics stops the listener.
func startMetrics(ctx context.Context, addr string, log zerolog.Logger) (reg *prometheus.Registry, ms *srvmetrics.Server, closeMetrics func(), err error) {
	reg = metrics.NewRegistry()
	ms = srvmetrics.New(reg)
	closeMetrics, err = metrics.Serve(ctx, addr, reg, log)
	return reg, ms, closeMetrics, err
}
