package metrics

import "github.com/prometheus/client_golang/prometheus"

// TLSHandshakes is the counter agentplane_tls_handshakes_total{resumed}:
// the gRPC listener's TLS handshakes, full (resumed="false") or resuming a
// session (resumed="true"), read at each scrape from count
// (pki.Resumption.Handshakes).
func TLSHandshakes(count func() (full, resumed int64)) prometheus.Collector {
	return &handshakes{count: count, desc: prometheus.NewDesc(prometheus.BuildFQName(ns, "", "tls_handshakes_total"),
		"TLS handshakes of the gRPC listener, full or resuming a session.", []string{"resumed"}, nil)}
}

type handshakes struct {
	count func() (full, resumed int64)
	desc  *prometheus.Desc
}

func (h *handshakes) Describe(ch chan<- *prometheus.Desc) { ch <- h.desc }

func (h *handshakes) Collect(ch chan<- prometheus.Metric) {
	full, resumed := h.count()
	ch <- prometheus.MustNewConstMetric(h.desc, prometheus.CounterValue, float64(full), "false")
	ch <- prometheus.MustNewConstMetric(h.desc, prometheus.CounterValue, float64(resumed), "true")
}
