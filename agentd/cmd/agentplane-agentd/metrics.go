package main

import (
	"context"

	"github.com/rs/zerolog"

	agentmetrics "agentplane/agentd/internal/metrics"
	"agentplane/agentd/internal/state"
	"agentplane/internal/metrics"
)

// startMetrics creates the registry this process owns and agentd's
// metrics in it, and serves them on addr unless addr is empty.
// closeMetrics stops the listener.
func startMetrics(ctx context.Context, addr string, st *state.State, log zerolog.Logger) (am *agentmetrics.Agent, closeMetrics func(), err error) {
	reg := metrics.NewRegistry()
	am = agentmetrics.New(reg, st.Outbox)
	closeMetrics, err = metrics.Serve(ctx, addr, reg, log)
	return am, closeMetrics, err
}
