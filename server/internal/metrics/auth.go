package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"agentplane/internal/metrics"
	"agentplane/server/internal/auth"
)

// The methods auth.Observer names.
const (
	authPassword  = "password"
	authAccessKey = "access_key"
)

type authMetrics struct {
	failures  *prometheus.CounterVec
	throttled *prometheus.CounterVec
}

func newAuthMetrics() authMetrics {
	return authMetrics{
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "auth_failures_total",
			Help: "Authentication attempts refused for wrong credentials (REST, gRPC and the console), by method (password, access_key).",
		}, []string{"method"}),
		throttled: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "auth_throttled_total",
			Help: "Authentication attempts throttled after repeated failures, by method (password, access_key) and action (delayed: made to wait first; refused: locked out, credentials not checked).",
		}, []string{"method", "action"}),
	}
}

func (a *authMetrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{a.failures, a.throttled}
}

var _ auth.Observer = (*Server)(nil)

// AuthFailed implements auth.Observer.
func (m *Server) AuthFailed(method string) { m.auth.failures.WithLabelValues(authMethod(method)).Inc() }

// AuthThrottled implements auth.Observer.
func (m *Server) AuthThrottled(method string, refused bool) {
	action := "delayed"
	if refused {
		action = "refused"
	}
	m.auth.throttled.WithLabelValues(authMethod(method), action).Inc()
}

func authMethod(m string) string {
	if m != authPassword && m != authAccessKey {
		return metrics.Other
	}
	return m
}
