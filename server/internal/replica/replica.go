// Package replica is this server's membership of its store's replicas: at
// start it registers its id and the address its peers reach it on, with
// the fingerprints of the secrets every replica must share (the agent CA,
// the access-key sealing key); while it runs it heartbeats on the
// database's clock; at a clean shutdown it deregisters. Several replicas
// share a store and its fleet (package cluster); a replica whose shared
// secrets differ from the live ones' is refused (the store decides,
// race-free: store/replica.go).
//
// It is domain code: the adapters list the replicas through List.
package replica

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/rs/zerolog"

	"agentplane/server/internal/auth"
	"agentplane/server/internal/errs"
)

// Store is the registry (store.Store). Times and liveness are the
// database's clock.
type Store interface {
	// RegisterReplica registers r, taking over r.ID's row; it refuses
	// (ErrConflict) when one of r.Shared differs from the store's while
	// another is live within lease (*MismatchError). Without others live it records r.Shared and names
	// those it replaced.
	RegisterReplica(ctx context.Context, r Registration, lease time.Duration) (replaced []string, err error)
	// HeartbeatReplica records a heartbeat now: ErrNotFound when the row is
	// gone, ErrConflict when another incarnation took it.
	HeartbeatReplica(ctx context.Context, id, incarnation string) error
	// DeregisterReplica removes the row if incarnation still holds it.
	DeregisterReplica(ctx context.Context, id, incarnation string) error
	// ListReplicas lists the replicas, each live when its heartbeat is
	// within lease.
	ListReplicas(ctx context.Context, lease time.Duration) ([]Info, error)
}

// Defaults of Config.
const (
	// DefaultInterval: an idle replica's registry costs one UPDATE every
	// 2 s.
	DefaultInterval = 2 * time.Second
	// DefaultLease: three heartbeats missed, a replica is not live.
	DefaultLease = 3 * DefaultInterval
	// DeregisterTimeout bounds the deregistration at Close.
	DeregisterTimeout = 5 * time.Second
)

// MaxIDLen bounds a replica id, in bytes.
const MaxIDLen = 128

// The registry's bounds of an address and a version, in bytes (a longer
// version is cut).
const (
	maxAddrLen    = 255
	maxVersionLen = 64
)

// Config configures a Replica.
type Config struct {
	Store Store
	// ID is the replica's id (ValidateID), Addr where its peers reach its
	// gRPC listener, Version its version.
	ID, Addr, Version string
	// Shared are the fingerprints of the secrets every replica shares.
	Shared []Shared
	// Interval between heartbeats; default DefaultInterval.
	Interval time.Duration
	// Lease: a replica whose last heartbeat is older is not live; default
	// DefaultLease. It must exceed Interval.
	Lease time.Duration
	Log   zerolog.Logger
}

// Replica is this server's registration, heartbeating until Close.
type Replica struct {
	cfg         Config
	incarnation string
	stop        context.CancelFunc
	done        chan struct{} // closed when the loop has returned
	closeOnce   sync.Once
}

// ValidateID checks a replica id: 1 to MaxIDLen bytes of printable UTF-8.
func ValidateID(id string) error {
	if id == "" || len(id) > MaxIDLen {
		return fmt.Errorf("replica id %q: must be 1 to %d bytes: %w", id, MaxIDLen, errs.ErrInvalidArgument)
	}
	for _, r := range id {
		if !unicode.IsPrint(r) || r == utf8.RuneError && !utf8.ValidString(id) {
			return fmt.Errorf("replica id %q: only printable characters: %w", id, errs.ErrInvalidArgument)
		}
	}
	return nil
}

// Start registers the replica (failing when the store refuses it, or when
// ctx ends first) and heartbeats until Close: a server shutting down stays
// live until it deregisters, however long its shutdown takes.
func Start(ctx context.Context, cfg Config) (*Replica, error) {
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.Lease <= 0 {
		cfg.Lease = DefaultLease
	}
	if cfg.Lease <= cfg.Interval {
		return nil, fmt.Errorf("replica lease %s must exceed the heartbeat interval %s", cfg.Lease, cfg.Interval)
	}
	if err := ValidateID(cfg.ID); err != nil {
		return nil, err
	}
	if len(cfg.Addr) > maxAddrLen {
		return nil, fmt.Errorf("advertised address %q: longer than %d bytes: %w", cfg.Addr, maxAddrLen, errs.ErrInvalidArgument)
	}
	if len(cfg.Version) > maxVersionLen {
		cfg.Version = strings.ToValidUTF8(cfg.Version[:maxVersionLen], "")
	}
	var b [16]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand)
	r := &Replica{cfg: cfg, incarnation: hex.EncodeToString(b[:]), done: make(chan struct{})}
	if err := r.register(ctx); err != nil {
		return nil, err
	}
	cfg.Log.Info().Str("replica_id", cfg.ID).Str("advertise_addr", cfg.Addr).Dur("lease", cfg.Lease).Msg("replica registered")
	ctx, r.stop = context.WithCancel(context.WithoutCancel(ctx))
	go r.loop(ctx)
	return r, nil
}

func (r *Replica) register(ctx context.Context) error {
	replaced, err := r.cfg.Store.RegisterReplica(ctx, Registration{
		ID: r.cfg.ID, Addr: r.cfg.Addr, Version: r.cfg.Version, Incarnation: r.incarnation, Shared: r.cfg.Shared,
	}, r.cfg.Lease)
	if err != nil {
		return fmt.Errorf("registering replica %q: %w", r.cfg.ID, err)
	}
	for _, name := range replaced {
		for _, sh := range r.cfg.Shared {
			if sh.Name == name {
				r.cfg.Log.Warn().Str("setting", name).Msgf("%s differs from the one this store's replicas used before; "+
					"no other replica is live, so this one is now the store's", sh.Source)
			}
		}
	}
	return nil
}

// Close stops the heartbeats and deregisters the replica, within
// DeregisterTimeout.
func (r *Replica) Close() {
	r.closeOnce.Do(func() {
		r.stop()
		<-r.done
		ctx, cancel := context.WithTimeout(context.Background(), DeregisterTimeout)
		defer cancel()
		if err := r.cfg.Store.DeregisterReplica(ctx, r.cfg.ID, r.incarnation); err != nil {
			r.cfg.Log.Warn().Err(err).Str("replica_id", r.cfg.ID).Msg("deregistering the replica failed; its lease will expire")
			return
		}
		r.cfg.Log.Info().Str("replica_id", r.cfg.ID).Msg("replica deregistered")
	})
}

// List lists the store's replicas (for a caller holding a viewer role),
// each live when its last heartbeat is within the lease.
func (r *Replica) List(ctx context.Context) ([]Info, error) {
	if err := requireViewer(ctx); err != nil {
		return nil, err
	}
	return r.cfg.Store.ListReplicas(ctx, r.cfg.Lease)
}

// requireViewer: any viewer role (a manager's or ADMIN implies one).
func requireViewer(ctx context.Context) error {
	err := auth.Require(ctx, auth.RoleHostViewer)
	if errors.Is(err, errs.ErrPermissionDenied) && auth.Require(ctx, auth.RoleTaskViewer) == nil {
		return nil
	}
	return err
}
