// Package conn owns agentd's side of AgentService.Connect: the reconnect
// loop, the Hello/Welcome handshake, heartbeats, recording how the base
// processes it sees were started, and running commands (stop, start) at
// most once with their progress and results sent back, results re-sent after
// reconnects until the server acknowledges them.
package conn

import (
	"context"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"agentplane/agentd/internal/backoff"
	"agentplane/agentd/internal/proc"
	"agentplane/agentd/internal/servers"
	"agentplane/agentd/internal/state"
	agentv1 "agentplane/gen/agentplane/agent/v1"
)

// Runner finds, stops and starts the OCP Agent's base processes.
// *proc.Stopper satisfies it. StopAll and StartAll must return soon after ctx
// is done, with an error wrapping ctx.Err().
type Runner interface {
	Scan(ctx context.Context) ([]proc.Target, error)
	ReadStartSpec(ctx context.Context, t proc.Target) (proc.StartSpec, error)
	StopAll(ctx context.Context, grace time.Duration, emit func(proc.Event)) error
	StartAll(ctx context.Context, specs []proc.StartSpec, emit func(proc.Event)) (int, error)
}

var (
	_ Runner          = (*proc.Stopper)(nil)
	_ ObservingRunner = (*proc.Stopper)(nil)
	_ CheckingRunner  = (*proc.Stopper)(nil)
)

// Defaults of Config.
const (
	DefaultWelcomeTimeout  = 30 * time.Second
	DefaultHeartbeat       = 15 * time.Second
	DefaultStableAfter     = 10 * time.Second
	DefaultShutdownTimeout = 5 * time.Second
	DefaultCommandTimeout  = 10 * time.Minute
	DefaultGrace           = 30 * time.Second
	DefaultScanEvery       = time.Minute
	// DefaultBeginTimeout outlasts the keepalive's verdict on a server gone
	// silent (keepaliveTime + keepaliveTimeout, see Dial) by 5 s: the
	// go-ahead of a command that came just before its server froze or was
	// cut off is then ended by the stream's end, and waits for the command
	// on the next stream (see goAhead), rather than failing.
	DefaultBeginTimeout = keepaliveTime + keepaliveTimeout + 5*time.Second
	outQueue            = 256
)

// Servers gives Client the server of each connection attempt;
// *servers.Pool satisfies it. Next is called by Run only, one call at a
// time.
type Servers interface {
	Next(ctx context.Context) (servers.Conn, error)
}

var _ Servers = (*servers.Pool)(nil)

// Config configures a Client. Service or Servers, State and Runner are
// required.
type Config struct {
	Service agentv1.AgentServiceClient // the one server (mTLS, or plaintext with Token); the caller owns and closes its connection
	// Servers, when set, are several servers, one stream at a time (see
	// Run); Service and ResetBackoff are then unused. The caller closes it.
	Servers Servers
	State   *state.State // host id and command journal; the caller closes it
	Runner  Runner       // finds, stops and starts processes

	Token       string // bootstrap token sent in Hello, for a server in --insecure mode; empty with mTLS
	HostName    string
	InnerIP     string
	MachineID   string
	Version     string // agentd's version
	InstallHome string // the OCP Agent's install home, sent in Hello

	Grace           time.Duration   // SIGTERM→SIGKILL when a command leaves it unset; default 30s
	Backoff         backoff.Backoff // reconnect delays
	WelcomeTimeout  time.Duration   // wait for the connection and the Welcome; default 30s (a busy server registers a reconnect storm's hosts through its store for seconds: a client that gives up sooner wasted that write and queues again)
	StableAfter     time.Duration   // a welcomed connection up this long resets the backoff; default 10s
	ShutdownTimeout time.Duration   // on shutdown, wait this long for commands' results to be sent; default 5s
	ScanEvery       time.Duration   // a heartbeat scans all of /proc at least this often, else re-checks the known processes; default 1m (see heartbeatProcesses)
	BeginTimeout    time.Duration   // wait this long (at most the command's timeout) for the server's go-ahead to begin a command; default 35s (see goAhead)
	Log             zerolog.Logger
	Rand            *rand.Rand // backoff jitter source; default a random seed

	// OnSession, when set, is called with true once a stream is welcomed and
	// with false when that stream ends. It must return quickly.
	OnSession func(connected bool)
	// ResetBackoff, when set, is called before each connection attempt to
	// Service: (*grpc.ClientConn).ResetConnectBackoff, so that the attempt
	// tries at once rather than after gRPC's own backoff (see Dial). With
	// Servers, each attempt resets its connection's.
	ResetBackoff func()
}

