package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/rs/zerolog"

	replicav1 "agentplane/gen/agentplane/replica/v1"
	"agentplane/server/internal/errs"
	"agentplane/server/internal/fleet"
	"agentplane/server/internal/host"
	"agentplane/server/internal/store"
	"agentplane/server/internal/task"
)

// RouterConfig configures a Router.
type RouterConfig struct {
	// Self is this replica's id (fleet.Config.ReplicaID).
	Self  string
	Fleet Fleet
	Dir   Directory
	// Peers reach the other replicas; nil (--insecure): every command runs
	// on this replica's fleet, as with one server.
	Peers *Peers
	// LostAfter: a command fails as "agentd lost" when its host has been
	// on no live replica this long (--agent-lost-after); default 30s.
	LostAfter time.Duration
	// CancelWait bounds how long a canceled command waits for the peer's
	// answer (the fleet's CancelWait, plus a margin); default 7s.
	CancelWait time.Duration
	// Poll is how often the location of a host a command waits for is read
	// while its stream is not here; default 500ms.
	Poll time.Duration
	Log  zerolog.Logger
}

// Router runs agent commands on the replica that holds the host's stream
// (agentop.Agents): here through the fleet, elsewhere through that
// replica's ReplicaService.Dispatch.
//
// When the stream moves while a command waits (its replica died, or agentd
// reconnected elsewhere), the command follows it: the wait here ends
// without a cancel (fleet.ErrMoved), or the peer's stream breaks, and the
// command is dispatched again where the host is now, resumed (that replica
// asks agentd what became of it first: fleet/query.go), until the caller's
// context ends. A command fails as "agentd lost" (fleet.ErrAgentLost) only
// when its host has been on no live replica for LostAfter, or by the
// fleet's own bound while the host is this replica's.
type Router struct {
	cfg   RouterConfig
	watch *watcher
	acks  chan struct{} // bounds the Acks forwarded at once

	mu    sync.Mutex
	moves map[string]time.Time // by dead replica: when one of its hosts was last seen moving (awaitMove)
}

var _ interface {
	WaitConnected(ctx context.Context, hostID int64, wait time.Duration) error
	Dispatch(ctx context.Context, hostID int64, cmd fleet.Command) (fleet.Result, error)
	Ack(hostID, subtaskID int64, attempt int)
} = (*Router)(nil)

// NewRouter returns a Router; Close stops its reads.
func NewRouter(cfg RouterConfig) *Router {
	if cfg.LostAfter <= 0 {
		cfg.LostAfter = 30 * time.Second
	}
	if cfg.CancelWait <= 0 {
		cfg.CancelWait = 7 * time.Second
	}
	if cfg.Poll <= 0 {
		cfg.Poll = 500 * time.Millisecond
	}
	return &Router{cfg: cfg, watch: newWatcher(cfg.Dir, cfg.Poll, cfg.Fleet.Connected), acks: make(chan struct{}, maxAcksForwarded)}
}

// maxAcksForwarded bounds the Acks sent to peers at once; beyond it an Ack
// is dropped (agentd re-sends its result, acknowledged then).
const maxAcksForwarded = 64

// Close stops the location reads.
func (r *Router) Close() { r.watch.close() }

// where a host's stream is.
type where int

const (
	here    where = iota // this replica (or nowhere known: the fleet waits)
	remote               // a live peer
	nowhere              // a replica that is not live: the agent is on its way
)

// locate says where the host's stream is: here when it is connected here,
// its row names this replica (or none), or peers are off.
func (r *Router) locate(ctx context.Context, hostID int64, hs *store.HostStream) (where, string) {
	if r.cfg.Peers == nil || r.cfg.Fleet.Connected(hostID) {
		return here, ""
	}
	if hs == nil {
		got, err := r.cfg.Dir.HostReplicas(ctx, []int64{hostID})
		if err != nil {
			return here, "" // the fleet waits; the watch reads again
		}
		s, ok := got[hostID]
		if !ok {
			return here, ""
		}
		hs = &s
	}
	if hs.Replica == "" || hs.Replica == r.cfg.Self {
		return here, ""
	}
	if _, live, err := r.cfg.Peers.live(ctx, hs.Replica); err != nil || live {
		return remote, hs.Replica
	}
	return nowhere, hs.Replica
}

