package conn

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"google.golang.org/grpc"

	"agentplane/agentd/internal/proc"
	agentv1 "agentplane/gen/agentplane/agent/v1"
)

// session is one Connect stream. All sends go through its sender goroutine.
type session struct {
	ctx context.Context // the stream's context; done when the session ends
	log zerolog.Logger
	out chan *agentv1.ConnectRequest // to the sender; nil asks it to CloseSend

	mu     sync.Mutex
	begins map[cmdKey]chan *agentv1.CommandBeginAnswer // go-aheads awaited on this stream (goAhead)
}

// send queues msg; see Client.send.
func (s *session) send(msg *agentv1.ConnectRequest, droppable bool) bool {
	if droppable {
		select {
		case s.out <- msg:
			return true
		default:
			s.log.Debug().Msg("send queue full; dropping progress")
			return false
		}
	}
	select {
	case s.out <- msg:
		return true
	case <-s.ctx.Done():
		return false
	}
}

var errNoWelcome = errors.New("no welcome from server")

// session runs one stream to srv until it fails or ctx is done. welcomed
// reports whether the server accepted the Hello.
func (c *Client) session(ctx context.Context, srv dest) (welcomed bool, err error) {
	// The stream outlives ctx by a bounded time, so that a shutdown can send
	// the results of canceled commands and close the stream cleanly.
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	if srv.reset != nil {
		srv.reset()
	}
	// Wait for the connection, but no longer than WelcomeTimeout: a
	// fail-fast call would fail on a failure gRPC cached before the server
	// came back. A new connection to one of several servers has none
	// cached: its first failure ends the attempt, and the next server is
	// tried.
	opening := time.AfterFunc(c.cfg.WelcomeTimeout, cancel)
	stopping := context.AfterFunc(ctx, cancel) // shutdown ends the wait too
	stream, err := srv.svc.Connect(sctx, grpc.WaitForReady(!srv.failFast))
	stopping()
	if ctx.Err() != nil {
		if err == nil {
			err = ctx.Err()
		}
		return false, fmt.Errorf("opening stream: %w", err)
	}
	if !opening.Stop() {
		if err == nil {
			err = errors.New("stream opened too late")
		}
		return false, fmt.Errorf("opening stream: no connection within %s: %w", c.cfg.WelcomeTimeout, err)
	}
	if err != nil {
		return false, fmt.Errorf("opening stream: %w", err)
	}
	s := &session{ctx: sctx, log: c.log, out: make(chan *agentv1.ConnectRequest, outQueue)}

	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel() // runs before wg.Wait: stops both goroutines
	errc := make(chan error, 2)
	in := make(chan *agentv1.ConnectResponse)
	wg.Go(func() { // sender
		for {
			select {
			case <-sctx.Done():
				return
			case m := <-s.out:
				if m == nil {
					if err := stream.CloseSend(); err != nil {
						errc <- fmt.Errorf("closing stream: %w", err)
					}
					return
				}
				if err := stream.Send(m); err != nil {
					errc <- fmt.Errorf("sending: %w", err)
					return
				}
			}
		}
	})
	wg.Go(func() { // receiver
		for {
			m, err := stream.Recv()
			if err != nil {
				if errors.Is(err, io.EOF) {
					err = errors.New("server closed the stream")
				}
				errc <- fmt.Errorf("receiving: %w", err)
				return
			}
			select {
			case in <- m:
			case <-sctx.Done():
				return
			}
		}
	})

	hostID := c.hostID.Load()
	s.send(&agentv1.ConnectRequest{Kind: &agentv1.ConnectRequest_Hello{Hello: &agentv1.Hello{
		Token:          c.cfg.Token,
		HostId:         hostID,
		HostName:       c.cfg.HostName,
		InnerIpAddress: c.cfg.InnerIP,
		MachineId:      c.cfg.MachineID,
		AgentdVersion:  c.cfg.Version,
		Processes:      processMsgs(c.helloProcesses(sctx)),
		InstallHome:    c.cfg.InstallHome,
		// Checked at every Hello: an OCP Agent installed meanwhile shows
		// at the next stream.
		InstallHomeMissing: c.cfg.InstallHome != "" && proc.InstallHomeMissing(c.cfg.InstallHome),
	}}}, false)

	// The first message must be the Welcome.
	wt := time.NewTimer(c.cfg.WelcomeTimeout)
	var welcome *agentv1.Welcome
	select {
	case <-ctx.Done():
		wt.Stop()
		return false, ctx.Err()
	case err := <-errc:
		wt.Stop()
		return false, err
	case <-wt.C:
		return false, fmt.Errorf("%w within %s", errNoWelcome, c.cfg.WelcomeTimeout)
	case m := <-in:
		wt.Stop()
		if welcome = m.GetWelcome(); welcome == nil || welcome.GetHostId() <= 0 {
			return false, fmt.Errorf("%w: first message was %T", errNoWelcome, m.GetKind())
		}
	}
	id := welcome.GetHostId()
	if hostID != 0 && hostID != id {
		c.log.Warn().Int64("host_id", id).Int64("stored_host_id", hostID).Msg("server assigned a different host id")
	}
	if id != hostID {
		if err := c.cfg.State.SetHostID(id); err != nil {
			c.log.Error().Err(err).Int64("host_id", id).Msg("cannot store host id")
		}
		c.hostID.Store(id)
	}
	lc := c.log.With().Int64("host_id", id)
	if srv.name != "" {
		lc = lc.Str("server", srv.name)
	}
	s.log = lc.Logger()
	c.welcomed(s.log, welcome.GetEpoch())
	interval := welcome.GetHeartbeatInterval().AsDuration()
	if welcome.GetHeartbeatInterval() == nil || interval <= 0 {
		interval = DefaultHeartbeat
	}
	s.log.Info().Dur("heartbeat_interval", interval).Int64("epoch", welcome.GetEpoch()).Msg("connected to server")

	// Become the current session before reading the outbox: a result saved
	// after this read is sent by its command through this session.
	c.mu.Lock()
	c.cur = s
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		if c.cur == s {
			c.cur = nil
		}
		c.mu.Unlock()
	}()
	if c.cfg.OnSession != nil {
		c.cfg.OnSession(true)
		defer c.cfg.OnSession(false)
	}
	pending, err := c.cfg.State.PendingResults()
	if err != nil {
		s.log.Error().Err(err).Msg("cannot read pending results")
	}
	for _, r := range pending {
		s.log.Info().Int64("subtask_id", r.SubtaskID).Int32("attempt", r.Attempt).Msg("re-sending pending result")
		s.send(resultMsg(r), false)
	}

	hb := time.NewTicker(interval)
	defer hb.Stop()
	for {
		select {
		case <-ctx.Done():
			hb.Stop()
			c.shutdown(s, in, errc)
			return true, ctx.Err()
		case err := <-errc:
			return true, err
		case <-hb.C:
			c.sendHeartbeat(sctx, s)
		case m := <-in:
			c.handle(s, m)
		}
	}
}

