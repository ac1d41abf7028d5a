package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"agentplane/server/internal/store"
)

type storeMetrics struct {
	commit prometheus.Histogram
	group  prometheus.Histogram
	writes *prometheus.CounterVec
}

func newStoreMetrics() storeMetrics {
	return storeMetrics{
		commit: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: ns, Name: "store_commit_duration_seconds",
			Help:    "Time the store's writer takes to run and commit one group of writes (one transaction, its retries included).",
			Buckets: commitBuckets,
		}),
		group: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: ns, Name: "store_commit_writes",
			Help:    "Writes per group the store's writer commits in one transaction (the batch size; at most 256).",
			Buckets: writesBuckets,
		}),
		writes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "store_writes_total",
			Help: "Writes through the store's writer, by outcome (committed, failed).",
		}, []string{"outcome"}),
	}
}

func (s *storeMetrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{s.commit, s.group, s.writes}
}

var _ store.CommitObserver = (*Server)(nil)

// ObserveCommit implements store.CommitObserver.
func (m *Server) ObserveCommit(writes, failed int, took time.Duration) {
	m.store.commit.Observe(took.Seconds())
	m.store.group.Observe(float64(writes))
	m.store.writes.WithLabelValues("committed").Add(float64(writes - failed))
	if failed > 0 {
		m.store.writes.WithLabelValues("failed").Add(float64(failed))
	}
}
