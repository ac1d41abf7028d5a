// Command agentplane-agentd is the per-host daemon of agentplane: it keeps
// one stream to agentplane-server (--server: one, or several replicas
// tried in turn, see conn.Client.Run), registers the host, sends heartbeats,
// records how the OCP Agent's base processes were started, and stops and
// starts them when the server asks.
//
// The stream is mTLS: agentd enrolls once with a join token (--join-token)
// for a client certificate kept in its state dir, verifies the server with
// --ca-file, and renews the certificate before it expires. --insecure
// instead speaks plaintext and authenticates with the server's bootstrap
// token (--token-file), for a server that runs with --insecure.
package main

import (
	"context"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"agentplane/agentd/internal/conn"
	"agentplane/agentd/internal/identity"
	"agentplane/agentd/internal/proc"
	"agentplane/agentd/internal/servers"
	"agentplane/agentd/internal/state"
	agentv1 "agentplane/gen/agentplane/agent/v1"
	"agentplane/internal/logging"
	"agentplane/internal/pprofserver"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// Environment variables read when the flags are not given.
const (
	tokenEnv     = "AGENTPLANE_AGENT_TOKEN" // --token-file, with --insecure
	joinTokenEnv = "AGENTPLANE_JOIN_TOKEN"  // --join-token
)

// memoryLimit is agentd's soft memory limit (GOMEMLIMIT) unless the
// environment sets one. Idle, agentd's live heap is about 0.6 MB and the
// other memory the Go runtime counts about 6.5 MB, and each heartbeat's scan
// and message make ~100 KB of garbage. With no limit the heap grows to the
// runtime's 4 MB minimum goal and keeps its free pages: RSS rose to 15.0-16.0 MB
// within 20 minutes (built as make build does), against a flat 14.0-14.2 MB
// with this limit (9 MiB: 14.6 MB; GOGC=25 alone: 14.6 MB and rising). The collector
// then runs every 10-20 s at under 1 ms of CPU each; it is a soft limit, and
// the runtime caps the collector's CPU should agentd ever need more.
const memoryLimit = 8 << 20

// tuneMemory applies memoryLimit unless $GOMEMLIMIT is set, and returns the
// limit in force.
func tuneMemory() int64 {
	if _, ok := os.LookupEnv("GOMEMLIMIT"); ok {
		return debug.SetMemoryLimit(-1)
	}
	debug.SetMemoryLimit(memoryLimit)
	return memoryLimit
}

func main() {
	tuneMemory()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		fmt.Fprintf(os.Stderr, "agentplane-agentd: %v\n", err)
		stop()
		os.Exit(2)
	}
}

type options struct {
	server, tokenFile, stateDir, hostName, installHome string
	caFile, joinToken                                  string
	grace                                              time.Duration
	insecure, showVersion                              bool
	logFormat, logLevel                                string
	pprofAddr, metricsAddr                             string

	// For tests: the clock of certificate expiry and renewal, and how often
	// to check it.
	now        func() time.Time
	renewCheck time.Duration
}

