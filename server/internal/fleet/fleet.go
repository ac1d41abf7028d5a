package fleet

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/time/rate"

	"agentplane/server/internal/auth"
	"agentplane/server/internal/errs"
	"agentplane/server/internal/host"
	"agentplane/server/internal/task"
)

// Registry is what the fleet records about hosts.
type Registry interface {
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

// Config configures a Fleet.
type Config struct {
	Registry Registry
	Logs     Logs
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
	// LostAfter is how long an agentd may stay silent (no hello, heartbeat,
	// progress or result) before it counts as lost: its session ends with
	// ErrLost, and a dispatch to its host fails with ErrAgentLost unless the
	// host connects again first. Default 30s, or three heartbeat intervals
	// when that is longer.
	//
	// Silence counts only while the server could have heard the agent:
	// for a host expected back after a server restart (Expect), it counts
	// from when the restart's reconnections settle (see Expect).
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
}

// Fleet tracks agent sessions and routes commands and results.
type Fleet struct {
	cfg Config

	// online serialises, per host, the host's ONLINE write with installing
	// its session, and removing a session with its OFFLINE write, so the
	// stored status always ends as the sessions say. Per host: after a
	// server restart 10,000 agents connect at once, each with a write.
	online hostLocks

	mu       sync.Mutex
	closing  bool
	sessions map[int64]*Session // by host id
	inflight map[key]*call
	// hostCalls indexes inflight by host id, so a connecting host finds
	// its commands without a scan of every host's.
	hostCalls map[int64]map[key]*call
	// joined holds, by host id, a channel closed (and removed) when a
	// session of that host is installed; made by the first waiter.
	joined map[int64]chan struct{}
	// heard is when each host's agentd was last heard from in this process
	// (monotonic clock), by host id. It outlives the host's sessions.
	heard map[int64]time.Time
	// pending holds, by host id, the cancels that found no session to take
	// them, oldest first; Connect delivers them. At most maxPendingCancels
	// per host.
	pending map[int64][]Cancel
	// streams counts, by host id, the sessions Connect opened that
	// Disconnect has not yet ended (at most MaxStreamsPerHost).
	streams map[int64]int
	// replacements is, by host id, the token bucket Connect takes from
	// when it replaces a live session.
	replacements map[int64]*rate.Limiter
	// seen is when each host sent an unchanged report since the last
	// flush, by host id (markSeen); flushTimer writes it, flushing counts
	// the flushes armed or running.
	seen       map[int64]time.Time
	flushTimer *time.Timer
	flushing   sync.WaitGroup
	// writeFailLog and writeFails rate-limit the log of heartbeats and
	// progress lines not stored (writeFailed).
	writeFailLog rate.Sometimes
	writeFails   atomic.Int64
	// offline holds the hosts whose OFFLINE write failed, written again by
	// offlineTimer (counted in flushing) until it is stored or the host
	// is back (offlineLater).
	offline      map[int64]bool
	offlineTimer *time.Timer
	// givenUp holds the attempts Dispatch gave up on without their
	// result, givenUpOrder them oldest first (see fence.go).
	givenUp      map[key]*givenUp
	givenUpOrder []givenUpRef
	givenUpSeq   uint64

	// The restart's bookkeeping (Expect, Serving). expected holds the
	// hosts expected back and not back yet; back is when the last of them
	// came back; serving is when the server began to accept agents (zero
	// before: servingCh is closed then).
	expected  map[int64]bool
	back      time.Time
	serving   time.Time
	servingCh chan struct{}
}

// maxPendingCancels bounds the cancels remembered for one host, so a host
// that keeps failing cannot grow memory; the oldest is dropped first (its
// command's own timeout still stops the agent's work). Half the session
// buffer, so Connect can queue them all with the commands it re-sends.
const maxPendingCancels = sessionBuffer / 2

// call is a dispatched command waiting for its result.
type call struct {
	hostID   int64
	cmd      Command
	ctx      context.Context // Dispatch's: once done, agentd may not begin cmd
	result   chan Result     // buffered 1; later duplicates are dropped
	canceled bool            // given up: Cancel sent or pending; never (re)send nor grant cmd; guarded by Fleet.mu
	// abandoned: Dispatch returns without reading result, so a result
	// that comes now is a late one (see fence.go); guarded by Fleet.mu,
	// as is sending to result.
	abandoned bool
}

// New returns a fleet.
func New(cfg Config) *Fleet {
	if cfg.HeartbeatInterval <= 0 {
		cfg.HeartbeatInterval = 10 * time.Second
	}
	if cfg.CancelWait <= 0 {
		cfg.CancelWait = 5 * time.Second
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
		cfg: cfg, sessions: map[int64]*Session{}, inflight: map[key]*call{}, hostCalls: map[int64]map[key]*call{},
		joined: map[int64]chan struct{}{}, heard: map[int64]time.Time{}, pending: map[int64][]Cancel{},
		streams: map[int64]int{}, replacements: map[int64]*rate.Limiter{}, seen: map[int64]time.Time{},
		writeFailLog: rate.Sometimes{Interval: writeFailLogEvery}, offline: map[int64]bool{},
		givenUp:  map[key]*givenUp{},
		expected: map[int64]bool{}, servingCh: make(chan struct{}),
	}
}

// markSeen notes that a host sent a report unchanged since the last one
// stored. The notes are written in one batch a heartbeat interval after the
// first one since the last batch (a timer, no goroutine while idle), and by
// Close.
//
// An unchanged heartbeat is not written on its own: at 10,000 hosts that
// would be 1,000 transactions a second. last_seen is therefore up to one
// interval old; liveness (LostAfter) runs on the in-memory clock, not on it.
func (f *Fleet) markSeen(hostID int64, at time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.seen[hostID] = at
	if f.flushTimer == nil && !f.closing {
		f.flushing.Add(1)
		f.flushTimer = time.AfterFunc(f.cfg.HeartbeatInterval, func() {
			defer f.flushing.Done()
			f.flushSeen()
		})
	}
}

// flushSeen writes the hosts noted by markSeen.
func (f *Fleet) flushSeen() {
	f.mu.Lock()
	seen := f.seen
	f.seen = map[int64]time.Time{}
	f.flushTimer = nil
	f.mu.Unlock()
	if len(seen) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), f.cfg.HeartbeatInterval)
	defer cancel()
	if err := f.cfg.Registry.HostsSeen(ctx, seen); err != nil {
		f.cfg.Log.Error().Err(err).Int("hosts", len(seen)).Msg("recording hosts seen failed")
	}
}

