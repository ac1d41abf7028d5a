// Package cluster makes the server replicas of one store act as one fleet:
// an agent command runs on the replica that holds the host's agentd stream,
// whichever replica owns the task (Router, the agentop.Agents the engine's
// executors use), through ReplicaService, the replicas' own gRPC service
// (Server), which only replicas may call (pki.ReplicaCertificate). Peers
// dials the other replicas; a Notifier tells them, coalesced, which tasks
// changed here.
//
// The files, by concern:
//
//	cluster.go   what the package needs: the local fleet, the directory
//	peers.go     the connections to the other replicas, and a peer gone
//	router.go    Router: Dispatch, WaitConnected, Ack on any replica
//	watch.go     where the hosts' streams are, read while commands wait
//	server.go    ReplicaService: Dispatch, Ack, Notify, and who may call
//	notify.go    Notifier: task changes to the other replicas, coalesced
//	orphans.go   the hosts of a dead replica whose agentds did not come back
//	convert.go   commands, results and errors to and from protobuf
package cluster

import (
	"context"
	"time"

	"agentplane/server/internal/fleet"
	"agentplane/server/internal/replica"
	"agentplane/server/internal/store"
)

// Fleet is the replica's own fleet (fleet.Fleet): the agentds whose
// streams are here.
type Fleet interface {
	Dispatch(ctx context.Context, hostID int64, cmd fleet.Command) (fleet.Result, error)
	WaitConnected(ctx context.Context, hostID int64, wait time.Duration) error
	Ack(hostID, subtaskID int64, attempt int)
	// Connected reports whether the host's agentd has a live stream here.
	Connected(hostID int64) bool
	// LinesStored returns once the lines of the subtask given so far to
	// the fleet's log writer are stored, or with ctx's error: those the
	// fleet queued (go-ahead, progress) and, as the server shares that
	// writer with the engine, the engine's ("dispatching ...").
	LinesStored(ctx context.Context, subtaskID int64) error
	// BusySince is when this replica was last too busy to take every agent
	// connecting (fleet.Fleet.Busy); zero if never.
	BusySince() time.Time
}

// Directory says where hosts' streams are and which replicas are live
// (store.Store).
type Directory interface {
	// HostReplicas returns, for the hosts that exist, the replica their
	// newest stream was registered on, with its epoch and the host's status.
	HostReplicas(ctx context.Context, ids []int64) (map[int64]store.HostStream, error)
	// ListReplicas lists the registered replicas, each live when its last
	// heartbeat is within lease (on the database's clock).
	ListReplicas(ctx context.Context, lease time.Duration) ([]replica.Info, error)
}

var (
	_ Fleet     = (*fleet.Fleet)(nil)
	_ Directory = (*store.Store)(nil)
)