func parseFlags(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("agentplane-agentd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	hostname, _ := os.Hostname()
	fs.StringVar(&o.server, "server", "127.0.0.1:7070", "agentplane-server gRPC address, host:port; or several servers (replicas), comma-separated: one stream at a time, to another on failure (a name with several addresses counts as several)")
	fs.StringVar(&o.caFile, "ca-file", "", "PEM file of the CA certificates that sign the server's certificate (required unless --insecure)")
	fs.StringVar(&o.joinToken, "join-token", "", "join token for the first enrollment, created by an admin (or set $"+joinTokenEnv+"); not needed once the state dir holds a certificate")
	fs.StringVar(&o.tokenFile, "token-file", "", "with --insecure: file holding the server's bootstrap agent-token (or set $"+tokenEnv+")")
	fs.StringVar(&o.stateDir, "state-dir", "/var/lib/agentplane-agentd", "directory for the key and certificate, the host id and the command journal")
	fs.StringVar(&o.hostName, "host-name", hostname, "host name to register (several agentds on one machine act as several hosts)")
	fs.StringVar(&o.installHome, "install-home", "/home/admin/ocp_agent", "OCP Agent install home; only processes whose executable lies under it are stopped or started")
	fs.DurationVar(&o.grace, "grace", 30*time.Second, "time between SIGTERM and SIGKILL when the server does not say")
	fs.BoolVar(&o.insecure, "insecure", false, "plaintext gRPC with the bootstrap token (--token-file), for a server run with --insecure; no TLS, no certificate")
	fs.StringVar(&o.logFormat, "log-format", "auto", "log format: auto (console on a terminal, else json), json or console")
	fs.StringVar(&o.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.StringVar(&o.pprofAddr, "pprof-addr", "", "serve net/http/pprof on this loopback host:port, e.g. 127.0.0.1:6061 (default off; unauthenticated, so loopback only)")
	fs.StringVar(&o.metricsAddr, "metrics-addr", "", "serve Prometheus metrics at /metrics on this host:port, e.g. 127.0.0.1:7091 (default off; no authentication: bind it to an address only the scrapers reach)")
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
		fmt.Fprintln(stdout, "agentplane-agentd", version)
		return nil
	}
	log, err := logging.New(stderr, o.logFormat, o.logLevel)
	if err != nil {
		return err
	}
	logging.RouteGRPC(log)
	return agent(ctx, o, log)
}

// agent runs agentd with parsed flags until ctx is done.
func agent(ctx context.Context, o options, log zerolog.Logger) error {
	entries, err := servers.Parse(o.server)
	if err != nil {
		return fmt.Errorf("--server %q: %w", o.server, err)
	}
	var token string
	var roots *x509.CertPool
	if o.insecure {
		if o.caFile != "" || o.joinToken != "" {
			return errors.New("--ca-file and --join-token are for TLS; --insecure uses plaintext and --token-file")
		}
		if token, err = readToken(o.tokenFile); err != nil {
			return err
		}
	} else {
		if o.tokenFile != "" {
			return errors.New("--token-file is the bootstrap token of --insecure; with TLS, enroll with --join-token and --ca-file")
		}
		if roots, err = readCAs(o.caFile); err != nil {
			return err
		}
		if o.joinToken == "" {
			o.joinToken = strings.TrimSpace(os.Getenv(joinTokenEnv))
		}
	}
	if o.hostName == "" {
		return errors.New("--host-name is empty and the hostname is unknown")
	}
	if !filepath.IsAbs(o.installHome) {
		return fmt.Errorf("--install-home %q is not an absolute path", o.installHome)
	}
	if o.grace <= 0 {
		return fmt.Errorf("--grace %s must be positive", o.grace)
	}
	if o.pprofAddr != "" {
		ps, err := pprofserver.Start(ctx, o.pprofAddr, log)
		if err != nil {
			return fmt.Errorf("--pprof-addr: %w", err)
		}
		defer ps.Close()
	}

	st, err := state.Open(o.stateDir, state.WithLog(log.With().Str("component", "state").Logger()))
	if err != nil {
		return fmt.Errorf("--state-dir: %w", err)
	}
	defer st.Close()
	am, closeMetrics, err := startMetrics(ctx, o.metricsAddr, st, log)
	if err != nil {
		return err
	}
	defer closeMetrics()

	ip := innerIP(ctx, entries)
	mid := machineID()
	log.Info().Str("server", o.server).Str("host_name", o.hostName).Str("inner_ip", ip).Bool("tls", !o.insecure).
		Str("state_dir", o.stateDir).Str("install_home", o.installHome).Str("version", version).
		Int64("memory_limit", debug.SetMemoryLimit(-1)).Msg("agentd starting")
	if proc.InstallHomeMissing(o.installHome) {
		log.Warn().Str("install_home", o.installHome).Msg("no OCP Agent is installed at " + o.installHome +
			": the server shows this host's agent as NOT_INSTALLED and a stop finds nothing to stop; " +
			"if the OCP Agent is installed elsewhere, start agentd with --install-home set to that directory")
	}

	creds := insecure.NewCredentials()
	serverName := "" // the name every server's certificate must carry; "": each its own
	var id *identity.Identity
	if o.insecure {
		log.Warn().Msg("--insecure: plaintext connection to the server, authenticated by the bootstrap token")
	} else {
		id, err = identity.Open(identity.Config{
			Dir: o.stateDir, Server: o.server, RootCAs: roots, JoinToken: o.joinToken,
			HostName: o.hostName, InnerIP: ip, MachineID: mid, HostIDs: st,
			CheckEvery: o.renewCheck, Now: o.now, Log: log,
		})
		if err != nil {
			return fmt.Errorf("--state-dir: %w", err)
		}
		if err := id.Ensure(ctx); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		creds = credentials.NewTLS(id.ClientTLS())
		serverName = id.ServerName()
	}

	// One connection at a time, to the server of the stream's current
	// attempt; renewal calls go on it too.
	pool := servers.NewPool(servers.Config{Entries: entries, Creds: creds, ServerName: serverName,
		Options: conn.DialOptions(), Log: log})
	defer pool.Close()
	svc := agentv1.NewAgentServiceClient(pool)

	client := conn.New(conn.Config{
		Servers:     pool,
		State:       st,
		Runner:      &proc.Stopper{InstallHome: o.installHome, Grace: o.grace, Log: log, Observer: am},
		Token:       token,
		HostName:    o.hostName,
		InnerIP:     ip,
		MachineID:   mid,
		Version:     version,
		InstallHome: o.installHome,
		Grace:       o.grace,
		Log:         log,
		OnSession:   am.OnSession,
	})

	// Renewal runs beside the stream; when the identity is lost for good
	// (expired with no token to enroll again), agentd stops with that error.
	rctx, stopRun := context.WithCancel(ctx)
	defer stopRun()
	var renewErr error
	var renewal sync.WaitGroup
	if id != nil {
		renewal.Go(func() {
			if renewErr = id.KeepRenewed(rctx, svc); renewErr != nil {
				log.Error().Err(renewErr).Msg("no usable client certificate; stopping")
				stopRun()
			}
		})
	}
	err = client.Run(rctx)
	stopRun()
	renewal.Wait()
	log.Info().Msg("agentd stopped")
	if renewErr != nil {
		return renewErr
	}
	return err
}

// readCAs reads the PEM certificates of --ca-file.
func readCAs(path string) (*x509.CertPool, error) {
	if path == "" {
		return nil, errors.New("--ca-file is required: the PEM of the CA that signs the server's certificate (or pass --insecure for plaintext)")
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

func readToken(path string) (string, error) {
	if path == "" {
		if t := strings.TrimSpace(os.Getenv(tokenEnv)); t != "" {
			return t, nil
		}
		return "", fmt.Errorf("--token-file is required with --insecure: the server's agent-token (or set $%s)", tokenEnv)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("--token-file: %w", err)
	}
	t := strings.TrimSpace(string(b))
	if t == "" {
		return "", fmt.Errorf("--token-file %s is empty", path)
	}
	return t, nil
}

// innerIP returns the local address used to reach the first server that
// resolves when it is not loopback, else the first non-loopback IPv4
// address of an up interface, else "".
func innerIP(ctx context.Context, entries []servers.Entry) string {
	for _, e := range entries {
		c, err := new(net.Dialer).DialContext(ctx, "udp", e.String()) // no packet is sent
		if err != nil {
			continue
		}
		ip := c.LocalAddr().(*net.UDPAddr).IP
		c.Close()
		if !ip.IsLoopback() && ip.To4() != nil {
			return ip.String()
		}
		break
	}
	ifaces, err := net.Interfaces()
	if err != nil {
		return ""
	}
	for _, ifc := range ifaces {
		if ifc.Flags&net.FlagUp == 0 || ifc.Flags&net.FlagLoopback != 0 {
			continue
		}
		addrs, err := ifc.Addrs()
		if err != nil {
			continue
		}
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil && !n.IP.IsLoopback() {
				return n.IP.String()
			}
		}
	}
	return ""
}

func machineID() string {
	for _, p := range []string{"/etc/machine-id", "/var/lib/dbus/machine-id"} {
		if b, err := os.ReadFile(p); err == nil {
			if id := strings.TrimSpace(string(b)); id != "" {
				return id
			}
		}
	}
	return ""
}