// Session is one connected agentd stream. The adapter sends what Out yields
// and stops when Done is closed (the session was replaced, lost or closed).
//
// Each session has a watchdog: a timer (no goroutine) that fires LostAfter
// after the host was last heard from and ends the session with ErrLost if
// nothing came since, else re-arms for the rest. It is stopped when the
// session ends, so nothing outlives a closed session or a closed Fleet.
type Session struct {
	HostID int64
	serial string // the client certificate's; "" without one
	out    chan Outbound
	done   chan struct{}
	once   sync.Once
	err    error       // why it ended; set before done is closed
	lost   *time.Timer // the watchdog; set before the session is published
	// disconnected is set by the first Disconnect, which releases the
	// session's place in Fleet.streams; guarded by Fleet.mu.
	disconnected bool
	// reported is the process list last stored for the host by this
	// session (the Hello's, then each changed heartbeat's). Only Receive
	// uses it, which the adapter calls from one goroutine per session.
	reported []host.Process
}

// sessionBuffer bounds the messages queued for one agent; an agent that
// falls this far behind is disconnected.
const sessionBuffer = 64

// Out yields the messages to send to the agent.
func (s *Session) Out() <-chan Outbound { return s.out }

// Done is closed when the session ends; Err then says why.
func (s *Session) Done() <-chan struct{} { return s.done }

// Err says why the session ended: ErrReplaced, ErrSlowAgent, ErrLost,
// ErrRevoked, ErrClosing, or ErrDisconnected (possibly wrapped). It is nil while Done is
// open.
func (s *Session) Err() error {
	select {
	case <-s.done:
		return s.err
	default:
		return nil
	}
}

func (s *Session) close(reason error) {
	s.once.Do(func() {
		s.err = reason
		close(s.done)
		if s.lost != nil {
			s.lost.Stop()
		}
	})
}

// send queues m without blocking; a full queue ends the session.
func (s *Session) send(m Outbound) bool {
	select {
	case <-s.done:
		return false
	default:
	}
	select {
	case s.out <- m:
		return true
	default:
		s.close(ErrSlowAgent)
		return false
	}
}

// Reasons a session ends.
var (
	ErrReplaced     = errors.New("replaced by a newer stream of the same host")
	ErrSlowAgent    = fmt.Errorf("agent reads too slowly: more than %d messages queued", sessionBuffer)
	ErrClosing      = fmt.Errorf("server shutting down: %w", errs.ErrUnavailable)
	ErrDisconnected = errors.New("disconnected")
	ErrLost         = errors.New("agentd silent for longer than the lost bound")
	ErrRevoked      = fmt.Errorf("host revoked: %w", errs.ErrPermissionDenied)
	// ErrCertRevoked ends the session of a certificate revoked: its host
	// enrolled again, or an admin revoked it.
	ErrCertRevoked = fmt.Errorf("client certificate revoked (the host enrolled again, or an admin revoked it): %w", errs.ErrPermissionDenied)
)

// Defaults of the stream bounds (Config).
const (
	DefaultMaxStreamsPerHost     = 2
	DefaultMaxReplacementsPerMin = 10
)

// Why Connect refuses a host over its stream bounds; both are
// errs.ErrTooManyRequests errors (RESOURCE_EXHAUSTED on gRPC).
var (
	ErrTooManyStreams      = fmt.Errorf("too many concurrent agent streams for the host: %w", errs.ErrTooManyRequests)
	ErrTooManyReplacements = fmt.Errorf("the host replaces its agent stream too often: %w", errs.ErrTooManyRequests)
)

// ErrAgentLost is why a dispatch fails when the host's agentd has not been
// heard from for LostAfter and has no session.
var ErrAgentLost = errors.New("agentd lost")

// ErrNotConnected is why WaitConnected gives up.
var ErrNotConnected = errors.New("agentd not connected")

