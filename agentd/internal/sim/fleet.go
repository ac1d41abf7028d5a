package sim

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"agentplane/agentd/internal/backoff"
	"agentplane/agentd/internal/conn"
	"agentplane/agentd/internal/identity"
	"agentplane/agentd/internal/servers"
	"agentplane/agentd/internal/state"
	agentv1 "agentplane/gen/agentplane/agent/v1"
	hostv1 "agentplane/gen/agentplane/host/v1"
	"agentplane/internal/simplan"
)

// Defaults of Config.
const (
	DefaultEnrollConcurrency = 32
	DefaultShutdownTimeout   = 2 * time.Second
	joinTokenTTL             = time.Hour
	callTimeout              = 30 * time.Second
)

// Config configures a Fleet. Server, RootCAs, Hosts, StateDir and
// NamePrefix are required.
type Config struct {
	Server     string         // the servers' gRPC addresses, host:port, comma-separated as agentd's --server: each host streams to one at a time (servers.Pool)
	RootCAs    *x509.CertPool // the server's CA, shared by every host
	Hosts      int            // how many hosts
	First      int            // index of the first host
	StateDir   string         // host i keeps its state in StateDir/<NamePrefix>-<i>
	NamePrefix string         // host i is named <NamePrefix>-<i>, i in five digits at least

	// EnrollUser and EnrollPassword are an admin's credentials, used to
	// create a join token for each host that has no certificate yet.
	EnrollUser, EnrollPassword string
	EnrollConcurrency          int // hosts enrolling at once; default 32

	StopDelay, StartDelay time.Duration // see RunnerConfig
	FailRate              float64       // see RunnerConfig

	Version         string          // agentd version each host reports
	Backoff         backoff.Backoff // reconnect and enrollment delays; zero is agentd's default
	ShutdownTimeout time.Duration   // each client's; default 2s
	Log             zerolog.Logger
}

// Stats are a Fleet's counters. Welcomes, Disconnects, Commands, Results
// and Failed are cumulative.
type Stats struct {
	Enrolled    int64 `json:"enrolled"`    // hosts with a certificate
	Connected   int64 `json:"connected"`   // hosts whose stream is welcomed now
	Welcomes    int64 `json:"welcomes"`    // streams welcomed
	Disconnects int64 `json:"disconnects"` // welcomed streams that ended
	Commands    int64 `json:"commands"`    // stop and start commands begun
	Results     int64 `json:"results"`     // ... and ended
	Failed      int64 `json:"failed"`      // ... and ended with an error (a simulated failure, or canceled)
}

// Fleet runs the simulated hosts.
type Fleet struct {
	cfg     Config
	entries []servers.Entry // cfg.Server

	enrolled, connected, welcomes, disconnects atomic.Int64
	runs                                       RunnerStats

	adminOnce sync.Once
	admin     hostv1.HostServiceClient
	adminCC   *grpc.ClientConn
	adminErr  error
	// warm is held by the first join token request until it succeeds, so
	// the server checks the admin's password once (it caches the check)
	// instead of once per concurrent enrollment.
	warm   sync.Mutex
	warmed bool

	mu    sync.Mutex
	hosts []*host // started
}

// host is one running simulated host.
type host struct {
	st   *state.State
	pool *servers.Pool
	done chan struct{} // closed once its client and renewal have ended
}

// New checks cfg and returns a Fleet.
func New(cfg Config) (*Fleet, error) {
	switch {
	case cfg.Server == "":
		return nil, errors.New("no server address")
	case cfg.RootCAs == nil:
		return nil, errors.New("no CA to verify the server with")
	case cfg.Hosts < 1:
		return nil, fmt.Errorf("%d hosts: want at least 1", cfg.Hosts)
	case cfg.First < 0:
		return nil, fmt.Errorf("first host %d: want at least 0", cfg.First)
	case cfg.StateDir == "":
		return nil, errors.New("no state dir")
	case cfg.NamePrefix == "":
		return nil, errors.New("no name prefix")
	case !validRate(cfg.FailRate):
		return nil, fmt.Errorf("fail rate %v: want 0..1", cfg.FailRate)
	case cfg.StopDelay < 0 || cfg.StartDelay < 0:
		return nil, errors.New("negative delay")
	}
	if cfg.EnrollConcurrency <= 0 {
		cfg.EnrollConcurrency = DefaultEnrollConcurrency
	}
	if cfg.ShutdownTimeout <= 0 {
		cfg.ShutdownTimeout = DefaultShutdownTimeout
	}
	if cfg.Version == "" {
		cfg.Version = "sim"
	}
	entries, err := servers.Parse(cfg.Server)
	if err != nil {
		return nil, fmt.Errorf("server %q: %w", cfg.Server, err)
	}
	return &Fleet{cfg: cfg, entries: entries}, nil
}