// Dispatch runs cmd on the host's agentd, wherever its stream is (see
// Router), and returns its result as fleet.Fleet.Dispatch does.
func (r *Router) Dispatch(ctx context.Context, hostID int64, cmd fleet.Command) (fleet.Result, error) {
	var away time.Time // since when the host is on no live replica
	retry := newRetryDelay()
	log := r.cfg.Log.With().Int64("host_id", hostID).Int64("subtask_id", cmd.SubtaskID).Int("attempt", cmd.Attempt).Logger()
	for {
		w, peer := r.locate(ctx, hostID, nil)
		switch w {
		case here:
			away = time.Time{}
			res, err := r.dispatchHere(ctx, hostID, cmd)
			if !errors.Is(err, fleet.ErrMoved) || ctx.Err() != nil {
				return res, err
			}
			log.Info().Msg("host's stream moved to another replica; the command follows it")
		case remote:
			away = time.Time{}
			res, err, again := r.dispatchPeer(ctx, peer, hostID, cmd)
			if !again {
				return res, err
			}
			log.Info().Str("peer", peer).AnErr("reason", err).Msg("command's replica lost or the host's stream moved; dispatching again where the host is")
			if err := retry.wait(ctx); err != nil {
				return fleet.Result{}, err
			}
		case nowhere:
			if away.IsZero() {
				away = time.Now()
				log.Info().Str("replica", peer).Msg("host's replica is not live; waiting for its agentd to reconnect to another")
			}
			if err := r.awaitMove(ctx, hostID, away, peer); err != nil {
				return fleet.Result{}, err
			}
		}
		cmd.Resumed = true
	}
}

// awaitMove waits while the host is on no live replica (its last one,
// dead): until its location changes (or it connects here), ctx ends (its
// cause), or it has been away LostAfter (fleet.ErrAgentLost). A failover
// fails no command by itself: while the dead replica's hosts keep moving to
// live ones (the survivors work through the reconnections, which may take
// longer than LostAfter at thousands of hosts), the bound counts from the
// last such move this replica saw, as the fleet's does after a restart,
// and from the last moment this replica was too busy to take every agent
// connecting (fleet.Fleet.Busy): the host's agentd may be one of those.
func (r *Router) awaitMove(ctx context.Context, hostID int64, away time.Time, dead string) error {
	s, stop := r.watch.watch(hostID)
	defer stop()
	deadline := func() time.Time {
		return later(later(away, r.lastMove(dead)), r.cfg.Fleet.BusySince()).Add(r.cfg.LostAfter)
	}
	for {
		at := deadline()
		t := time.NewTimer(time.Until(at))
		select {
		case <-ctx.Done():
			t.Stop()
			return context.Cause(ctx)
		case <-t.C:
			if at.Before(deadline()) {
				continue // hosts moved, or agents waited to connect, meanwhile
			}
			return fmt.Errorf("%w: on no live replica for %s (its replica %s is not live)", fleet.ErrAgentLost,
				roundDuration(time.Since(away)), dead)
		case hs := <-s.ch:
			t.Stop()
			if w, _ := r.locate(ctx, hostID, &hs); w != nowhere {
				r.moved(dead)
				return nil
			}
		}
	}
}

// moved records that a host of replica dead was seen on a live one.
func (r *Router) moved(dead string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.moves == nil {
		r.moves = map[string]time.Time{}
	}
	r.moves[dead] = time.Now()
	// Bounded: the replicas that died within the last LostAfter.
	for id, at := range r.moves {
		if time.Since(at) > r.cfg.LostAfter {
			delete(r.moves, id)
		}
	}
}

// lastMove is when a host of replica dead was last seen moving to a live
// one; zero if never (or long ago).
func (r *Router) lastMove(dead string) time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.moves[dead]
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// roundDuration rounds d for messages, as the fleet does.
func roundDuration(d time.Duration) time.Duration {
	if d >= time.Second {
		return d.Round(time.Second)
	}
	return d.Round(time.Millisecond)
}