// Connect authenticates and registers an agent, and opens its session. A
// previous session of the same host is closed. The cancels pending for the
// host, then the commands waiting for it, are queued on the new session.
//
// With an Identity (a verified client certificate), the host is the
// certificate's: a Hello naming another host id (when non-zero) or another
// host name is refused with ErrPermissionDenied, as is a certificate of a
// host that is revoked or gone. Without one, the Hello must carry the
// bootstrap token, and the fleet must have one; else ErrUnauthenticated.
// ErrPermissionDenied for a revoked host; ErrInvalidArgument for a Hello
// without a host name or over the bounds on reports (MaxFieldBytes and
// the like).
//
// A host holds at most MaxStreamsPerHost sessions between Connect and
// Disconnect, and replaces a live session at most MaxReplacementsPerMin
// times a minute; beyond either, Connect fails with an error wrapping
// ErrTooManyStreams or ErrTooManyReplacements and the host's current
// session stays. A certificate's host is checked before anything is
// written; a bootstrap Hello's once it is registered.
func (f *Fleet) Connect(ctx context.Context, h Hello) (*Session, Welcome, error) {
	if h.Identity == nil {
		if f.cfg.Token == "" {
			return nil, Welcome{}, fmt.Errorf("agent stream without a client certificate: enroll agentd with a join token: %w", errs.ErrUnauthenticated)
		}
		if !auth.CheckAgentToken(f.cfg.Token, h.Token) {
			return nil, Welcome{}, fmt.Errorf("agent bootstrap token: %w", errs.ErrUnauthenticated)
		}
	}
	if h.HostName == "" {
		return nil, Welcome{}, fmt.Errorf("hello without a host name: %w", errs.ErrInvalidArgument)
	}
	if err := checkHello(h); err != nil {
		return nil, Welcome{}, err
	}
	// Held from the identity check to the session's install, and by Revoke:
	// a revocation either comes first and is seen here, or ends the session
	// installed here.
	// A bootstrap Hello's host is known only once registered: it holds
	// every host's lock (--insecure is for labs, not fleets).
	var unlock func()
	if h.Identity != nil {
		unlock = f.online.host(h.Identity.HostID)
	} else {
		unlock = f.online.all()
	}
	defer unlock()
	if h.Identity != nil {
		if err := f.checkIdentity(ctx, h); err != nil {
			f.cfg.Log.Warn().Err(err).Int64("host_id", h.Identity.HostID).Int64("hello_host_id", h.HostID).
				Str("hello_host_name", h.HostName).Msg("agent stream refused")
			return nil, Welcome{}, err
		}
		if f.cfg.Certs != nil {
			id := h.Identity
			if err := f.cfg.Certs.UseCertificate(ctx, id.HostID, id.Serial, id.NotBefore, id.NotAfter, f.cfg.Now()); err != nil {
				f.cfg.Log.Warn().Err(err).Int64("host_id", h.Identity.HostID).Str("serial", h.Identity.Serial).Msg("agent stream refused")
				return nil, Welcome{}, err
			}
		}
		if err := f.admit(h.Identity.HostID); err != nil {
			return nil, Welcome{}, err
		}
	}
	reg, err := f.cfg.Registry.RegisterHost(ctx, host.Host{
		ID: h.HostID, Name: h.HostName, InnerIP: h.InnerIP, MachineID: h.MachineID,
		AgentdVersion: h.AgentdVersion, InstallHome: h.InstallHome, Processes: h.Processes,
	}, f.cfg.Now())
	if err != nil {
		return nil, Welcome{}, fmt.Errorf("registering host %q: %w", h.HostName, err)
	}
	if h.Identity != nil && reg.ID != h.Identity.HostID {
		// Names are unique and never change, so this cannot happen; if it
		// did, the stream must not act for another host.
		return nil, Welcome{}, fmt.Errorf("host %q registered as %d, certificate names host %d: %w", h.HostName, reg.ID, h.Identity.HostID, errs.ErrPermissionDenied)
	}
	if h.Identity == nil {
		if err := f.admit(reg.ID); err != nil {
			f.restoreOffline(reg.ID)
			return nil, Welcome{}, err
		}
	}
	s := &Session{HostID: reg.ID, out: make(chan Outbound, sessionBuffer), done: make(chan struct{}), reported: h.Processes}
	if h.Identity != nil {
		s.serial = h.Identity.Serial
	}
	f.mu.Lock()
	if f.closing {
		f.mu.Unlock()
		return nil, Welcome{}, ErrClosing
	}
	s.lost = time.AfterFunc(f.cfg.LostAfter, func() { f.watch(s) })
	old := f.sessions[reg.ID]
	f.sessions[reg.ID] = s
	f.streams[reg.ID]++
	f.heard[reg.ID] = time.Now()
	if f.expected[reg.ID] {
		delete(f.expected, reg.ID)
		f.back = f.heard[reg.ID]
	}
	if ch := f.joined[reg.ID]; ch != nil {
		close(ch)
		delete(f.joined, reg.ID)
	}
	// Queued under mu, so nothing dispatched meanwhile overtakes them: a
	// pending cancel goes out before any command of the same (subtask,
	// attempt).
	cancels := f.pending[reg.ID]
	delete(f.pending, reg.ID)
	for _, c := range cancels {
		s.send(Outbound{Cancel: &c})
	}
	resent := 0
	for _, c := range f.hostCalls[reg.ID] {
		if !c.canceled {
			cmd := c.cmd
			s.send(Outbound{Command: &cmd})
			resent++
		}
	}
	f.mu.Unlock()
	if old != nil {
		old.close(ErrReplaced)
	}
	f.cfg.Log.Info().Int64("host_id", reg.ID).Str("host_name", reg.Name).Int("resent", resent).
		Int("cancels", len(cancels)).Msg("agent connected")
	return s, Welcome{HostID: reg.ID, HeartbeatInterval: f.cfg.HeartbeatInterval}, nil
}