// Stats returns the counters now.
func (f *Fleet) Stats() Stats {
	return Stats{
		Enrolled: f.enrolled.Load(), Connected: f.connected.Load(),
		Welcomes: f.welcomes.Load(), Disconnects: f.disconnects.Load(),
		Commands: f.runs.Commands.Load(), Results: f.runs.Results.Load(), Failed: f.runs.Failed.Load(),
	}
}

// Run enrolls the hosts that need it (EnrollConcurrency at a time) and
// starts each host's client as soon as it has its certificate, calls ready
// (when not nil) once every host's client runs, and runs them until ctx is
// done. Then it stops every client, waiting up to ShutdownTimeout and a
// little more for their streams to close, closes their connections and
// state dirs, and returns. It returns an error when a host cannot be set
// up (a refused enrollment, an unusable state dir); the hosts started by
// then are stopped first.
func (f *Fleet) Run(ctx context.Context, ready func()) error {
	defer f.closeAdmin()
	hctx, stopHosts := context.WithCancel(ctx)
	defer stopHosts()

	idx := make(chan int)
	errc := make(chan error, 1)
	var workers sync.WaitGroup
	for range min(f.cfg.EnrollConcurrency, f.cfg.Hosts) {
		workers.Go(func() {
			for i := range idx {
				if err := f.startHost(hctx, i); err != nil {
					select {
					case errc <- err:
					default:
					}
					stopHosts()
				}
			}
		})
	}
feed:
	for i := f.cfg.First; i < f.cfg.First+f.cfg.Hosts; i++ {
		select {
		case idx <- i:
		case <-hctx.Done():
			break feed
		}
	}
	close(idx)
	workers.Wait()
	f.closeAdmin()

	var err error
	select {
	case err = <-errc:
	default:
		if ctx.Err() == nil && ready != nil {
			ready()
		}
		<-hctx.Done()
	}
	stopHosts()
	f.shutdown()
	return err
}

// shutdown waits for every host's client to end (their ctx is done), then
// closes the connections of those that did not and waits a little more.
func (f *Fleet) shutdown() {
	f.mu.Lock()
	hosts := f.hosts
	f.mu.Unlock()
	deadline := time.NewTimer(f.cfg.ShutdownTimeout + 2*time.Second)
	defer deadline.Stop()
	left := 0
	for _, h := range hosts {
		select {
		case <-h.done:
		case <-deadline.C:
			left++
		}
		if left > 0 {
			break
		}
	}
	if left == 0 {
		return
	}
	for _, h := range hosts {
		_ = h.pool.Close() // ends streams still open; their clients see ctx done and return
	}
	late := time.After(2 * time.Second)
	for _, h := range hosts {
		select {
		case <-h.done:
		case <-late:
			f.cfg.Log.Warn().Msg("some simulated hosts did not stop in time")
			return
		}
	}
}

// startHost opens host i's state dir and identity, enrolls it when it has
// no valid certificate, and starts its client. Once ctx is done it returns
// nil, the host left unstarted: the fleet is stopping, which is no error.
func (f *Fleet) startHost(ctx context.Context, i int) error {
	if ctx.Err() != nil {
		return nil //nolint:nilerr // stopping is no error (see the doc)
	}
	name := simplan.HostName(f.cfg.NamePrefix, i)
	dir := filepath.Join(f.cfg.StateDir, name)
	log := f.cfg.Log.With().Str("host_name", name).Logger()
	st, err := state.Open(dir, state.WithLog(log))
	if err != nil {
		return fmt.Errorf("host %s: %w", name, err)
	}
	ip, mid := innerIP(i), machineID(f.cfg.NamePrefix, i)
	icfg := identity.Config{Dir: dir, Server: f.cfg.Server, RootCAs: f.cfg.RootCAs, HostName: name,
		InnerIP: ip, MachineID: mid, HostIDs: st, Backoff: f.cfg.Backoff, Log: log}
	id, err := identity.Open(icfg)
	if err != nil {
		st.Close()
		return fmt.Errorf("host %s: %w", name, err)
	}
	if leaf := id.Certificate(); leaf == nil || !time.Now().Before(leaf.NotAfter) {
		if icfg.JoinToken, err = f.joinToken(ctx, name); err != nil {
			st.Close()
			if ctx.Err() != nil {
				return nil //nolint:nilerr // stopping is no error (see the doc); err is the cancel's
			}
			return fmt.Errorf("host %s: creating a join token: %w", name, err)
		}
		if id, err = identity.Open(icfg); err != nil {
			st.Close()
			return fmt.Errorf("host %s: %w", name, err)
		}
	}
	if err := id.Ensure(ctx); err != nil {
		st.Close()
		if ctx.Err() != nil {
			return nil //nolint:nilerr // stopping is no error (see the doc); err is the cancel's
		}
		return fmt.Errorf("host %s: %w", name, err)
	}
	f.enrolled.Add(1)

	// One connection at a time per host, as agentd's.
	pool := servers.NewPool(servers.Config{Entries: f.entries, Creds: credentials.NewTLS(id.ClientTLS()),
		ServerName: id.ServerName(), Options: conn.DialOptions(), Log: log})
	svc := agentv1.NewAgentServiceClient(pool)
	client := conn.New(conn.Config{
		Servers:         pool,
		State:           st,
		Runner:          NewRunner(RunnerConfig{Host: i, StopDelay: f.cfg.StopDelay, StartDelay: f.cfg.StartDelay, FailRate: f.cfg.FailRate}, &f.runs),
		HostName:        name,
		InnerIP:         ip,
		MachineID:       mid,
		Version:         f.cfg.Version,
		InstallHome:     InstallHome,
		Backoff:         f.cfg.Backoff,
		ShutdownTimeout: f.cfg.ShutdownTimeout,
		Log:             log,
		OnSession: func(connected bool) {
			if connected {
				f.welcomes.Add(1)
				f.connected.Add(1)
			} else {
				f.disconnects.Add(1)
				f.connected.Add(-1)
			}
		},
	})
	h := &host{st: st, pool: pool, done: make(chan struct{})}
	f.mu.Lock()
	f.hosts = append(f.hosts, h)
	f.mu.Unlock()
	go func() {
		defer close(h.done)
		defer st.Close()
		defer pool.Close()
		rctx, stop := context.WithCancel(ctx)
		defer stop()
		var renewal sync.WaitGroup
		renewal.Go(func() {
			// As agentd: an identity lost for good stops the host.
			if err := id.KeepRenewed(rctx, svc); err != nil {
				log.Error().Err(err).Msg("no usable client certificate; stopping this host")
				stop()
			}
		})
		if err := client.Run(rctx); err != nil {
			log.Error().Err(err).Msg("client stopped")
		}
		stop()
		renewal.Wait()
	}()
	return nil
}

