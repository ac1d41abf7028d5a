package fleet

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/time/rate"

	"agentplane/server/internal/host"
	"agentplane/server/internal/task"
)

// The fleet's files, by concern:
//
//	fleet.go      the Fleet, its dependencies and configuration, New, Close
//	hoststate.go  what the fleet holds per host (hostState), and per-host locks
//	session.go    one agent stream (Session) and why it ends
//	connect.go    sessions: Connect, the stream bounds, Disconnect, revocations
//	register.go   Connect's registrations, written in batches
//	dispatch.go   commands: Dispatch, the wait for a result, cancels, Ack
//	receive.go    what agents send: Receive, results nobody waits for
//	fence.go      the go-ahead (Begin) and the attempts the server gave up on
//	query.go      a resumed command: ask agentd what became of it (Query) first
//	liveness.go   lost agents, WaitConnected, a server restart (Expect, Serving), a busy server (Busy)
//	report.go     heartbeat and status writes: batched last_seen, OFFLINE retries
//	errors.go     the errors callers tell apart
//	message.go, validate.go  the messages, and the bounds on what agents report

// Registry is what the fleet records about hosts.
type Registry interface {
	// RegisterHost records the host of a new stream and marks it ONLINE;
	// it returns the stored host with its epoch raised by one (Host.Epoch:
	// the stream's fencing token), in the same write.
	RegisterHost(ctx context.Context, h host.Host, at time.Time) (host.Host, error)
	HostSeen(ctx context.Context, id int64, at time.Time, procs []host.Process) error
	// HostsSeen records when each host was last heard from, its reports
	// unchanged since its last HostSeen or RegisterHost; one batch.
	HostsSeen(ctx context.Context, seen map[int64]time.Time) error
	SetHostStatus(ctx context.Context, id int64, st host.Status) error
	// GetHost returns a host; ErrNotFound when there is none.
	GetHost(ctx context.Context, id int64) (*host.Host, error)
	// AttemptLive reports whether (subtask, attempt) of the host is still
	// running, i.e. whether its result may yet be awaited.
	AttemptLive(ctx context.Context, hostID, subtaskID int64, attempt int) (bool, error)
}

// Certs admits a client certificate by its serial (store.Store).
type Certs interface {
	// UseCertificate returns an error wrapping errs.ErrPermissionDenied
	// for a certificate revoked or not issued to its host.
	UseCertificate(ctx context.Context, hostID int64, serial string, notBefore, notAfter, at time.Time) error
}

// Logs receives the progress lines agents stream.
type Logs interface {
	AppendSubtaskLog(ctx context.Context, subtaskID int64, l task.LogLine) error
}

// QueuedLogs is what Logs also implements (task.LogWriter does) for a
// stream's receive loop never to wait while a go-ahead or progress line is
// stored: the fleet queues such a line and goes on. Lines are stored in
// the order they are given (appended or queued), so an attempt's lines
// keep their order; the line that ends the attempt, appended by the
// dispatch's caller once Dispatch returns, comes after them when the
// caller appends through the same writer (task.Config.Logs). Without it
// the fleet waits for each line to be stored.
type QueuedLogs interface {
	// QueueSubtaskLog gives a line to the writer without waiting; failed
	// is called (without blocking) if it could not be stored. It returns
	// an error, and drops the line, when the writer's queue is full.
	QueueSubtaskLog(subtaskID int64, l task.LogLine, failed func(error)) error
	// SubtaskLogStored returns once the subtask's lines given so far are
	// stored (or failed to be), or with ctx's error.
	SubtaskLogStored(ctx context.Context, subtaskID int64) error
}

// Config configures a Fleet.
type Config struct {
	Registry Registry
	// Logs stores go-ahead and progress lines: queued without waiting
	// when it is also a QueuedLogs.
	Logs Logs
	// Certs, when set, admits each stream's client certificate by its
	// serial, under the host's lock (so a revocation either comes first or
	// ends the stream admitted); nil: any certificate the CA signed.
	Certs Certs
	// Token is the bootstrap token a Hello without a client certificate may
	// carry instead (the server runs with --insecure). Empty: every stream
	// needs a client certificate (Hello.Identity).
	Token             string
	HeartbeatInterval time.Duration // asked of agents; default 10s
	// CancelWait bounds how long a dispatch whose context ended waits for the
	// agent's result after sending Cancel; default 5s.
	CancelWait time.Duration
	// QueryWait bounds how long a resumed dispatch waits for agentd's
	// answer to its Query before it sends the command anyway (see
	// query.go); default 5s.
	QueryWait time.Duration
	// LostAfter is how long an agentd may stay silent (no hello, heartbeat,
	// progress or result) before it counts as lost: its session ends with
	// ErrLost, and a dispatch to its host fails with ErrAgentLost unless the
	// host connects again first. Default 30s, or three heartbeat intervals
	// when that is longer.
	//
	// Silence counts only while the server could have heard the agent:
	// for a host expected back after a server restart (Expect), it counts
	// from when the restart's reconnections settle (see Expect); for any
	// host, from when the server was last too busy to take every agent
	// that tried to connect (see Busy).
	LostAfter time.Duration
	// MaxStreamsPerHost bounds the agent streams one host may hold at once,
	// from Connect to Disconnect: the current one and one replacing it.
	// Beyond it Connect fails with ErrTooManyStreams. Default 2.
	MaxStreamsPerHost int
	// MaxReplacementsPerMin bounds how often a host may replace a live
	// stream by a new one (a token bucket of this many per minute, burst
	// the same); beyond it Connect fails with ErrTooManyReplacements and
	// the current stream stays. Default 10.
	MaxReplacementsPerMin int
	Log                   zerolog.Logger
	// Now stamps what is stored (registration, heartbeats); default time.Now.
	// Liveness (LostAfter) always runs on the real monotonic clock.
	Now func() time.Time
	// ReplicaID is this server replica's id, recorded with each stream's
	// registration (host.Host.Replica): where the host's stream is, for the
	// other replicas. "" with one server.
	ReplicaID string
}