// admit checks the host's stream bounds for a new session, taking a
// replacement token when the host has a live session. Callers hold the host's online lock,
// so that nothing connects or disconnects until the session is installed.
func (f *Fleet) admit(hostID int64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if n := f.streams[hostID]; n >= f.cfg.MaxStreamsPerHost {
		f.cfg.Log.Warn().Int64("host_id", hostID).Int("streams", n).Msg("agent stream refused: too many streams")
		return fmt.Errorf("host %d holds %d streams, at most %d allowed; retry later: %w", hostID, n, f.cfg.MaxStreamsPerHost, ErrTooManyStreams)
	}
	if f.live(hostID) == nil {
		return nil
	}
	l := f.replacements[hostID]
	if l == nil {
		n := f.cfg.MaxReplacementsPerMin
		l = rate.NewLimiter(rate.Limit(float64(n)/60), n)
		f.replacements[hostID] = l
	}
	if !l.Allow() {
		f.cfg.Log.Warn().Int64("host_id", hostID).Msg("agent stream refused: replaced too often")
		return fmt.Errorf("host %d: at most %d stream replacements a minute allowed; retry later: %w", hostID, f.cfg.MaxReplacementsPerMin, ErrTooManyReplacements)
	}
	return nil
}

// restoreOffline undoes a registration's ONLINE write for a host with no
// live session. Callers hold the host's online lock.
func (f *Fleet) restoreOffline(hostID int64) {
	f.mu.Lock()
	live := f.live(hostID) != nil
	f.mu.Unlock()
	if live {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := f.cfg.Registry.SetHostStatus(ctx, hostID, host.StatusOffline); err != nil {
		f.cfg.Log.Error().Err(err).Int64("host_id", hostID).Msg("marking host offline failed; retrying")
		f.offlineLater(hostID)
	}
}

// offlineLater writes the host OFFLINE again a heartbeat interval from now
// (with any other host whose write failed), unless it has a session by
// then; a failed write is retried the same way, until the fleet closes.
// The store may be unwritable for a while (a full disk): the host must not
// stay ONLINE once it is writable again.
func (f *Fleet) offlineLater(hostID int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closing {
		return
	}
	f.offline[hostID] = true
	if f.offlineTimer == nil {
		f.flushing.Add(1)
		f.offlineTimer = time.AfterFunc(f.cfg.HeartbeatInterval, func() {
			defer f.flushing.Done()
			f.retryOffline()
		})
	}
}

// retryOffline writes OFFLINE the hosts offlineLater noted that have no
// session.
func (f *Fleet) retryOffline() {
	f.mu.Lock()
	hosts := f.offline
	f.offline, f.offlineTimer = map[int64]bool{}, nil
	f.mu.Unlock()
	for id := range hosts {
		unlock := f.online.host(id)
		f.restoreOffline(id)
		unlock()
	}
}

// checkIdentity checks a Hello against its client certificate's host and
// the registry. Callers hold the host's online lock.
func (f *Fleet) checkIdentity(ctx context.Context, h Hello) error {
	id := h.Identity
	if h.HostID != 0 && h.HostID != id.HostID {
		return fmt.Errorf("hello for host %d on a certificate of host %d: %w", h.HostID, id.HostID, errs.ErrPermissionDenied)
	}
	stored, err := f.cfg.Registry.GetHost(ctx, id.HostID)
	if errors.Is(err, errs.ErrNotFound) {
		return fmt.Errorf("certificate of host %d, which does not exist: %w", id.HostID, errs.ErrPermissionDenied)
	}
	if err != nil {
		return fmt.Errorf("reading host %d: %w", id.HostID, err)
	}
	if h.HostName != stored.Name || id.HostName != stored.Name {
		return fmt.Errorf("hello for host name %q on a certificate of host %d (%q): %w", h.HostName, id.HostID, stored.Name, errs.ErrPermissionDenied)
	}
	if !stored.RevokeTime.IsZero() {
		return fmt.Errorf("host %d: %w", id.HostID, ErrRevoked)
	}
	return nil
}

// Revoke ends the host's session, if any, with ErrRevoked. The caller has
// recorded the revocation first (Connect then refuses the host); Revoke
// waits for a Connect in progress, so a session installed before that
// record was read is ended too.
func (f *Fleet) Revoke(hostID int64) {
	if s := f.settled(hostID); s != nil {
		s.close(ErrRevoked)
		f.cfg.Log.Warn().Int64("host_id", hostID).Msg("host revoked; ending its stream")
	}
}

// settled returns the host's session once no Connect of it is in
// progress (it holds the host's lock from its checks to the install), or
// nil.
func (f *Fleet) settled(hostID int64) *Session {
	unlock := f.online.host(hostID)
	defer unlock()
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.sessions[hostID]
}

// RevokeCertificates ends the host's session, if any, with
// ErrCertRevoked, unless it was opened with the certificate of serial
// keep. The caller has recorded the revocation first; like Revoke, it waits
// for a Connect in progress.
func (f *Fleet) RevokeCertificates(hostID int64, keep string) {
	if s := f.settled(hostID); s != nil && s.serial != keep {
		s.close(ErrCertRevoked)
		f.cfg.Log.Warn().Int64("host_id", hostID).Str("serial", s.serial).Msg("host enrolled again; ending the stream of its revoked certificate")
	}
}

// EndCertificate ends the host's session, if any, with ErrCertRevoked
// when it was opened with the certificate of serial. The caller has
// recorded the revocation first; like Revoke, it waits for a Connect in
// progress.
func (f *Fleet) EndCertificate(hostID int64, serial string) {
	if s := f.settled(hostID); s != nil && s.serial == serial {
		s.close(ErrCertRevoked)
		f.cfg.Log.Warn().Int64("host_id", hostID).Str("serial", serial).Msg("certificate revoked; ending its stream")
	}
}

// Close ends every session with ErrClosing (stopping their watchdogs) and
// refuses new ones, so agent streams end at once when the server shuts down
// (agents reconnect to the next server), and writes the hosts seen since the
// last batch. Their hosts are not written OFFLINE one by one: the next
// server marks them all OFFLINE at start (store.MarkAllOffline).
func (f *Fleet) Close() {
	defer f.flushSeen()
	defer f.flushing.Wait()
	f.mu.Lock()
	if f.flushTimer != nil && f.flushTimer.Stop() {
		f.flushing.Done()
	}
	f.flushTimer = nil
	if f.offlineTimer != nil && f.offlineTimer.Stop() {
		f.flushing.Done() // the next server marks every host OFFLINE
	}
	f.offlineTimer = nil
	f.closing = true
	sessions := make([]*Session, 0, len(f.sessions))
	for _, s := range f.sessions {
		sessions = append(sessions, s)
	}
	f.mu.Unlock()
	for _, s := range sessions {
		s.close(ErrClosing)
	}
}

// Disconnect ends a session. If it is the host's current one, the host goes
// OFFLINE.
func (f *Fleet) Disconnect(s *Session) {
	s.close(ErrDisconnected)
	defer f.online.host(s.HostID)()
	f.mu.Lock()
	closing := f.closing
	current := f.sessions[s.HostID] == s
	if current {
		delete(f.sessions, s.HostID)
	}
	if !s.disconnected {
		s.disconnected = true
		if f.streams[s.HostID]--; f.streams[s.HostID] <= 0 {
			delete(f.streams, s.HostID)
			// A full bucket is a new one: forget it, so memory follows the
			// hosts connected, not every host ever seen.
			if l := f.replacements[s.HostID]; l != nil && l.Tokens() >= float64(l.Burst()) {
				delete(f.replacements, s.HostID)
			}
		}
	}
	f.mu.Unlock()
	if !current {
		return
	}
	if closing {
		// The server is shutting down: the next one marks every host
		// OFFLINE before any agentd connects (one write, not one per host).
		f.cfg.Log.Debug().Int64("host_id", s.HostID).Msg("agent disconnected at shutdown")
		return
	}
	// The stream's context is gone; this write must still happen.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := f.cfg.Registry.SetHostStatus(ctx, s.HostID, host.StatusOffline); err != nil {
		f.cfg.Log.Error().Err(err).Int64("host_id", s.HostID).Msg("marking host offline failed; retrying")
		f.offlineLater(s.HostID)
	}
	f.cfg.Log.Info().Int64("host_id", s.HostID).AnErr("reason", s.Err()).Msg("agent disconnected")
}