// Client keeps agentd connected to the server. Create it with New and call
// Run once.
type Client struct {
	cfg Config
	log zerolog.Logger
	rec *recorder

	hostID atomic.Int64

	mu      sync.Mutex
	root    context.Context       // Run's ctx: commands run under it
	cur     *session              // the welcomed connection, nil when disconnected
	running map[cmdKey]*execution // commands running now
	closing bool                  // Run's ctx is done: no new commands

	cmds sync.WaitGroup // running command goroutines

	// obsMu serializes observing the base processes and sending what was
	// observed (heartbeats, the report before a result), so that of two
	// reports the one sent later was observed later. It guards the fields
	// below.
	obsMu    sync.Mutex
	seen     []proc.Target // the base processes as last observed
	seenOK   bool          // seen is valid: a scan has succeeded since the last failure
	lastScan time.Time     // when seen last came from a full scan
}

type cmdKey struct {
	subtask int64
	attempt int32
}

// execution is a running command.
type execution struct {
	cancel context.CancelCauseFunc
	// again receives the stream the command was received on again while
	// it runs (buffered 1): a command waiting for the server's go-ahead
	// whose stream ended, or that the server refused for now only, asks
	// again there (see goAhead).
	again chan *session
	// begun is set once the server's go-ahead came: the command is doing
	// its work (a query's RUNNING, not WAITING).
	begun atomic.Bool
}

// New returns a Client for cfg, with defaults filled in.
func New(cfg Config) *Client {
	if cfg.Grace <= 0 {
		cfg.Grace = DefaultGrace
	}
	if cfg.WelcomeTimeout <= 0 {
		cfg.WelcomeTimeout = DefaultWelcomeTimeout
	}
	if cfg.StableAfter <= 0 {
		cfg.StableAfter = DefaultStableAfter
	}
	if cfg.ShutdownTimeout <= 0 {
		cfg.ShutdownTimeout = DefaultShutdownTimeout
	}
	if cfg.ScanEvery <= 0 {
		cfg.ScanEvery = DefaultScanEvery
	}
	if cfg.BeginTimeout <= 0 {
		cfg.BeginTimeout = DefaultBeginTimeout
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
	}
	c := &Client{cfg: cfg, log: cfg.Log, running: map[cmdKey]*execution{}}
	c.rec = newRecorder(cfg.Runner, cfg.State, cfg.Log)
	if id, err := cfg.State.HostID(); err == nil {
		c.hostID.Store(id)
	}
	return c
}

