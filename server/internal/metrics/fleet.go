package metrics

import (
	"context"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"agentplane/server/internal/agentop"
	"agentplane/server/internal/fleet"
)

type agentMetrics struct {
	connected prometheus.Gauge
	messages  *prometheus.CounterVec
	errors    *prometheus.CounterVec
	dispatch  *prometheus.HistogramVec

	mu       sync.Mutex
	sessions map[*fleet.Session]struct{} // admitted and not yet disconnected
}

func newAgentMetrics() agentMetrics {
	return agentMetrics{
		connected: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Name: "agents_connected",
			Help: "Agent streams admitted by this replica and not yet ended: one per connected agentd (two for a moment while a stream replaces another); sum over the replicas for the cluster.",
		}),
		messages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "agent_stream_messages_total",
			Help: "Messages received on agent streams and handed to the fleet, by kind (hello, heartbeat, progress, result, begin, answer).",
		}, []string{"kind"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "agent_stream_errors_total",
			Help: "Agent stream refusals (at the hello) and messages the fleet failed, each ending its stream, by error kind (invalid_argument, permission_denied, too_many_requests, unavailable, aborted, store_unavailable, internal, ...).",
		}, []string{"kind"}),
		dispatch: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: ns, Name: "dispatch_duration_seconds",
			Help:    "Time from dispatching a command to an agentd to its result (the command's work included), by command (stop_agent, start_agent) and outcome (succeeded, failed, canceled, or error: no result).",
			Buckets: dispatchBuckets,
		}, []string{"command", "outcome"}),
		sessions: map[*fleet.Session]struct{}{},
	}
}

func (a *agentMetrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{a.connected, a.messages, a.errors, a.dispatch}
}

// Fleet is what the agent stream adapter (rpc.Fleet) calls: *fleet.Fleet.
type Fleet interface {
	Connect(ctx context.Context, h fleet.Hello) (*fleet.Session, fleet.Welcome, error)
	Receive(ctx context.Context, s *fleet.Session, m fleet.Inbound) error
	Disconnect(s *fleet.Session)
}

// Fleet returns f counting the agent streams and their messages; hand it
// to the gRPC adapter (rpc.Config.Fleet) in place of f.
func (m *Server) Fleet(f Fleet) Fleet { return observedFleet{Fleet: f, m: &m.agents} }

type observedFleet struct {
	Fleet
	m *agentMetrics
}

func (o observedFleet) Connect(ctx context.Context, h fleet.Hello) (*fleet.Session, fleet.Welcome, error) {
	o.m.messages.WithLabelValues("hello").Inc()
	s, w, err := o.Fleet.Connect(ctx, h)
	if err != nil {
		o.m.errors.WithLabelValues(kindLabel(err)).Inc()
		return s, w, err
	}
	o.m.mu.Lock()
	o.m.sessions[s] = struct{}{}
	o.m.connected.Set(float64(len(o.m.sessions)))
	o.m.mu.Unlock()
	return s, w, nil
}

func (o observedFleet) Receive(ctx context.Context, s *fleet.Session, m fleet.Inbound) error {
	o.m.messages.WithLabelValues(inboundKind(m)).Inc()
	err := o.Fleet.Receive(ctx, s, m)
	if err != nil {
		o.m.errors.WithLabelValues(kindLabel(err)).Inc()
	}
	return err
}

// Disconnect may be called more than once for a session.
func (o observedFleet) Disconnect(s *fleet.Session) {
	o.Fleet.Disconnect(s)
	o.m.mu.Lock()
	delete(o.m.sessions, s)
	o.m.connected.Set(float64(len(o.m.sessions)))
	o.m.mu.Unlock()
}

// inboundKind names the kind of message m is.
func inboundKind(m fleet.Inbound) string {
	switch {
	case m.Heartbeat != nil:
		return "heartbeat"
	case m.Progress != nil:
		return "progress"
	case m.Result != nil:
		return "result"
	case m.Begin != nil:
		return "begin"
	case m.Answer != nil:
		return "answer"
	}
	return "empty"
}

// Agents returns a timing the dispatches made through it; hand it to the
// executors (agentop.Executors) in place of a.
func (m *Server) Agents(a agentop.Agents) agentop.Agents { return timedAgents{Agents: a, m: &m.agents} }

type timedAgents struct {
	agentop.Agents
	m *agentMetrics
}

func (t timedAgents) Dispatch(ctx context.Context, hostID int64, cmd fleet.Command) (fleet.Result, error) {
	began := time.Now()
	r, err := t.Agents.Dispatch(ctx, hostID, cmd)
	t.m.dispatch.WithLabelValues(commandLabel(cmd), outcomeLabel(r, err)).Observe(time.Since(began).Seconds())
	return r, err
}

func commandLabel(c fleet.Command) string {
	switch {
	case c.StopAgent != nil:
		return "stop_agent"
	case c.StartAgent != nil:
		return "start_agent"
	}
	return "other"
}

func outcomeLabel(r fleet.Result, err error) string {
	if err != nil {
		return "error"
	}
	switch r.Outcome {
	case fleet.Succeeded:
		return "succeeded"
	case fleet.Failed:
		return "failed"
	case fleet.Canceled:
		return "canceled"
	}
	return "other"
}