// watch runs when a session's watchdog fires: it ends the session with
// ErrLost if the host has been silent for LostAfter, else re-arms the timer
// for the rest of the bound.
func (f *Fleet) watch(s *Session) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if s.Err() != nil {
		return
	}
	idle := time.Since(f.heard[s.HostID])
	if idle < f.cfg.LostAfter {
		s.lost.Reset(f.cfg.LostAfter - idle)
		return
	}
	s.close(fmt.Errorf("%w: not heard from for %s", ErrLost, roundDuration(idle)))
	f.cfg.Log.Warn().Int64("host_id", s.HostID).Dur("silent", idle).Msg("agent lost; ending its stream")
}

// live returns the host's session unless it has none or it has ended.
// Callers hold mu.
func (f *Fleet) live(hostID int64) *Session {
	s := f.sessions[hostID]
	if s == nil || s.Err() != nil {
		return nil
	}
	return s
}

// Expect records the hosts whose agentds are expected back after a server
// restart: those connected to the previous server (ONLINE, holding a
// running operation, or seen shortly before it stopped). The server calls
// it at start, before Serving. A host already heard from in this process
// is not expected.
//
// A restarted server must fail no task by itself: its agents come back
// over many seconds, as fast as it can accept them (10,000 TLS handshakes
// and registrations on two cores take about a minute), and an agent
// waiting in that queue is not silent. So, for a host expected back and
// not back yet, a wait for its agentd (Dispatch, WaitConnected) gives up
// only LostAfter after the later of
//
//   - the server Serving (the agent could not be heard before), and
//   - the reconnections settling: one heartbeat interval after the last
//     expected host came back (while they keep coming back, the server is
//     still working through the queue).
//
// A host that never comes back therefore fails at most LostAfter plus one
// heartbeat interval after the last expected host came back, or LostAfter
// after Serving when none does (40 s and 30 s with the defaults). Any
// other host, and an expected host once it has connected, counts as lost
// LostAfter after it was last heard from, as in normal operation.
func (f *Fleet) Expect(hostIDs []int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, id := range hostIDs {
		if _, ok := f.heard[id]; !ok {
			f.expected[id] = true
		}
	}
}

// Serving records that the server accepts agent streams from now on;
// calls after the first do nothing.
func (f *Fleet) Serving() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.serving.IsZero() {
		f.serving = time.Now()
		close(f.servingCh)
	}
}