// Run connects and reconnects until ctx is done. Commands run under ctx, not
// under a connection: a dropped stream does not stop them, and their results
// are sent on the next connection. When ctx is done, Run stops accepting
// commands, lets running ones end (they see ctx done) and save their results,
// sends what it can within ShutdownTimeout, closes the stream and returns nil
// once every command goroutine has ended.
//
// With Servers, Run holds one stream at a time, to one server. When an
// attempt fails (no connection, no Welcome within WelcomeTimeout, the stream
// ended by the server or the network), the next attempt goes to the next
// server in this agentd's order (see servers.Pool). The waits are
// backoff.Rounds': at most Backoff.Base between the servers of a round, and
// the growing, jittered Backoff after a round in which every server failed,
// so agentd never loops hot. A dead server costs the next one only its own
// failure: a new connection to one of several servers fails the attempt as
// soon as it fails (refused at once; unanswered, gRPC's connect timeout of
// 20 s, see DialOptions) rather than waiting WelcomeTimeout for the server
// to come back. An attempt that fails slowly (busyAfter without a Welcome,
// or a welcomed stream ended before StableAfter) counts as a whole failed
// round: the server is busy, not gone (see round). A stream that stayed
// up StableAfter starts the rounds over.
// With one server every attempt ends a round: the same connection, waits
// and logs as with Service.
func (c *Client) Run(ctx context.Context) error {
	c.mu.Lock()
	c.root = ctx
	c.mu.Unlock()
	defer c.cmds.Wait()
	defer func() {
		c.mu.Lock()
		c.closing = true
		c.mu.Unlock()
	}()
	pace := backoff.Rounds{Backoff: c.cfg.Backoff}
	for {
		srv, n, err := c.pick(ctx)
		start := time.Now()
		welcomed := false
		if err == nil {
			welcomed, err = c.session(ctx, srv)
		}
		if ctx.Err() != nil {
			return nil
		}
		took := time.Since(start)
		if welcomed && took >= c.cfg.StableAfter {
			pace.Reset()
		}
		delay := pace.Failed(c.round(n, welcomed, took), c.cfg.Rand)
		ev := c.log.Warn()
		if s, ok := status.FromError(err); ok && (s.Code() == codes.Unauthenticated || s.Code() == codes.PermissionDenied) {
			ev = c.log.Error()
		}
		if srv.name != "" {
			ev = ev.Str("server", srv.name)
		}
		ev.Err(err).Int64("host_id", c.hostID.Load()).Dur("retry_in", delay).Msg("connection to server lost")
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

// busyAfter: an attempt that failed after this long without a stable
// stream found its server busy rather than gone (see round).
const busyAfter = 2 * time.Second

// round is the servers of a round for pacing the attempt that just ended
// (backoff.Rounds.Failed): n, or 1 when the attempt failed slowly (no
// connection or Welcome for busyAfter, or a welcomed stream ended before
// StableAfter). A server that refuses at once is gone, and the next is
// tried at once; one that takes seconds to fail is busy (taking a
// reconnect storm: TLS handshakes queued, registrations waiting for the
// store), and another attempt a moment later, to it or to a peer as busy,
// adds to the load that made it fail. So each slow failure counts as a
// failed round: the jittered backoff grows with each, and a fleet
// reconnecting to busy servers spreads out until they keep up, instead of
// retrying every few seconds for minutes.
func (c *Client) round(n int, welcomed bool, took time.Duration) int {
	if (welcomed && took < c.cfg.StableAfter) || (!welcomed && took >= busyAfter) {
		return 1
	}
	return n
}

// dest is the server of one attempt.
type dest struct {
	name  string // for the logs; "" for Config.Service
	svc   agentv1.AgentServiceClient
	reset func() // nil: nothing to reset
	// failFast: the stream fails at once when the connection does, rather
	// than waiting up to WelcomeTimeout for the server to come back; for a
	// new connection (no failure of gRPC's cached) when there are other
	// servers to try.
	failFast bool
}

// pick returns the server of the next attempt and how many servers a round
// has. When no server can be named (no entry resolves), the attempt counts
// as a whole round.
func (c *Client) pick(ctx context.Context) (dest, int, error) {
	if c.cfg.Servers == nil {
		return dest{svc: c.cfg.Service, reset: c.cfg.ResetBackoff}, 1, nil
	}
	sc, err := c.cfg.Servers.Next(ctx)
	if err != nil {
		return dest{}, 1, err
	}
	return dest{name: sc.Endpoint.String(), svc: agentv1.NewAgentServiceClient(sc.CC), reset: sc.CC.ResetConnectBackoff,
		failFast: sc.Fresh && sc.Servers > 1}, sc.Servers, nil
}

// send hands msg to the current connection. Progress (droppable) is dropped
// when disconnected or when the queue is full; other messages wait until
// queued or the connection ends. It reports whether msg was queued.
func (c *Client) send(msg *agentv1.ConnectRequest, droppable bool) bool {
	c.mu.Lock()
	s := c.cur
	c.mu.Unlock()
	if s == nil {
		return false
	}
	return s.send(msg, droppable)
}
