package main

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"agentplane/server/internal/cluster"
	"agentplane/server/internal/fleet"
	"agentplane/server/internal/pki"
	"agentplane/server/internal/store"
	"agentplane/server/internal/task"
)

// orphanSweepEvery is how often a replica on a shared store looks for the
// hosts of dead replicas still ONLINE (cluster.SweepOrphanHosts): one
// UPDATE, 0.1 queries a second.
const orphanSweepEvery = 10 * time.Second

// startCluster makes this replica one of its store's: a Router runs the
// engine's agent commands where each host's stream is; with TLS, Peers
// dial the other replicas with a replica certificate this replica signs
// itself from the shared CA, and a Notifier tells them of task changes.
// With --insecure there is no certificate to tell a replica from anyone
// else, so the replicas do not talk (peers nil): ReplicaService refuses
// every call and each replica runs only the commands of the hosts
// connected to it (run one replica, or TLS).
func startCluster(c config, self string, ca *pki.Authority, st *store.Store, agents *fleet.Fleet, hooks *engineHooks,
	log zerolog.Logger) (*cluster.Peers, *cluster.Router, *cluster.Notifier) {
	clog := log.With().Str("component", "cluster").Logger()
	hooks.log = clog
	var peers *cluster.Peers
	var notifier *cluster.Notifier
	if !c.insecure {
		peers = cluster.NewPeers(cluster.PeersConfig{
			Self: self, Dir: st, Lease: c.replicaLease, TLS: ca.PeerTLSConfig(cluster.SelfCertificate(ca, self)),
			OnGone: hooks.gone, Log: clog,
		})
		notifier = cluster.NewNotifier(cluster.NotifierConfig{Peers: peers, Log: clog})
	} else {
		clog.Warn().Msg("--insecure: replicas do not talk to each other; each runs only the commands of the agents connected to it")
	}
	router := cluster.NewRouter(cluster.RouterConfig{
		Self: self, Fleet: agents, Dir: st, Peers: peers, LostAfter: c.lostAfter, Log: clog,
	})
	return peers, router, notifier
}

// replicaEngine is the engine's side of the replicas' contract: Changed
// for the tasks a peer changed, Adopt for the tasks of a peer gone.
type replicaEngine interface {
	Changed(ids []int64)
	Adopt(ctx context.Context, from string) (int, error)
}

var _ replicaEngine = (*task.Engine)(nil)

// engineHooks reach the engine once it exists: the cluster's parts are
// made before it (its config takes the Router and the Notifier), and until
// set both hooks do nothing.
type engineHooks struct {
	log    zerolog.Logger
	engine atomic.Pointer[replicaEngine]
}

func (h *engineHooks) set(e replicaEngine) { h.engine.Store(&e) }

// changed is ReplicaService.Notify's hook: the engine's Changed.
func (h *engineHooks) changed(ids []int64) {
	if e := h.engine.Load(); e != nil {
		(*e).Changed(ids)
	}
}

// gone is Peers' OnGone: the engine adopts the tasks of the replica gone
// (the sweep retries what this misses).
func (h *engineHooks) gone(replicaID string) {
	e := h.engine.Load()
	if e == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := (*e).Adopt(ctx, replicaID); err != nil {
		h.log.Error().Err(err).Str("replica", replicaID).Msg("adopting the tasks of a replica gone failed; the sweep retries")
	}
}

// hostsBack returns the hosts whose agentds this starting replica expects
// back (fleet.Fleet.Expect), then marks OFFLINE those it had: only its own
// (hosts.replica_id, or ” for rows from before), the other replicas'
// agentds being theirs; every host on SQLite (alone: its process holds the
// data dir, whatever replica id it ran under before).
func hostsBack(ctx context.Context, st *store.Store, alone bool, self string, seenSince time.Time) ([]int64, error) {
	if alone {
		ids, err := st.ExpectedBack(ctx, seenSince)
		if err != nil {
			return nil, err
		}
		return ids, st.MarkAllOffline(ctx)
	}
	ids, err := st.ExpectedBackOn(ctx, self, seenSince)
	if err != nil {
		return nil, err
	}
	return ids, st.MarkReplicaOffline(ctx, self)
}
