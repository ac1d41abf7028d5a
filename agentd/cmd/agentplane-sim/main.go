// Command agentplane-sim simulates a fleet of agentd hosts for benchmarks and
// tests: --hosts streams to the server, each a distinct host on its own TCP
// connection and mTLS identity, speaking the real protocol through agentd's
// own client (package conn), with a simulated OCP Agent (package sim).
//
// Hosts that have no certificate in their state dir yet are enrolled first:
// the simulator creates a join token for each (HostService.CreateJoinToken,
// as --enroll-user with the password in $--enroll-password-env) and enrolls
// with it, --enroll-concurrency at a time. Host i keeps its state in
// --state-dir/<prefix>-<i>, so a later run reuses the identities.
//
// On stdout it prints a JSON line every --stats-interval:
//
//	{"t":"RFC3339Nano","enrolled":n,"connected":n,"welcomes":n,"disconnects":n,"commands":n,"results":n,"failed":n}
//
// (welcomes and the rest are cumulative), a line with "event":"ready" once
// every host is enrolled and its client runs, and one with "event":"stopped"
// at exit. SIGTERM or SIGINT stops every client and exits 0.
package main

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"agentplane/agentd/internal/servers"
	"agentplane/agentd/internal/sim"
	"agentplane/internal/logging"
)

var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		fmt.Fprintf(os.Stderr, "agentplane-sim: %v\n", err)
		stop()
		os.Exit(2)
	}
}

type options struct {
	server, caFile, stateDir, namePrefix string
	hosts, first, enrollConcurrency      int
	enrollUser, enrollPasswordEnv        string
	stopDelay, startDelay, statsInterval time.Duration
	failRate                             float64
	logFormat, logLevel                  string
	showVersion                          bool
}

func parseFlags(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("agentplane-sim", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.server, "server", "127.0.0.1:7070", "agentplane-server gRPC addresses, host:port, comma-separated (several replicas): each host streams to one at a time, in its own order, as agentd")
	fs.StringVar(&o.caFile, "ca-file", "", "PEM file of the CA that signs the server's certificate (required)")
	fs.IntVar(&o.hosts, "hosts", 1, "number of simulated hosts")
	fs.IntVar(&o.first, "first", 0, "index of the first host: hosts are first..first+hosts-1")
	fs.StringVar(&o.stateDir, "state-dir", "/dev/shm/agentplane-sim", "root of the hosts' state dirs (host i uses <state-dir>/<prefix>-<i>); tmpfs makes the journal's fsyncs cheap")
	fs.StringVar(&o.namePrefix, "name-prefix", "sim", "host names are <prefix>-00000, <prefix>-00001, ...")
	fs.StringVar(&o.enrollUser, "enroll-user", "admin", "admin user that creates join tokens for hosts not enrolled yet")
	fs.StringVar(&o.enrollPasswordEnv, "enroll-password-env", "AGENTPLANE_ADMIN_PASSWORD", "environment variable holding --enroll-user's password")
	fs.IntVar(&o.enrollConcurrency, "enroll-concurrency", sim.DefaultEnrollConcurrency, "hosts enrolling at once")
	fs.DurationVar(&o.stopDelay, "stop-delay", 0, "how long a stop command takes")
	fs.DurationVar(&o.startDelay, "start-delay", 0, "how long a start command takes")
	fs.Float64Var(&o.failRate, "fail-rate", 0, "fraction of stop commands that fail (0..1), decided by host and stop number")
	fs.DurationVar(&o.statsInterval, "stats-interval", 100*time.Millisecond, "how often to print a stats line on stdout")
	fs.StringVar(&o.logFormat, "log-format", "json", "log format (stderr): auto, json or console")
	fs.StringVar(&o.logLevel, "log-level", "warn", "log level: debug, info, warn or error")
	fs.BoolVar(&o.showVersion, "version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	return o, nil
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	o, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	if o.showVersion {
		fmt.Fprintln(stdout, "agentplane-sim", version)
		return nil
	}
	if o.statsInterval <= 0 {
		return fmt.Errorf("--stats-interval %s must be positive", o.statsInterval)
	}
	if _, err := servers.Parse(o.server); err != nil {
		return fmt.Errorf("--server %q: %w", o.server, err)
	}
	roots, err := readCAs(o.caFile)
	if err != nil {
		return err
	}
	// Each host holds a socket and its state dir's lock.
	if need, have := uint64(2*o.hosts+100), fileLimit(); have < need {
		return fmt.Errorf("open-file limit %d is below the %d that %d hosts need (a socket and a lock each); raise ulimit -n or run several simulators with --first",
			have, need, o.hosts)
	}
	log, err := logging.New(stderr, o.logFormat, o.logLevel)
	if err != nil {
		return err
	}
	logging.RouteGRPC(log)

	f, err := sim.New(sim.Config{
		Server: o.server, RootCAs: roots, Hosts: o.hosts, First: o.first, StateDir: o.stateDir, NamePrefix: o.namePrefix,
		EnrollUser: o.enrollUser, EnrollPassword: os.Getenv(o.enrollPasswordEnv), EnrollConcurrency: o.enrollConcurrency,
		StopDelay: o.stopDelay, StartDelay: o.startDelay, FailRate: o.failRate, Version: version, Log: log,
	})
	if err != nil {
		return err
	}

	out := &printer{w: stdout}
	sctx, stopStats := context.WithCancel(context.Background())
	var stats sync.WaitGroup
	stats.Go(func() {
		t := time.NewTicker(o.statsInterval)
		defer t.Stop()
		for {
			select {
			case <-sctx.Done():
				return
			case <-t.C:
				out.line("", f.Stats())
			}
		}
	})
	began := time.Now()
	err = f.Run(ctx, func() {
		log.Info().Int("hosts", o.hosts).Dur("took", time.Since(began)).Msg("every host enrolled and started")
		out.line("ready", f.Stats())
	})
	stopStats()
	stats.Wait()
	out.line("stopped", f.Stats())
	return err
}

// printer writes the stats lines, one at a time.
type printer struct {
	mu sync.Mutex
	w  io.Writer
}

type statsLine struct {
	Event string `json:"event,omitempty"`
	T     string `json:"t"`
	sim.Stats
}

func (p *printer) line(event string, s sim.Stats) {
	b, _ := json.Marshal(statsLine{Event: event, T: time.Now().UTC().Format(time.RFC3339Nano), Stats: s})
	p.mu.Lock()
	defer p.mu.Unlock()
	_, _ = p.w.Write(append(b, '\n')) // stats lines are best effort: a closed stdout must not stop the fleet
}

// readCAs reads the PEM certificates of --ca-file.
func readCAs(path string) (*x509.CertPool, error) {
	if path == "" {
		return nil, errors.New("--ca-file is required: the PEM of the CA that signs the server's certificate")
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--ca-file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("--ca-file %s: no PEM certificate", path)
	}
	return pool, nil
}

// fileLimit is the soft open-file limit (Go raises it to the hard limit at
// startup).
func fileLimit() uint64 {
	var l syscall.Rlimit
	_ = syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l)
	return l.Cur
}