// giveUp says when a wait for the host's agentd to connect gives up: wait
// after since, unless the host is expected back after the restart (see
// Expect; restart true), when it is LostAfter after the restart settles.
// With ok false the server is not serving yet: there is no such time until
// servingCh is closed. A restart's bound that ended before since no longer
// applies: the host is no longer expected. Callers hold mu.
func (f *Fleet) lostDeadline(hostID int64, since time.Time, wait time.Duration) (at time.Time, restart, ok bool) {
	if f.expected[hostID] {
		if f.serving.IsZero() {
			return time.Time{}, true, false
		}
		settled := f.serving
		if !f.back.IsZero() {
			settled = later(settled, f.back.Add(f.cfg.HeartbeatInterval))
		}
		if at = settled.Add(f.cfg.LostAfter); !at.Before(since) {
			return at, true, true
		}
		delete(f.expected, hostID)
	}
	return since.Add(wait), false, true
}

// notBack says why a host expected back after the restart is given up.
func (f *Fleet) notBack() string {
	return fmt.Sprintf("not back within %s after the server restart's reconnections settled", roundDuration(f.cfg.LostAfter))
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// joinedCh returns the channel closed when a session of the host is next
// installed. Callers hold mu.
func (f *Fleet) joinedCh(hostID int64) chan struct{} {
	ch := f.joined[hostID]
	if ch == nil {
		ch = make(chan struct{})
		f.joined[hostID] = ch
	}
	return ch
}

// WaitConnected returns nil as soon as the host's agentd has a session. It
// gives up with an error wrapping ErrNotConnected wait after it began, or, for
// a host expected back after a restart, LostAfter after the restart's
// reconnections settle (see Expect); and returns ctx's cause when ctx ends
// first.
func (f *Fleet) WaitConnected(ctx context.Context, hostID int64, wait time.Duration) error {
	began := time.Now()
	for {
		f.mu.Lock()
		if f.live(hostID) != nil {
			f.mu.Unlock()
			return nil
		}
		joined := f.joinedCh(hostID)
		at, restart, ok := f.lostDeadline(hostID, began, wait)
		serving := f.servingCh
		f.mu.Unlock()
		expired, stop := f.alarm(at, ok)
		if ok && expired == nil {
			if restart {
				return fmt.Errorf("%w: %s", ErrNotConnected, f.notBack())
			}
			return fmt.Errorf("%w within %s", ErrNotConnected, roundDuration(wait))
		}
		if ok {
			serving = nil
		}
		select {
		case <-ctx.Done():
			stop()
			return context.Cause(ctx)
		case <-joined:
		case <-serving:
		case <-expired:
		}
		stop()
	}
}

// alarm returns a channel that fires at at (nil when at has passed), and
// its stop; with set false, nothing fires.
func (f *Fleet) alarm(at time.Time, set bool) (<-chan time.Time, func()) {
	left := time.Until(at)
	if !set || left <= 0 {
		return nil, func() {}
	}
	t := time.NewTimer(left)
	return t.C, func() { t.Stop() }
}

// Receive handles one message of a session; any message proves the host
// alive. A Begin is answered (see fence.go). Progress and results of an
// attempt the fleet gave up on are recorded in the subtask's log (bounded);
// other messages about commands that were not dispatched to this session's
// host are dropped with a warning. A message over the bounds on reports
// (MaxReportedProcesses, MaxTextBytes and the like) or with no field set is
// an ErrInvalidArgument error; any other error is a store failure. A
// heartbeat or progress line the store fails to record is logged (at most
// once per writeFailLogEvery) and skipped, not an error: a full disk must
// not end agents' streams.
func (f *Fleet) Receive(ctx context.Context, s *Session, m Inbound) error {
	if err := checkInbound(m); err != nil {
		return err
	}
	f.mu.Lock()
	f.heard[s.HostID] = time.Now()
	f.mu.Unlock()
	log := f.cfg.Log.With().Int64("host_id", s.HostID).Logger()
	switch {
	case m.Heartbeat != nil:
		now, procs := f.cfg.Now(), m.Heartbeat.Processes
		if procs == nil || sameProcesses(procs, s.reported) {
			f.markSeen(s.HostID, now)
			return nil
		}
		if err := f.cfg.Registry.HostSeen(ctx, s.HostID, now, procs); err != nil {
			// Not stored (e.g. a full disk): the next heartbeat tries again;
			// the stream goes on.
			f.writeFailed(err, s.HostID, "recording a heartbeat failed; the stream goes on")
			return nil
		}
		s.reported = procs
		return nil
	case m.Progress != nil:
		p := m.Progress
		if !f.dispatchedTo(key{p.SubtaskID, p.Attempt}, s.HostID) {
			late := fmt.Sprintf("late progress from agentd after the server gave up (attempt %d): %s", p.Attempt, p.Message)
			if ok, err := f.recordLate(ctx, s.HostID, key{p.SubtaskID, p.Attempt}, false, late); ok || err != nil {
				if err != nil {
					f.writeFailed(err, s.HostID, "storing a late progress line failed; the line is skipped, the stream goes on")
				}
				return nil
			}
			log.Warn().Int64("subtask_id", p.SubtaskID).Int("attempt", p.Attempt).Msg("progress for a command not dispatched to this host dropped")
			return nil
		}
		at := p.Time
		if at.IsZero() {
			at = f.cfg.Now()
		}
		if err := f.cfg.Logs.AppendSubtaskLog(ctx, p.SubtaskID, task.LogLine{RunTime: p.Attempt, Time: at, Line: p.Message}); err != nil {
			// A progress line is not worth the stream (and its host's
			// registration, which would then fail too): skipped.
			f.writeFailed(err, s.HostID, "storing a progress line failed; the line is skipped, the stream goes on")
		}
		return nil
	case m.Result != nil:
		r := *m.Result
		k := key{r.SubtaskID, r.Attempt}
		f.mu.Lock()
		f.forgetCancel(s.HostID, k)
		c := f.inflight[k]
		awaited := c != nil && c.hostID == s.HostID && !c.abandoned
		if awaited {
			select {
			case c.result <- r:
			default:
			}
		}
		f.mu.Unlock()
		if !awaited {
			return f.unawaited(ctx, s, r)
		}
		return nil
	case m.Begin != nil:
		return f.begin(ctx, s, *m.Begin)
	default:
		return fmt.Errorf("empty message: %w", errs.ErrInvalidArgument)
	}
}

// unawaited handles a result nobody waits for. The result of an attempt
// the server gave up on is recorded in the subtask's log and acknowledged
// (lateResult). If its attempt is still live, the engine has not resumed
// it yet: it will dispatch again and the agent answer again, so the result
// is left unacknowledged. Otherwise it is stale (the subtask moved on, e.g.
// finished while the agent's acknowledgement was lost, or a previous server
// gave up on it): it is acknowledged so the agent forgets it.
func (f *Fleet) unawaited(ctx context.Context, s *Session, r Result) error {
	if late, err := f.lateResult(ctx, s, r); late || err != nil {
		if err != nil {
			// Not acknowledged: agentd's outbox keeps it for a later try.
			f.writeFailed(err, s.HostID, "storing a late result failed; it stays in agentd's outbox, the stream goes on")
		}
		return nil
	}
	live, err := f.cfg.Registry.AttemptLive(ctx, s.HostID, r.SubtaskID, r.Attempt)
	if err != nil {
		return err
	}
	log := f.cfg.Log.With().Int64("host_id", s.HostID).Int64("subtask_id", r.SubtaskID).Int("attempt", r.Attempt).Logger()
	if live {
		log.Debug().Msg("result before its dispatch resumed; left for the agent to re-send")
		return nil
	}
	log.Info().Msg("stale result acknowledged and dropped")
	s.send(Outbound{Ack: &Ack{SubtaskID: r.SubtaskID, Attempt: r.Attempt}})
	return nil
}

// writeFailLogEvery bounds how often writeFailed logs.
const writeFailLogEvery = 10 * time.Second

// writeFailed logs a heartbeat or progress write that failed, at most once
// per writeFailLogEvery, counting the others.
func (f *Fleet) writeFailed(err error, hostID int64, msg string) {
	n := f.writeFails.Add(1)
	f.writeFailLog.Do(func() {
		f.cfg.Log.Error().Err(err).Int64("host_id", hostID).Int64("failures", n).Msg(msg)
		f.writeFails.Store(0)
	})
}

func (f *Fleet) dispatchedTo(k key, hostID int64) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := f.inflight[k]
	return c != nil && c.hostID == hostID
}