// joinToken creates a join token for host name as the admin.
func (f *Fleet) joinToken(ctx context.Context, name string) (string, error) {
	f.adminOnce.Do(func() {
		if f.cfg.EnrollUser == "" || f.cfg.EnrollPassword == "" {
			f.adminErr = errors.New("hosts need enrolling and no admin user and password were given")
			return
		}
		f.adminCC, f.adminErr = grpc.NewClient(f.entries[0].String(), grpc.WithTransportCredentials(credentials.NewTLS(
			&tls.Config{RootCAs: f.cfg.RootCAs, MinVersion: tls.VersionTLS12})))
		if f.adminErr == nil {
			f.admin = hostv1.NewHostServiceClient(f.adminCC)
		}
	})
	if f.adminErr != nil {
		return "", f.adminErr
	}
	f.warm.Lock()
	if f.warmed {
		f.warm.Unlock()
		return f.createJoinToken(ctx, name)
	}
	defer f.warm.Unlock()
	tok, err := f.createJoinToken(ctx, name)
	f.warmed = err == nil
	return tok, err
}

// createJoinToken calls CreateJoinToken, retrying while the server is
// unavailable.
func (f *Fleet) createJoinToken(ctx context.Context, name string) (string, error) {
	auth := "Basic " + base64.StdEncoding.EncodeToString([]byte(f.cfg.EnrollUser+":"+f.cfg.EnrollPassword))
	actx := metadata.AppendToOutgoingContext(ctx, "authorization", auth)
	for try := 0; ; try++ {
		cctx, cancel := context.WithTimeout(actx, callTimeout)
		resp, err := f.admin.CreateJoinToken(cctx, &hostv1.CreateJoinTokenRequest{HostName: name, Ttl: durationpb.New(joinTokenTTL)})
		cancel()
		if err == nil {
			return resp.GetToken(), nil
		}
		if ctx.Err() != nil {
			return "", ctx.Err()
		}
		switch status.Code(err) {
		case codes.Unavailable, codes.DeadlineExceeded, codes.ResourceExhausted:
			if try >= 20 {
				return "", err
			}
		default:
			return "", err
		}
		if err := sleep(ctx, min(time.Duration(try+1)*200*time.Millisecond, 3*time.Second)); err != nil {
			return "", err
		}
	}
}

func (f *Fleet) closeAdmin() {
	f.adminOnce.Do(func() { f.adminErr = errors.New("enrollment is over") })
	if f.adminCC != nil {
		f.adminCC.Close()
		f.adminCC = nil
	}
}

// innerIP is host i's simulated address, 10.x.y.z.
func innerIP(i int) string {
	return fmt.Sprintf("10.%d.%d.%d", (i>>16)&255, (i>>8)&255, i&255)
}

// machineID is host i's simulated /etc/machine-id: 32 hex digits.
func machineID(prefix string, i int) string {
	var h uint64 = 14695981039346656037
	for _, b := range []byte(prefix) {
		h = (h ^ uint64(b)) * 1099511628211
	}
	return fmt.Sprintf("%016x%016x", simplan.Mix(h), simplan.Mix(h^uint64(i)))
}
