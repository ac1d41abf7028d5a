package metrics

import (
	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
)

// grpcMetrics are go-grpc-middleware's standard server metrics:
// grpc_server_started_total, grpc_server_handled_total (by grpc_code),
// grpc_server_msg_received_total, grpc_server_msg_sent_total and the
// grpc_server_handling_seconds histogram, by grpc_service, grpc_method and
// grpc_type. Their names are the ones every gRPC dashboard knows, so they
// carry no agentplane_ prefix.
type grpcMetrics struct{ sm *grpcprom.ServerMetrics }

func newGRPCMetrics() *grpcMetrics {
	return &grpcMetrics{sm: grpcprom.NewServerMetrics(grpcprom.WithServerHandlingTimeHistogram(
		grpcprom.WithHistogramBuckets([]float64{0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600}),
	))}
}

func (g *grpcMetrics) collectors() []prometheus.Collector { return []prometheus.Collector{g.sm} }

// GRPCOptions are the server options that count every call: pass them to
// rpc.NewServer. They are outermost of the interceptors the server adds,
// so refused and undecodable calls count too.
func (m *Server) GRPCOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(m.grpc.sm.UnaryServerInterceptor()),
		grpc.ChainStreamInterceptor(m.grpc.sm.StreamServerInterceptor()),
	}
}

// InitGRPC sets every method s serves (registered by then) to zero for
// each status code, so that rates and ratios exist before the first call.
func (m *Server) InitGRPC(s *grpc.Server) { m.grpc.sm.InitializeMetrics(s) }
