package fleet

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"agentplane/server/auth"
	"agentplane/server/errs"
	"agentplane/server/host"
	"agentplane/server/task"
)

// Registry is what the fleet records about hosts.
type Registry interface {
	RegisterHost(ctx context.Context, h host.Host, at time.Time) (host.Host, error)
	HostSeen(ctx context.Context, id int64, at time.Time, procs []host.Process) error
	SetHostStatus(ctx context.Context, id int64, st host.Status) error
	// AttemptLive reports whether (subtask, attempt) of the host is still
	// running, i.e. whether its result may yet be awaited.
	AttemptLive(ctx context.Context, hostID, subtaskID int64, attempt int) (bool, error)
}

// Logs receives the progress lines agents stream.
type Logs interface {
	AppendSubtaskLog(ctx context.Context, subtaskID int64, l task.LogLine) error
}

// Config configures a Fleet.
type Config struct {
	Registry          Registry
	Logs              Logs
	Token             string        // the enrollment token every Hello must carry
	HeartbeatInterval time.Duration // asked of agents; default 10s
	// CancelWait bounds how long a dispatch whose context ended waits for the
	// agent's result after sending Cancel; default 5s.
	CancelWait time.Duration
	Log        zerolog.Logger
	Now        func() time.Time
}

// Fleet tracks agent sessions and routes commands and results.
type Fleet struct {
	cfg Config

	// online serialises a host's ONLINE write with installing its session,
	// and removing a session with its OFFLINE write, so the stored status
	// always ends as the sessions say.
	online sync.Mutex

	mu       sync.Mutex
	closing  bool
	sessions map[int64]*Session // by host id
	inflight map[key]*call
	joined   chan struct{} // closed and replaced whenever a session is installed
}

// call is a dispatched command waiting for its result.
type call struct {
	hostID int64
	cmd    Command
	result chan Result // buffered 1; later duplicates are dropped
}

// New returns a fleet.
func New(cfg Config) *Fleet {
	if cfg.HeartbeatInterval <= 0 {
		cfg.HeartbeatInterval = 10 * time.Second
	}
	if cfg.CancelWait <= 0 {
		cfg.CancelWait = 5 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Fleet{cfg: cfg, sessions: map[int64]*Session{}, inflight: map[key]*call{}, joined: make(chan struct{})}
}

// Session is one connected agentd stream. The adapter sends what Out yields
// and stops when Done is closed (the session was replaced or closed).
type Session struct {
	HostID int64
	out    chan Outbound
	done   chan struct{}
	once   sync.Once
	err    error // why it ended; set before done is closed
}

// sessionBuffer bounds the messages queued for one agent; an agent that
// falls this far behind is disconnected.
const sessionBuffer = 256

// Out yields the messages to send to the agent.
func (s *Session) Out() <-chan Outbound { return s.out }

// Done is closed when the session ends; Err then says why.
func (s *Session) Done() <-chan struct{} { return s.done }

// Err says why the session ended: ErrReplaced, ErrSlowAgent, ErrClosing,
// or ErrDisconnected. It is nil while Done is open.
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
)

// Connect authenticates and registers an agent, and opens its session. A
// previous session of the same host is closed. Commands waiting for the host
// are queued on the new session. ErrUnauthenticated for a wrong token,
// ErrInvalidArgument for a Hello without a host name.
func (f *Fleet) Connect(ctx context.Context, h Hello) (*Session, Welcome, error) {
	if f.cfg.Token == "" || !auth.CheckAgentToken(f.cfg.Token, h.Token) {
		return nil, Welcome{}, fmt.Errorf("agent enrollment token: %w", errs.ErrUnauthenticated)
	}
	if h.HostName == "" {
		return nil, Welcome{}, fmt.Errorf("hello without a host name: %w", errs.ErrInvalidArgument)
	}
	f.online.Lock()
	defer f.online.Unlock()
	reg, err := f.cfg.Registry.RegisterHost(ctx, host.Host{
		ID: h.HostID, Name: h.HostName, InnerIP: h.InnerIP, MachineID: h.MachineID,
		AgentdVersion: h.AgentdVersion, Processes: h.Processes,
	}, f.cfg.Now())
	if err != nil {
		return nil, Welcome{}, fmt.Errorf("registering host %q: %w", h.HostName, err)
	}
	s := &Session{HostID: reg.ID, out: make(chan Outbound, sessionBuffer), done: make(chan struct{})}
	f.mu.Lock()
	if f.closing {
		f.mu.Unlock()
		return nil, Welcome{}, ErrClosing
	}
	old := f.sessions[reg.ID]
	f.sessions[reg.ID] = s
	close(f.joined)
	f.joined = make(chan struct{})
	var resend []Command
	for _, c := range f.inflight {
		if c.hostID == reg.ID {
			resend = append(resend, c.cmd)
		}
	}
	f.mu.Unlock()
	if old != nil {
		old.close(ErrReplaced)
	}
	for _, c := range resend {
		s.send(Outbound{Command: &c})
	}
	f.cfg.Log.Info().Int64("host_id", reg.ID).Str("host_name", reg.Name).Int("resent", len(resend)).Msg("agent connected")
	return s, Welcome{HostID: reg.ID, HeartbeatInterval: f.cfg.HeartbeatInterval}, nil
}