// dispatchHere runs cmd on this replica's fleet. While the host has no
// stream here, its location is read each Poll; once it is on another live
// replica, the fleet's wait ends without a cancel and dispatchHere returns
// an error wrapping fleet.ErrMoved (the agent goes on; the caller follows
// the stream).
func (r *Router) dispatchHere(ctx context.Context, hostID int64, cmd fleet.Command) (fleet.Result, error) {
	if r.cfg.Peers == nil {
		return r.cfg.Fleet.Dispatch(ctx, hostID, cmd)
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	s, stop := r.watch.watch(hostID)
	defer stop()
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case hs := <-s.ch:
				if r.cfg.Fleet.Connected(hostID) {
					continue
				}
				if w, peer := r.locate(ctx, hostID, &hs); w == remote {
					cancel(fmt.Errorf("%w (to %s)", fleet.ErrMoved, peer))
					return
				}
			}
		}
	}()
	return r.cfg.Fleet.Dispatch(ctx, hostID, cmd)
}

// dispatchPeer runs cmd on replica peer. again: the peer could not finish
// it (its stream broke, or the host moved on): the caller locates the host
// and dispatches again. When ctx ends, the peer is asked to cancel the
// command and its answer awaited (CancelWait), unless ctx ended because
// this replica shuts down (task.ErrShutdown): then the agent is left to
// finish, for the next owner of the task.
func (r *Router) dispatchPeer(ctx context.Context, peer string, hostID int64, cmd fleet.Command) (res fleet.Result, err error, again bool) { //nolint:revive // error-return: again qualifies err
	client, err := r.cfg.Peers.client(ctx, peer)
	if err != nil {
		return fleet.Result{}, err, ctx.Err() == nil
	}
	sctx, scancel := context.WithCancel(context.WithoutCancel(ctx))
	defer scancel()
	stream, err := client.Dispatch(sctx)
	if err != nil {
		return fleet.Result{}, err, ctx.Err() == nil
	}
	// The peer stores the command's go-ahead and progress lines: the lines
	// given here before (the caller's "dispatching ...", queued on the
	// writer the fleet shares) are stored first.
	lctx, lcancel := context.WithTimeout(ctx, linesStoredWait)
	err = r.cfg.Fleet.LinesStored(lctx, cmd.SubtaskID)
	lcancel()
	if err != nil && ctx.Err() == nil {
		r.cfg.Log.Warn().Err(err).Int64("host_id", hostID).Int64("subtask_id", cmd.SubtaskID).
			Msg("the command's log lines are not stored yet; it is sent to the peer anyway")
	}
	if err := stream.Send(&replicav1.DispatchRequest{Msg: &replicav1.DispatchRequest_Command{Command: commandToProto(hostID, cmd)}}); err != nil {
		return fleet.Result{}, err, ctx.Err() == nil
	}
	// On ctx's end: cancel through the stream, or (shutdown) just go.
	go func() {
		select {
		case <-sctx.Done():
			return
		case <-ctx.Done():
		}
		if errors.Is(context.Cause(ctx), task.ErrShutdown) {
			scancel()
			return
		}
		_ = stream.Send(&replicav1.DispatchRequest{Msg: &replicav1.DispatchRequest_Cancel{Cancel: &replicav1.Cancel{Reason: context.Cause(ctx).Error()}}})
		_ = stream.CloseSend()
		t := time.NewTimer(r.cfg.CancelWait)
		defer t.Stop()
		select {
		case <-sctx.Done():
		case <-t.C:
			scancel()
		}
	}()
	for {
		m, err := stream.Recv()
		if err != nil {
			if ctx.Err() != nil {
				if errors.Is(err, io.EOF) {
					err = errs.New(errs.ErrUnavailable, "replica "+peer+" ended the dispatch")
				}
				return fleet.Result{}, fmt.Errorf("%w; replica %s did not answer the cancel: %w", context.Cause(ctx), peer, err), false
			}
			return fleet.Result{}, err, true
		}
		d := m.GetDone()
		if d == nil {
			continue // accepted
		}
		if d.GetMoved() && ctx.Err() == nil {
			return fleet.Result{}, fleet.ErrMoved, true
		}
		res, err := ended(d, cmd.SubtaskID, cmd.Attempt)
		if ctx.Err() != nil {
			// Canceled here: the error is this replica's cause, with the
			// result the peer got, as the fleet's Dispatch gives it.
			return res, context.Cause(ctx), false
		}
		return res, err, false
	}
}