// Dispatch sends cmd to the host's agentd and waits for its result. A host
// not connected gets the command when it connects, and again whenever it
// reconnects while Dispatch waits.
//
// When the host has no session and was last heard from LostAfter ago (or,
// if never heard from in this process, LostAfter after Dispatch began; or,
// if expected back after a server restart, LostAfter after the restart's
// reconnections settled: see Expect), Dispatch fails with an error
// wrapping ErrAgentLost; the Cancel is kept for the host's next connection.
//
// agentd begins the command only once the fleet confirms it (a Begin,
// see fence.go), which it does only until Dispatch gives up (lost, ctx
// done): a command read late from a dead stream is never begun.
//
// When ctx ends (timeout or cancel) Dispatch sends Cancel (kept for the
// host's next connection if it has no session), waits up to CancelWait for
// the agent's result, and returns the result it got (if any) with ctx's
// cause. A ctx already done sends the Cancel only, never the command. When
// ctx ends because the server shuts down (task.ErrShutdown), the agent is
// left to finish: the next server resumes the wait.
func (f *Fleet) Dispatch(ctx context.Context, hostID int64, cmd Command) (Result, error) {
	k := key{cmd.SubtaskID, cmd.Attempt}
	c := &call{hostID: hostID, cmd: cmd, ctx: ctx, result: make(chan Result, 1)}
	began := time.Now()
	f.mu.Lock()
	if prev := f.inflight[k]; prev != nil {
		f.mu.Unlock()
		return Result{}, fmt.Errorf("subtask %d attempt %d is already dispatched: %w", cmd.SubtaskID, cmd.Attempt, errs.ErrConflict)
	}
	f.inflight[k] = c
	if f.hostCalls[hostID] == nil {
		f.hostCalls[hostID] = map[key]*call{}
	}
	f.hostCalls[hostID][k] = c
	if s := f.live(hostID); s != nil && ctx.Err() == nil {
		s.send(Outbound{Command: &cmd})
	}
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		delete(f.inflight, k)
		if delete(f.hostCalls[hostID], k); len(f.hostCalls[hostID]) == 0 {
			delete(f.hostCalls, hostID)
		}
		f.mu.Unlock()
	}()

	var r Result
	var cause, err error
	for {
		r, cause, err = f.await(ctx, hostID, c, began)
		if err == nil && cause == nil {
			return r, nil
		}
		if errors.Is(cause, task.ErrShutdown) {
			return Result{}, cause
		}
		if err != nil {
			cause = err
		}
		if f.giveUp(ctx, c, err != nil, cause) {
			break
		}
	}
	f.logGiveUp(ctx, k, cause)
	if err != nil {
		return Result{}, err
	}
	t := time.NewTimer(f.cfg.CancelWait)
	defer t.Stop()
	select {
	case r := <-c.result:
		f.answered(k)
		return r, cause
	case <-t.C:
		if r, ok := f.abandon(c); ok {
			f.answered(k)
			return r, cause
		}
		return Result{}, fmt.Errorf("%w; agentd did not confirm the cancel within %s", cause, f.cfg.CancelWait)
	}
}

