package api

import (
	"context"

	"agentplane/server/internal/replica"
)

// Replicas lists the replicas sharing the server's store (replica.Replica).
type Replicas interface {
	// List returns the registered replicas by id, each live when its last
	// heartbeat is within the lease on the database's clock; it checks that
	// the caller holds a viewer role.
	List(ctx context.Context) ([]replica.Info, error)
}
