// Package metrics serves a daemon's Prometheus metrics (--metrics-addr) on
// a listener and mux of its own, never on an API listener, from a registry
// the daemon's main owns: NewRegistry gives one with the Go runtime's and
// the process's collectors, and each daemon's adapter package
// (server/internal/metrics, agentd/internal/metrics) registers its own
// metrics in it. Nothing here uses Prometheus' global default registry.
package metrics

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"

	"agentplane/internal/sidehttp"
)

// Namespace prefixes every agentplane metric.
const Namespace = "agentplane"

// Path is where the metrics are served.
const Path = "/metrics"

// NewRegistry returns a registry holding the Go runtime's collector
// (go_*) and the process collector (process_*: CPU, memory, open files).
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return reg
}

// Handler serves reg's metrics in Prometheus' text or protobuf format (as
// the scraper asks), at most 4 scrapes at once; an error collecting one
// metric is logged and the others are served (HTTP 200), so one failing
// collector does not blind the whole scrape.
func Handler(reg *prometheus.Registry, log zerolog.Logger) http.Handler {
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorLog:            promLogger{log},
		ErrorHandling:       promhttp.ContinueOnError,
		MaxRequestsInFlight: 4,
		Timeout:             10 * time.Second,
		Registry:            reg, // promhttp_metric_handler_errors_total
	})
}

// promLogger routes promhttp's errors into zerolog.
type promLogger struct{ log zerolog.Logger }

func (l promLogger) Println(v ...any) {
	l.log.Warn().Str("error", strings.TrimSpace(fmt.Sprintln(v...))).Msg("collecting metrics failed")
}

// Server is a running metrics listener: Addr, Close.
type Server struct{ *sidehttp.Server }

// Start listens on addr (host:port; port 0 picks one) and serves reg's
// metrics at Path until Close; ctx bounds the listen only. Other paths are
// 404. The metrics need no credentials: bind addr to loopback or to a
// network only the scrapers reach.
func Start(ctx context.Context, addr string, reg *prometheus.Registry, log zerolog.Logger) (*Server, error) {
	mux := http.NewServeMux()
	mux.Handle("GET "+Path, Handler(reg, log))
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, WriteTimeout: 30 * time.Second,
		IdleTimeout: 2 * time.Minute, MaxHeaderBytes: 16 << 10}
	side, err := sidehttp.Start(ctx, addr, hs, log, "metrics listener failed")
	if err != nil {
		return nil, err
	}
	s := &Server{side}
	log.Info().Str("metrics_addr", s.Addr()).Msg("serving metrics")
	return s, nil
}

// Serve is Start for a daemon's --metrics-addr: nothing when addr is
// empty (metrics off; they are collected all the same), else the listener.
// stop closes it.
func Serve(ctx context.Context, addr string, reg *prometheus.Registry, log zerolog.Logger) (stop func(), err error) {
	if addr == "" {
		return func() {}, nil
	}
	s, err := Start(ctx, addr, reg, log.With().Str("component", "metrics").Logger())
	if err != nil {
		return nil, fmt.Errorf("--metrics-addr: %w", err)
	}
	return func() { _ = s.Close() }, nil
}