// await waits for c's result. It returns the result; or ctx's cause when
// ctx ends first; or, as lost, an error wrapping ErrAgentLost when the host
// has no session LostAfter after it was last heard from (or after began, if
// never heard from in this process; or after the restart settled, if it is
// expected back: see Expect). It wakes on its timer, when the host's
// session ends, when any session joins and when the server begins serving;
// it never polls.
func (f *Fleet) await(ctx context.Context, hostID int64, c *call, began time.Time) (res Result, cause, lost error) {
	for {
		select {
		case r := <-c.result:
			return r, nil, nil
		default:
		}
		if ctx.Err() != nil {
			return Result{}, context.Cause(ctx), nil
		}
		f.mu.Lock()
		s := f.live(hostID)
		var joined chan struct{} // nil with a session: its end wakes this loop
		var ended, serving <-chan struct{}
		var expired <-chan time.Time
		stop := func() {}
		if s != nil {
			ended = s.Done()
		} else {
			joined = f.joinedCh(hostID)
			since, wasHeard := f.heard[hostID]
			if !wasHeard {
				since = began
			}
			at, restart, ok := f.lostDeadline(hostID, since, f.cfg.LostAfter)
			if expired, stop = f.alarm(at, ok); ok && expired == nil {
				f.mu.Unlock()
				switch {
				case restart:
					return Result{}, nil, fmt.Errorf("%w: %s", ErrAgentLost, f.notBack())
				case wasHeard:
					return Result{}, nil, fmt.Errorf("%w: not heard from for %s", ErrAgentLost, roundDuration(time.Since(since)))
				default:
					return Result{}, nil, fmt.Errorf("%w: not connected within %s", ErrAgentLost, roundDuration(f.cfg.LostAfter))
				}
			}
			if !ok {
				serving = f.servingCh
			}
		}
		f.mu.Unlock()
		select {
		case r := <-c.result:
			stop()
			return r, nil, nil
		case <-ctx.Done():
		case <-ended:
		case <-joined:
		case <-serving:
		case <-expired:
		}
		stop()
	}
}

// keepCancel remembers a cancel for the host's next session, replacing one
// for the same command and dropping the oldest beyond maxPendingCancels.
// Callers hold mu.
func (f *Fleet) keepCancel(hostID int64, c Cancel) {
	k := key{c.SubtaskID, c.Attempt}
	f.forgetCancel(hostID, k)
	p := f.pending[hostID]
	if len(p) >= maxPendingCancels {
		f.cfg.Log.Warn().Int64("host_id", hostID).Int64("subtask_id", p[0].SubtaskID).Int("attempt", p[0].Attempt).
			Msg("too many cancels pending for the host; the oldest is dropped")
		p = p[1:]
	}
	f.pending[hostID] = append(p, c)
}

// forgetCancel drops the pending cancel of (subtask, attempt) k, if any.
// Callers hold mu.
func (f *Fleet) forgetCancel(hostID int64, k key) {
	p := f.pending[hostID]
	for i, c := range p {
		if (key{c.SubtaskID, c.Attempt}) == k {
			p = append(p[:i], p[i+1:]...)
			if len(p) == 0 {
				delete(f.pending, hostID)
			} else {
				f.pending[hostID] = p
			}
			return
		}
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

// Ack tells the host's agentd that the result of (subtask, attempt) is
// stored, so it may forget it. Without a session it is a no-op: the agent
// re-sends and is acknowledged then.
func (f *Fleet) Ack(hostID, subtaskID int64, attempt int) {
	f.send(hostID, Outbound{Ack: &Ack{SubtaskID: subtaskID, Attempt: attempt}})
}

func (f *Fleet) send(hostID int64, m Outbound) {
	f.mu.Lock()
	s := f.live(hostID)
	f.mu.Unlock()
	if s != nil {
		s.send(m)
	}
}

// sameProcesses reports whether two reports list the same processes in the
// same order.
func sameProcesses(a, b []host.Process) bool {
	if len(a) != len(b) || (a == nil) != (b == nil) {
		return false
	}
	for i := range a {
		x, y := a[i], b[i]
		if x.PID != y.PID || x.Name != y.Name || x.Exe != y.Exe || x.Cmdline != y.Cmdline || x.User != y.User ||
			!x.CreateTime.Equal(y.CreateTime) {
			return false
		}
	}
	return true
}

// hostLocks are per-host mutexes (striped), and a way to hold them all.
type hostLocks struct {
	every   sync.RWMutex // held shared by host, exclusively by all
	stripes [256]sync.Mutex
}

// host locks one host; call the result to unlock.
func (l *hostLocks) host(id int64) func() {
	l.every.RLock()
	m := &l.stripes[uint64(id)%uint64(len(l.stripes))]
	m.Lock()
	return func() {
		m.Unlock()
		l.every.RUnlock()
	}
}

// all locks every host; call the result to unlock.
func (l *hostLocks) all() func() {
	l.every.Lock()
	return l.every.Unlock
}