// WaitConnected returns nil once the host's agentd is connected to any
// live replica; it gives up as the fleet does (fleet.ErrNotConnected after
// wait, or the restart's bound for a host expected back here).
func (r *Router) WaitConnected(ctx context.Context, hostID int64, wait time.Duration) error {
	if r.cfg.Peers == nil {
		return r.cfg.Fleet.WaitConnected(ctx, hostID, wait)
	}
	began := time.Now()
	for {
		if r.cfg.Fleet.Connected(hostID) || r.connectedElsewhere(ctx, hostID) {
			return nil
		}
		pctx, cancel := context.WithTimeout(ctx, r.cfg.Poll)
		err := r.cfg.Fleet.WaitConnected(pctx, hostID, max(wait-time.Since(began), 0))
		cancel()
		switch {
		case err == nil:
			return nil
		case ctx.Err() != nil:
			return context.Cause(ctx)
		case errors.Is(err, fleet.ErrNotConnected):
			if r.connectedElsewhere(ctx, hostID) {
				return nil
			}
			return err
		}
	}
}

// connectedElsewhere reports whether the host is ONLINE on another live
// replica.
func (r *Router) connectedElsewhere(ctx context.Context, hostID int64) bool {
	got, err := r.cfg.Dir.HostReplicas(ctx, []int64{hostID})
	if err != nil {
		return false
	}
	hs, ok := got[hostID]
	if !ok || hs.Status != host.StatusOnline {
		return false
	}
	w, _ := r.locate(ctx, hostID, &hs)
	return w == remote
}

// Ack tells the host's agentd that a result is stored: through the fleet
// when its stream is here, else through the replica that holds it (in the
// background, bounded; a dropped Ack only makes agentd send its result
// again, acknowledged then).
func (r *Router) Ack(hostID, subtaskID int64, attempt int) {
	if r.cfg.Peers == nil || r.cfg.Fleet.Connected(hostID) {
		r.cfg.Fleet.Ack(hostID, subtaskID, attempt)
		return
	}
	select {
	case r.acks <- struct{}{}:
	default:
		r.cfg.Log.Debug().Int64("host_id", hostID).Int64("subtask_id", subtaskID).Msg("too many acks in flight; dropped")
		return
	}
	go func() {
		defer func() { <-r.acks }()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		w, peer := r.locate(ctx, hostID, nil)
		if w != remote {
			r.cfg.Fleet.Ack(hostID, subtaskID, attempt)
			return
		}
		client, err := r.cfg.Peers.client(ctx, peer)
		if err == nil {
			_, err = client.Ack(ctx, &replicav1.AckRequest{HostId: hostID, SubtaskId: subtaskID, Attempt: int32(attempt)}) //nolint:gosec // G115: attempts are small counts
		}
		if err != nil {
			r.cfg.Log.Debug().Err(err).Int64("host_id", hostID).Str("peer", peer).Msg("forwarding an ack failed; agentd re-sends its result")
		}
	}()
}

// retryDelay spaces the dispatches of a command that follows its host's
// stream: 100 ms, doubling to 2 s.
type retryDelay struct{ next time.Duration }

func newRetryDelay() *retryDelay { return &retryDelay{next: 100 * time.Millisecond} }

func (b *retryDelay) wait(ctx context.Context) error {
	t := time.NewTimer(b.next)
	defer t.Stop()
	b.next = min(2*b.next, 2*time.Second)
	select {
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-t.C:
		return nil
	}
}
