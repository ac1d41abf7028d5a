package metrics

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"agentplane/internal/metrics"
)

func TestTLSHandshakes(t *testing.T) {
	full, resumed := int64(3), int64(5)
	reg := metrics.NewRegistry()
	reg.MustRegister(TLSHandshakes(func() (int64, int64) { return full, resumed }))
	want := `
# HELP agentplane_tls_handshakes_total TLS handshakes of the gRPC listener, full or resuming a session.
# TYPE agentplane_tls_handshakes_total counter
agentplane_tls_handshakes_total{resumed="false"} 3
agentplane_tls_handshakes_total{resumed="true"} 5
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "agentplane_tls_handshakes_total"); err != nil {
		t.Fatal(err)
	}
	full = 4
	if err := testutil.GatherAndCompare(reg, strings.NewReader(strings.Replace(want, "} 3", "} 4", 1)), "agentplane_tls_handshakes_total"); err != nil {
		t.Fatal(err)
	}
}
