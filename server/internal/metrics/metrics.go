// Package metrics is the server's Prometheus adapter: it owns the server's
// metrics (names, labels, buckets) and implements the small observer
// interfaces and decorators through which the domain packages report what
// they do, without importing Prometheus themselves:
//
//	tasks.go   task.Store decorator: tasks created and ended, subtask durations
//	fleet.go   the agent streams (rpc.Fleet decorator) and dispatches (agentop.Agents decorator)
//	store.go   store.CommitObserver: the writer's group commits
//	auth.go    auth.Observer: failures and throttling
//	http.go    rest.Observer: REST requests by route template
//	grpc.go    gRPC interceptors with go-grpc-middleware's standard grpc_server_* metrics
//
// Every label takes its values from a fixed set (task and subtask names
// come from the plans, routes are templates, kinds and outcomes are
// enumerations), and each passes through a metrics.Bounded besides: no
// host id, task id, user name or raw path is ever a label.
package metrics

import (
	"context"
	"errors"

	"github.com/prometheus/client_golang/prometheus"

	"agentplane/internal/metrics"
	"agentplane/server/internal/errs"
)

const ns = metrics.Namespace

// maxLabelValues bounds the distinct values of each free-form label (task
// and subtask names, routes).
const maxLabelValues = 64

// Buckets, in seconds.
var (
	// subtaskBuckets cover a prepare step (milliseconds) to a stop that
	// waits out its grace and the subtask timeouts (600 s).
	subtaskBuckets = []float64{0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800}
	// dispatchBuckets: a command's round trip to agentd and its work.
	dispatchBuckets = []float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600}
	// commitBuckets: one group commit (an fsync, or MySQL round trips).
	commitBuckets = []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5}
	// writesBuckets: writes per group, up to the writer's bound (256).
	writesBuckets = []float64{1, 2, 4, 8, 16, 32, 64, 128, 256}
	// httpBuckets: REST requests.
	httpBuckets = []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30}
)

// Server holds the server's metrics, registered in one registry.
type Server struct {
	tasks  taskMetrics
	agents agentMetrics
	store  storeMetrics
	auth   authMetrics
	http   httpMetrics
	grpc   *grpcMetrics
}

// New creates the server's metrics and registers them in reg (the
// registry main owns; see internal/metrics.NewRegistry).
func New(reg prometheus.Registerer) *Server {
	m := &Server{
		tasks:  newTaskMetrics(),
		agents: newAgentMetrics(),
		store:  newStoreMetrics(),
		auth:   newAuthMetrics(),
		http:   newHTTPMetrics(),
		grpc:   newGRPCMetrics(),
	}
	reg.MustRegister(m.tasks.collectors()...)
	reg.MustRegister(m.agents.collectors()...)
	reg.MustRegister(m.store.collectors()...)
	reg.MustRegister(m.auth.collectors()...)
	reg.MustRegister(m.http.collectors()...)
	reg.MustRegister(m.grpc.collectors()...)
	// The series of fixed label sets start at zero, so that their rates
	// exist before the first event.
	for _, k := range errorKinds {
		m.agents.errors.WithLabelValues(k.name)
	}
	m.agents.errors.WithLabelValues("internal")
	for _, method := range []string{authPassword, authAccessKey} {
		m.auth.failures.WithLabelValues(method)
		for _, action := range []string{"delayed", "refused"} {
			m.auth.throttled.WithLabelValues(method, action)
		}
	}
	return m
}

// TasksRunning is the gauge agentplane_tasks_running: count, read at each
// scrape, is the number of tasks this replica owns that are not final
// (task.Engine.Owned). Register it once the engine exists.
func TasksRunning(count func() int) prometheus.Collector {
	return prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: ns, Name: "tasks_running",
		Help: "Tasks this replica owns that are not final (running); sum over the replicas for the cluster.",
	}, func() float64 { return float64(count()) })
}

// LogLinesDropped is the counter agentplane_subtask_log_lines_dropped_total:
// dropped, read at each scrape, counts the subtask log lines the log writer
// dropped because its queue of lines not yet stored was full
// (task.LogWriter.Dropped). Register it once the writer exists.
func LogLinesDropped(dropped func() int64) prometheus.Collector {
	return prometheus.NewCounterFunc(prometheus.CounterOpts{
		Namespace: ns, Name: "subtask_log_lines_dropped_total",
		Help: "Subtask log lines dropped because the queue of lines not yet stored was full.",
	}, func() float64 { return float64(dropped()) })
}

// errorKinds name the error kinds in labels, the first that an error
// wraps; anything else is "internal".
var errorKinds = []struct {
	err  error
	name string
}{
	{context.Canceled, "canceled"},
	{context.DeadlineExceeded, "deadline_exceeded"},
	{errs.ErrInvalidArgument, "invalid_argument"},
	{errs.ErrUnauthenticated, "unauthenticated"},
	{errs.ErrPermissionDenied, "permission_denied"},
	{errs.ErrNotFound, "not_found"},
	{errs.ErrConflict, "conflict"},
	{errs.ErrFailedPrecondition, "failed_precondition"},
	{errs.ErrRollbackProhibited, "failed_precondition"},
	{errs.ErrAborted, "aborted"},
	{errs.ErrUnavailable, "unavailable"},
	{errs.ErrTooManyRequests, "too_many_requests"},
	{errs.ErrStoreUnavailable, "store_unavailable"},
}

// kindLabel names err's kind for a label: one of errorKinds' names, or
// "internal".
func kindLabel(err error) string {
	for _, k := range errorKinds {
		if errors.Is(err, k.err) {
			return k.name
		}
	}
	return "internal"
}
