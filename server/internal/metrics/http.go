package metrics

import (
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"agentplane/internal/metrics"
	"agentplane/server/internal/rest"
)

type httpMetrics struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	routes   *metrics.Bounded
}

func newHTTPMetrics() httpMetrics {
	return httpMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "http_requests_total",
			Help: "REST requests answered, by method, route template (e.g. /api/v2/compute/hosts/{hostId}/agent/stop; \"none\" when no route matched, e.g. refused before routing) and status code.",
		}, []string{"method", "route", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: ns, Name: "http_request_duration_seconds",
			Help:    "Time to answer a REST request, by method, route template and status code.",
			Buckets: httpBuckets,
		}, []string{"method", "route", "code"}),
		routes: metrics.NewBounded(maxLabelValues * 2),
	}
}

func (h *httpMetrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{h.requests, h.duration}
}

var _ rest.Observer = (*Server)(nil)

// ObserveRequest implements rest.Observer.
func (m *Server) ObserveRequest(method, route string, code int, took time.Duration) {
	method = methodLabel(method)
	if route == "" {
		route = "none"
	}
	route = m.http.routes.Value(route)
	c := strconv.Itoa(code)
	m.http.requests.WithLabelValues(method, route, c).Inc()
	m.http.duration.WithLabelValues(method, route, c).Observe(took.Seconds())
}

// methodLabel keeps the standard methods; anything a client made up is
// OTHER.
func methodLabel(m string) string {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
		http.MethodDelete, http.MethodOptions, http.MethodConnect, http.MethodTrace:
		return m
	}
	return "OTHER"
}