// StreamRegistry is what a Registry also implements to fence a stream's
// OFFLINE write by its epoch (store.Store does): with several replicas, a
// session ending here must not mark OFFLINE a host whose newer stream is on
// another replica. Without it, the fleet writes the status as it is.
type StreamRegistry interface {
	// SetHostOffline marks the host OFFLINE if its epoch is still epoch,
	// and reports whether it did.
	SetHostOffline(ctx context.Context, id, epoch int64) (bool, error)
}

// Defaults of the stream bounds (Config).
const (
	DefaultMaxStreamsPerHost     = 2
	DefaultMaxReplacementsPerMin = 10
)

// Fleet tracks agent sessions and routes commands and results.
type Fleet struct {
	cfg Config

	// online serialises, per host, the host's ONLINE write with installing
	// its session, and removing a session (with its OFFLINE write when not
	// fenced by the stream's epoch: a fenced one needs no lock, see
	// Disconnect), so the stored status always ends as the sessions say.
	// Per host: after a server restart 10,000 agents connect at once, each
	// with a write.
	online hostLocks

	regs registrations // Connect's registrations, batched (register.go)

	// busy is when the server was last too busy to take every agent that
	// tried to connect at once (Busy), in Unix nanoseconds; 0 never.
	busy atomic.Int64

	mu      sync.Mutex
	closing bool
	// hosts holds what the fleet knows of each host, by host id (see
	// hostState: made when first needed, dropped when it holds nothing).
	hosts map[int64]*hostState
	// inflight holds the commands Dispatch waits for, by (subtask,
	// attempt); each is also in its host's hostState.calls.
	inflight map[key]*call

	// seenHosts are the hosts markSeen noted since the last flush (each
	// hostState.seenMarked); flushTimer writes them, flushing counts the
	// flushes armed or running.
	seenHosts  []*hostState
	flushTimer *time.Timer
	flushing   sync.WaitGroup
	// writeFailLog and writeFails rate-limit the log of heartbeats and
	// progress lines not stored (writeFailed).
	writeFailLog rate.Sometimes
	writeFails   atomic.Int64
	// offlineHosts are the hosts whose OFFLINE write failed (each
	// hostState.offline), written again by offlineTimer (counted in
	// flushing) until it is stored or the host is back (offlineLater).
	offlineHosts []*hostState
	offlineTimer *time.Timer
	// givenUp holds the attempts Dispatch gave up on without their
	// result, givenUpOrder them oldest first (see fence.go).
	givenUp      map[key]*givenUp
	givenUpOrder []givenUpRef
	givenUpSeq   uint64

	// The restart's bookkeeping (Expect, Serving; the hosts expected back
	// and not back yet are marked in their hostState). back is when the
	// last of them came back; serving is when the server began to accept
	// agents (zero before: servingCh is closed then).
	back      time.Time
	serving   time.Time
	servingCh chan struct{}
}

// New returns a fleet.
func New(cfg Config) *Fleet {
	if cfg.HeartbeatInterval <= 0 {
		cfg.HeartbeatInterval = 10 * time.Second
	}
	if cfg.CancelWait <= 0 {
		cfg.CancelWait = 5 * time.Second
	}
	if cfg.QueryWait <= 0 {
		cfg.QueryWait = DefaultQueryWait
	}
	if cfg.LostAfter <= 0 {
		cfg.LostAfter = max(30*time.Second, 3*cfg.HeartbeatInterval)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.MaxStreamsPerHost <= 0 {
		cfg.MaxStreamsPerHost = DefaultMaxStreamsPerHost
	}
	if cfg.MaxReplacementsPerMin <= 0 {
		cfg.MaxReplacementsPerMin = DefaultMaxReplacementsPerMin
	}
	return &Fleet{
		cfg: cfg, hosts: map[int64]*hostState{}, inflight: map[key]*call{},
		writeFailLog: rate.Sometimes{Interval: writeFailLogEvery},
		givenUp:      map[key]*givenUp{}, servingCh: make(chan struct{}),
	}
}

// Close ends every session with ErrClosing (stopping their watchdogs) and
// refuses new ones, so agent streams end at once when the server shuts down
// (agents reconnect to the next server), and writes the hosts seen since the
// last batch. Their hosts are not written OFFLINE one by one: their agents
// reconnect to another replica (which marks them ONLINE there), and this
// replica marks those still its own OFFLINE when it starts again
// (store.MarkReplicaOffline).
func (f *Fleet) Close() {
	defer f.flushSeen()
	defer f.flushing.Wait()
	f.mu.Lock()
	f.disarm(&f.flushTimer)   // written below
	f.disarm(&f.offlineTimer) // the next server marks every host OFFLINE
	f.closing = true
	var sessions []*Session
	for _, st := range f.hosts {
		if st.session != nil {
			sessions = append(sessions, st.session)
		}
	}
	f.mu.Unlock()
	for _, s := range sessions {
		s.close(ErrClosing)
	}
}

// roundDuration rounds d for messages: to seconds from a second up, else to
// milliseconds.
func roundDuration(d time.Duration) time.Duration {
	if d >= time.Second {
		return d.Round(time.Second)
	}
	return d.Round(time.Millisecond)
}
