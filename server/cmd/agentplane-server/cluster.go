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
)

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

// engineHooks are the engine's side of the replicas' contract (package
// task, with wip/ownership): Changed(ids) for the tasks a peer changed,
// Adopt(ctx, replicaID) for a peer gone. They are found on the engine by
// their methods, so either side builds without the other; without them,
// both hooks do nothing.
type engineHooks struct {
	log       zerolog.Logger
	changedFn atomic.Pointer[func([]int64)]
	adoptFn   atomic.Pointer[func(context.Context, string) error]
}

func (h *engineHooks) set(engine any) {
	if e, ok := engine.(interface{ Changed(ids []int64) }); ok {
		f := e.Changed
		h.changedFn.Store(&f)
	}
	switch e := engine.(type) {
	case interface {
		Adopt(ctx context.Context, replicaID string) error
	}:
		f := e.Adopt
		h.adoptFn.Store(&f)
	case interface {
		Adopt(ctx context.Context, replicaID string)
	}:
		f := func(ctx context.Context, id string) error { e.Adopt(ctx, id); return nil }
		h.adoptFn.Store(&f)
	}
}

// changed is ReplicaService.Notify's hook: the engine's Changed.
func (h *engineHooks) changed(ids []int64) {
	if f := h.changedFn.Load(); f != nil {
		(*f)(ids)
	}
}

// gone is Peers' OnGone: the engine adopts the tasks of the replica gone.
func (h *engineHooks) gone(replicaID string) {
	if f := h.adoptFn.Load(); f != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := (*f)(ctx, replicaID); err != nil {
			h.log.Error().Err(err).Str("replica", replicaID).Msg("adopting the tasks of a replica gone failed; the sweep retries")
		}
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