// Close ends every session with ErrClosing and refuses new ones, so agent
// streams end at once when the server shuts down (agents reconnect to the
// next server); their hosts go OFFLINE as the streams end.
func (f *Fleet) Close() {
	f.mu.Lock()
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
	f.online.Lock()
	defer f.online.Unlock()
	f.mu.Lock()
	current := f.sessions[s.HostID] == s
	if current {
		delete(f.sessions, s.HostID)
	}
	f.mu.Unlock()
	if !current {
		return
	}
	// The stream's context is gone; this write must still happen.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := f.cfg.Registry.SetHostStatus(ctx, s.HostID, host.StatusOffline); err != nil {
		f.cfg.Log.Error().Err(err).Int64("host_id", s.HostID).Msg("marking host offline failed")
	}
	f.cfg.Log.Info().Int64("host_id", s.HostID).Msg("agent disconnected")
}

// WaitConnected returns true as soon as the host's agentd has a session, or
// false when ctx ends first.
func (f *Fleet) WaitConnected(ctx context.Context, hostID int64) bool {
	for {
		f.mu.Lock()
		_, ok := f.sessions[hostID]
		joined := f.joined
		f.mu.Unlock()
		if ok {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-joined:
		}
	}
}

// Receive handles one message of a session. Messages about commands that
// were not dispatched to this session's host are dropped with a warning.
func (f *Fleet) Receive(ctx context.Context, s *Session, m Inbound) error {
	log := f.cfg.Log.With().Int64("host_id", s.HostID).Logger()
	switch {
	case m.Heartbeat != nil:
		return f.cfg.Registry.HostSeen(ctx, s.HostID, f.cfg.Now(), m.Heartbeat.Processes)
	case m.Progress != nil:
		p := m.Progress
		if !f.dispatchedTo(key{p.SubtaskID, p.Attempt}, s.HostID) {
			log.Warn().Int64("subtask_id", p.SubtaskID).Int("attempt", p.Attempt).Msg("progress for a command not dispatched to this host dropped")
			return nil
		}
		at := p.Time
		if at.IsZero() {
			at = f.cfg.Now()
		}
		return f.cfg.Logs.AppendSubtaskLog(ctx, p.SubtaskID, task.LogLine{RunTime: p.Attempt, Time: at, Line: p.Message})
	case m.Result != nil:
		r := *m.Result
		k := key{r.SubtaskID, r.Attempt}
		f.mu.Lock()
		c := f.inflight[k]
		f.mu.Unlock()
		if c == nil || c.hostID != s.HostID {
			return f.unawaited(ctx, s, r)
		}
		select {
		case c.result <- r:
		default:
		}
		return nil
	default:
		return fmt.Errorf("empty message: %w", errs.ErrInvalidArgument)
	}
}

// unawaited handles a result nobody waits for. If its attempt is still
// live, the engine has not resumed it yet: it will dispatch again and the
// agent answer again, so the result is left unacknowledged. Otherwise it is
// stale (the subtask moved on, e.g. failed by its timeout while the agent was
// away): it is acknowledged so the agent forgets it.
func (f *Fleet) unawaited(ctx context.Context, s *Session, r Result) error {
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

func (f *Fleet) dispatchedTo(k key, hostID int64) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := f.inflight[k]
	return c != nil && c.hostID == hostID
}

// Dispatch sends cmd to the host's agentd and waits for its result. A host
// not connected gets the command when it connects. When ctx ends (timeout or
// cancel) Dispatch sends Cancel, waits up to CancelWait for the agent's
// result, and returns the result it got (if any) with ctx's cause. When ctx
// ends because the server shuts down (task.ErrShutdown), the agent is left to
// finish: the next server resumes the wait.
func (f *Fleet) Dispatch(ctx context.Context, hostID int64, cmd Command) (Result, error) {
	k := key{cmd.SubtaskID, cmd.Attempt}
	c := &call{hostID: hostID, cmd: cmd, result: make(chan Result, 1)}
	f.mu.Lock()
	if prev := f.inflight[k]; prev != nil {
		f.mu.Unlock()
		return Result{}, fmt.Errorf("subtask %d attempt %d is already dispatched: %w", cmd.SubtaskID, cmd.Attempt, errs.ErrConflict)
	}
	f.inflight[k] = c
	s := f.sessions[hostID]
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		delete(f.inflight, k)
		f.mu.Unlock()
	}()
	if s != nil {
		s.send(Outbound{Command: &cmd})
	}
	select {
	case r := <-c.result:
		return r, nil
	case <-ctx.Done():
	}
	cause := context.Cause(ctx)
	if errors.Is(cause, task.ErrShutdown) {
		return Result{}, cause
	}
	f.send(hostID, Outbound{Cancel: &Cancel{SubtaskID: cmd.SubtaskID, Attempt: cmd.Attempt, Reason: cause.Error()}})
	t := time.NewTimer(f.cfg.CancelWait)
	defer t.Stop()
	select {
	case r := <-c.result:
		return r, cause
	case <-t.C:
		return Result{}, fmt.Errorf("%w; agentd did not confirm the cancel within %s", cause, f.cfg.CancelWait)
	}
}

// Ack tells the host's agentd that the result of (subtask, attempt) is
// stored, so it may forget it. Without a session it is a no-op: the agent
// re-sends and is acknowledged then.
func (f *Fleet) Ack(hostID, subtaskID int64, attempt int) {
	f.send(hostID, Outbound{Ack: &Ack{SubtaskID: subtaskID, Attempt: attempt}})
}

func (f *Fleet) send(hostID int64, m Outbound) {
	f.mu.Lock()
	s := f.sessions[hostID]
	f.mu.Unlock()
	if s != nil {
		s.send(m)
	}
}