// handle dispatches one server message.
func (c *Client) handle(s *session, m *agentv1.ConnectResponse) {
	switch k := m.GetKind().(type) {
	case *agentv1.ConnectResponse_Command:
		c.handleCommand(s, k.Command)
	case *agentv1.ConnectResponse_Cancel:
		c.handleCancel(s, k.Cancel)
	case *agentv1.ConnectResponse_Ack:
		c.handleAck(s, k.Ack)
	case *agentv1.ConnectResponse_BeginAnswer:
		s.answered(k.BeginAnswer)
	case *agentv1.ConnectResponse_Query:
		c.handleQuery(s, k.Query)
	case *agentv1.ConnectResponse_Welcome:
		s.log.Warn().Msg("ignoring repeated welcome")
	default:
		s.log.Warn().Str("kind", fmt.Sprintf("%T", k)).Msg("ignoring unknown server message")
	}
}

// shutdown ends a welcomed session after Run's ctx is done: no new commands;
// running commands (canceled through ctx) get up to ShutdownTimeout to send
// their results; then the stream is half-closed and the server gets a moment
// to end it.
func (c *Client) shutdown(s *session, in <-chan *agentv1.ConnectResponse, errc <-chan error) {
	c.mu.Lock()
	c.closing = true
	c.mu.Unlock()
	idle := make(chan struct{})
	go func() { c.cmds.Wait(); close(idle) }() // ends when the commands do; Run waits for them too

	deadline := time.NewTimer(c.cfg.ShutdownTimeout)
	defer deadline.Stop()
	drain := func(done <-chan struct{}) bool {
		for {
			select {
			case <-done:
				return true
			case <-deadline.C:
				return false
			case err := <-errc:
				s.log.Debug().Err(err).Msg("stream ended during shutdown")
				return false
			case m := <-in:
				c.handle(s, m) // acks and cancels; commands are refused
			}
		}
	}
	if !drain(idle) {
		return
	}
	c.mu.Lock()
	c.cur = nil
	c.mu.Unlock()
	if !s.send(nil, false) { // the sender half-closes after everything queued
		return
	}
	drain(nil) // until the server ends the stream or the deadline passes
	s.log.Info().Msg("disconnected from server")
}
