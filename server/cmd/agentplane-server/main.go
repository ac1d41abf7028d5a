// Command agentplane-server is the central server: it turns requests into
// durable DAG tasks, runs them against the agentds of the fleet, and serves
// the gRPC API beside the OCP-compatible REST API.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	stdlog "log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"agentplane/internal/logging"
	"agentplane/internal/pprofserver"
	"agentplane/server/internal/agentop"
	"agentplane/server/internal/audit"
	"agentplane/server/internal/auth"
	"agentplane/server/internal/cluster"
	"agentplane/server/internal/console"
	"agentplane/server/internal/enroll"
	"agentplane/server/internal/fleet"
	srvmetrics "agentplane/server/internal/metrics"
	"agentplane/server/internal/pki"
	"agentplane/server/internal/replica"
	"agentplane/server/internal/rest"
	"agentplane/server/internal/rpc"
	"agentplane/server/internal/store"
	"agentplane/server/internal/task"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

type config struct {
	dataDir      string
	storeURL     string // "" for SQLite in dataDir, else the mysql:// URL (storeFlags.resolve)
	grpcAddr     string
	httpAddr     string
	advertise    string
	replicaID    string
	replicaLease time.Duration // a replica whose last heartbeat is older is not live
	insecure     bool
	// httpPlaintext: REST over plain HTTP on httpAddr, gRPC still on TLS.
	httpPlaintext bool
	logFormat     string
	logLevel      string
	heartbeat     time.Duration
	lostAfter     time.Duration
	shutdownWait  time.Duration
	tlsCert       string
	tlsKey        string
	caCert        string
	caKey         string
	sealKeyFile   string
	tlsSANs       listFlag
	agentCertTTL  time.Duration
	// Limits of the agent streams.
	agentMsgRate      float64
	agentMsgBurst     int
	agentMaxStreams   int
	agentReplacements int
	pprofAddr         string        // net/http/pprof on its own loopback listener; empty: off
	metricsAddr       string        // Prometheus /metrics on its own listener; empty: off
	logMaxBytes       int64         // bound of each subtask log's text
	logMaxLines       int64         // bound of each subtask log's lines
	handshake         time.Duration // a new connection's bound to handshake
	maxHandshakes     int           // gRPC TLS handshakes run at once
}

// listFlag is a repeatable flag whose values may also be comma-separated.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }

func (l *listFlag) Set(v string) error {
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			*l = append(*l, s)
		}
	}
	return nil
}

func main() {
	var c config
	fs := flag.NewFlagSet("agentplane-server", flag.ContinueOnError)
	fs.StringVar(&c.dataDir, "data-dir", "data", "directory of the SQLite database (with --store sqlite), the agent token, the CA and keys, and the admin password file")
	var sf storeFlags
	fs.StringVar(&sf.spec, "store", "sqlite", storeUsage)
	fs.StringVar(&sf.dsnFile, "store-dsn-file", "", storeDSNFileUsage)
	fs.StringVar(&c.grpcAddr, "grpc-addr", "127.0.0.1:7070", "gRPC listen address (API and agent streams)")
	fs.StringVar(&c.httpAddr, "http-addr", "127.0.0.1:8080", "HTTPS listen address: the REST API and the web console (/ui/); plain HTTP and the REST API only with --http-plaintext")
	fs.StringVar(&c.advertise, "advertise-addr", "", "host:port other replicas reach this one's gRPC listener on, registered in the store; its host is also recorded as the executor of tasks. A bare host gets --grpc-addr's port (default: this host's first non-loopback IPv4 and --grpc-addr's port)")
	fs.StringVar(&c.replicaID, "replica-id", "", "this replica's id in the store's registry: printable, at most 128 bytes; the same id after a restart takes over its row (default: <host name>:<--grpc-addr's port>)")
	fs.BoolVar(&c.insecure, "insecure", false, "serve gRPC and REST in plaintext, and let agents in with the bootstrap token (agent-token) instead of certificates")
	fs.BoolVar(&c.httpPlaintext, "http-plaintext", false, httpPlaintextUsage)
	fs.StringVar(&c.tlsCert, "tls-cert", "", "server certificate (PEM, may hold its chain) for both listeners, with --tls-key (default: generated in the data dir)")
	fs.StringVar(&c.tlsKey, "tls-key", "", "private key (PEM) of --tls-cert")
	fs.StringVar(&c.caCert, "ca-cert", "", "CA certificate (PEM) that signs and verifies agent certificates, with --ca-key; every replica of a store needs the same one (default: generated in the data dir)")
	fs.StringVar(&c.caKey, "ca-key", "", "private key (PEM) of --ca-cert")
	fs.StringVar(&c.sealKeyFile, "access-key-seal-key-file", "", "file holding the key (64 hex digits, mode 0600: refused when group or others may read it) that seals access key secrets in the store; every replica of a store needs the same one (default: access-key.key in the data dir, created if missing)")
	fs.Var(&c.tlsSANs, "tls-san", "extra DNS name or IP address for the generated server certificate (repeatable, or comma-separated)")
	fs.DurationVar(&c.agentCertTTL, "agent-cert-ttl", pki.DefaultAgentCertTTL, "validity of the client certificates signed for agents")
	fs.StringVar(&c.logFormat, "log-format", "auto", "log format: auto (console on a terminal, else json), json or console")
	fs.StringVar(&c.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.DurationVar(&c.heartbeat, "heartbeat-interval", 10*time.Second, "how often agents send heartbeats")
	fs.DurationVar(&c.lostAfter, "agent-lost-after", 30*time.Second, "an agentd silent this long is lost: its host goes OFFLINE and its running commands fail. After a restart, the agentds connected before it are waited for until this long after their reconnections settle (no host came back for one --heartbeat-interval)")
	fs.Float64Var(&c.agentMsgRate, "agent-max-msgs-per-sec", rpc.DefaultAgentMsgsPerSec, "messages per second one agent stream may send on average; a faster agent has its stream ended with RESOURCE_EXHAUSTED")
	fs.IntVar(&c.agentMsgBurst, "agent-msg-burst", rpc.DefaultAgentMsgBurst, "messages one agent stream may send at once above --agent-max-msgs-per-sec")
	fs.IntVar(&c.agentMaxStreams, "agent-max-streams", fleet.DefaultMaxStreamsPerHost, "agent streams one host may hold at once (the current one and its replacements); more are refused with RESOURCE_EXHAUSTED")
	fs.IntVar(&c.agentReplacements, "agent-max-replacements-per-min", fleet.DefaultMaxReplacementsPerMin, "how often a minute a host may replace its live agent stream by a new one; more are refused with RESOURCE_EXHAUSTED")
	fs.IntVar(&c.maxHandshakes, "grpc-max-handshakes", rpc.DefaultMaxHandshakes, "gRPC TLS handshakes run at once; more connections wait (up to 6 s, then they are closed and their clients retry), so a reconnect storm after a restart or a failover runs at the server's handshake rate instead of collapsing into client timeouts; while connections wait, no agent counts as lost (--agent-lost-after counts from the last wait)")
	fs.DurationVar(&c.shutdownWait, "shutdown-timeout", 10*time.Second, "how long shutdown waits for calls in flight")
	fs.Int64Var(&c.logMaxBytes, "subtask-log-max-bytes", task.DefaultLogMaxBytes, "bytes of text one subtask's log keeps; past them (or --subtask-log-max-lines) its oldest lines are dropped, attempt headers kept, and a marker line counts what was dropped")
	fs.Int64Var(&c.logMaxLines, "subtask-log-max-lines", task.DefaultLogMaxLines, "lines one subtask's log keeps (see --subtask-log-max-bytes)")
	fs.DurationVar(&c.handshake, "handshake-timeout", rpc.DefaultHandshakeTimeout, "how long a new connection to either listener has for its TLS handshake (gRPC: and HTTP/2 preface; REST: and request headers) before it is closed")
	fs.StringVar(&c.pprofAddr, "pprof-addr", "", "serve net/http/pprof on this loopback host:port, e.g. 127.0.0.1:6060 (default off; unauthenticated, so loopback only)")
	fs.StringVar(&c.metricsAddr, "metrics-addr", defaultMetricsAddr, metricsUsage)
	showVersion := fs.Bool("version", false, "print the version and exit")
	c.replicaLease = replica.DefaultLease
	if err := fs.Parse(os.Args[1:]); err != nil {
		os.Exit(2)
	}
	if *showVersion {
		fmt.Println("agentplane-server", version)
		return
	}
	fs.Visit(func(f *flag.Flag) { sf.specSet = sf.specSet || f.Name == "store" })
	var err error
	if c.storeURL, err = sf.resolve(); err != nil {
		fmt.Fprintln(os.Stderr, "agentplane-server:", err)
		os.Exit(2)
	}
	if c.agentCertTTL < time.Hour {
		fmt.Fprintf(os.Stderr, "agentplane-server: --agent-cert-ttl (%s) must be at least 1h\n", c.agentCertTTL)
		os.Exit(2)
	}
	if c.heartbeat <= 0 || c.lostAfter < 2*c.heartbeat {
		fmt.Fprintf(os.Stderr, "agentplane-server: --agent-lost-after (%s) must be at least twice --heartbeat-interval (%s), which must be positive\n", c.lostAfter, c.heartbeat)
		os.Exit(2)
	}
	if !(c.agentMsgRate > 0) || c.agentMsgBurst < 1 || c.agentMaxStreams < 1 || c.agentReplacements < 1 || c.maxHandshakes < 1 {
		fmt.Fprintln(os.Stderr, "agentplane-server: --agent-max-msgs-per-sec, --agent-msg-burst, --agent-max-streams, --agent-max-replacements-per-min and --grpc-max-handshakes must be positive")
		os.Exit(2)
	}
	if c.handshake <= 0 {
		fmt.Fprintln(os.Stderr, "agentplane-server: --handshake-timeout must be positive")
		os.Exit(2)
	}
	if c.logMaxBytes < 1024 || c.logMaxLines < 16 {
		fmt.Fprintln(os.Stderr, "agentplane-server: --subtask-log-max-bytes must be at least 1024 and --subtask-log-max-lines at least 16")
		os.Exit(2)
	}
	log, err := logging.New(os.Stderr, c.logFormat, c.logLevel)
	if err != nil {
		fmt.Fprintln(os.Stderr, "agentplane-server:", err)
		os.Exit(2)
	}
	logging.RouteGRPC(log)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, c, log); err != nil {
		log.Error().Err(err).Msg("server failed")
		os.Exit(1)
	}
}

func run(ctx context.Context, c config, log zerolog.Logger) error {
	if c.pprofAddr != "" {
		ps, err := pprofserver.Start(ctx, c.pprofAddr, log)
		if err != nil {
			return fmt.Errorf("--pprof-addr: %w", err)
		}
		defer ps.Close()
	}
	reg, ms, closeMetrics, err := startMetrics(ctx, c.metricsAddr, log)
	if err != nil {
		return err
	}
	defer closeMetrics()
	port, grpcLis, err := grpcPort(ctx, c.grpcAddr)
	if err != nil {
		return err
	}
	defer func() {
		if grpcLis != nil {
			grpcLis.Close() // unless served (and closed) already
		}
	}()
	id, err := resolveIdentity(c.replicaID, c.advertise, port)
	if err != nil {
		return err
	}
	c.advertise = id.advertise

	st, storeName, err := openStore(ctx, c.storeURL, c.dataDir, store.WithLogLimits(store.LogLimits{MaxBytes: c.logMaxBytes, MaxLines: c.logMaxLines}),
		store.WithCommitObserver(ms))
	if err != nil {
		return err
	}
	defer st.Close()
	log.Info().Str("store", storeName).Msg("store opened")
	sealKey, err := loadSealKey(c)
	if err != nil {
		return err
	}
	ca, err := pki.Load(pki.Config{
		Dir: c.dataDir, CACertFile: c.caCert, CAKeyFile: c.caKey, ServerCertFile: c.tlsCert, ServerKeyFile: c.tlsKey,
		Hosts: certHosts(c), AgentCertTTL: c.agentCertTTL, Log: log.With().Str("component", "pki").Logger(),
	})
	if err != nil {
		return fmt.Errorf("certificates: %w", err)
	}
	// Before anything is written: a replica the store refuses changes
	// nothing in it.
	self, err := replica.Start(ctx, replica.Config{
		Store: st, ID: id.id, Addr: id.advertise, Version: version, Shared: sharedSecrets(c, ca, sealKey),
		Lease: c.replicaLease, Log: log.With().Str("component", "replica").Logger(),
	})
	if err != nil {
		return err
	}
	defer self.Close() // after the listeners and the engine, before the store
	// The agentds connected to the previous server (or just before it
	// stopped) are on their way back: the fleet waits for them past
	// --agent-lost-after while they keep coming (fleet.Fleet.Expect).
	expected, err := hostsBack(ctx, st, c.storeURL == "", id.id, time.Now().Add(-c.lostAfter))
	if err != nil {
		return err
	}
	if c.storeURL != "" {
		// Shared store: the hosts of a replica that died with its agentds
		// are marked OFFLINE by the live ones (on SQLite a restart does it).
		sweepCtx, stopSweep := context.WithCancel(ctx)
		var sweep sync.WaitGroup
		sweep.Go(func() {
			cluster.SweepOrphanHosts(sweepCtx, st, orphanSweepEvery, c.replicaLease+c.lostAfter,
				log.With().Str("component", "cluster").Logger())
		})
		defer func() { stopSweep(); sweep.Wait() }()
	}

	users := auth.NewService(st, log)
	pwFile, err := users.Bootstrap(ctx, c.dataDir, os.Getenv("AGENTPLANE_ADMIN_PASSWORD"))
	if err != nil {
		return fmt.Errorf("creating the admin user: %w", err)
	}
	if pwFile != "" {
		log.Warn().Str("file", pwFile).Msg("created user admin with a random password; read it from the file")
	}
	keys, err := auth.NewAccessKeyService(st, st, sealKey, log.With().Str("component", "accesskeys").Logger())
	if err != nil {
		return err
	}
	// One throttle for both adapters: failures count per user and address
	// whichever API they come through.
	throttle := auth.NewThrottle(auth.ThrottleConfig{Observer: ms})
	audits := audit.NewService(st, log.With().Str("component", "audit").Logger(),
		func(ctx context.Context) error { return auth.Require(ctx, auth.RoleAdmin) })
	defer audits.Close() // before the store: writes the events kept while it could not be written
	log.Info().Str("ca_fingerprint", ca.Fingerprint()).Str("ca_subject", ca.CA().Subject.String()).Msg("agent CA")
	// Not a log line: for a human to copy, and to compare on each host with
	// `openssl x509 -noout -fingerprint -sha256 -in ca.crt` before giving
	// that file to agentd (--ca-file).
	fmt.Printf("agentplane CA fingerprint (SHA-256): %s\n", ca.Fingerprint())
	// The bootstrap token lets agents in without a certificate: only in
	// plaintext mode.
	var token string
	if c.insecure {
		log.Warn().Msg("--insecure: gRPC and REST serve PLAINTEXT, credentials and commands cross the network in the clear, and any agentd holding agent-token may speak for any host")
		if token, err = auth.LoadOrCreateAgentToken(c.dataDir); err != nil {
			return err
		}
		if c.tlsCert != "" || c.caCert != "" {
			log.Warn().Msg("--insecure: --tls-cert and --ca-cert are not used by the listeners")
		}
	}

	// The console's log streams learn of new lines through logNotes. The
	// fleet queues agents' lines on logs without waiting; the engine
	// stores the attempts' lines through it too.
	logNotes := console.NewLogNotifier(st)
	logs := task.NewLogWriter(logNotes)
	agents := fleet.New(fleet.Config{
		// Agents' progress lines, grouped into one transaction each batch.
		Registry: st, Logs: logs, Certs: st, Token: token, HeartbeatInterval: c.heartbeat, LostAfter: c.lostAfter,
		MaxStreamsPerHost: c.agentMaxStreams, MaxReplacementsPerMin: c.agentReplacements, ReplicaID: id.id,
		Log: log.With().Str("component", "fleet").Logger(),
	})
	agents.Expect(expected)
	// The replicas' hooks into the engine, set once it exists (below).
	var hooks engineHooks
	peers, router, notifier := startCluster(c, id.id, ca, st, agents, &hooks, log)
	defer router.Close() // after the engine (closed first): nothing dispatches then
	if peers != nil {
		defer peers.Close()
		defer notifier.Close()
	}
	enrollment := enroll.New(enroll.Config{
		Store: st, Signer: ca, Sessions: agents, Log: log.With().Str("component", "enroll").Logger(),
	})
	engine := task.New(task.Config{
		Store: ms.TaskStore(st), Executors: agentop.Executors(st, ms.Agents(router)), Executor: id.executor, Holds: agentop.Holds,
		Replica: id.id, Lease: c.replicaLease, OnChange: notifier.Changed, Log: log.With().Str("component", "engine").Logger(),
		// The fleet's writer: an attempt's last line is stored after the
		// go-ahead and progress lines the fleet queued (task.Config.Logs).
		Logs: logs,
	})
	hooks.set(engine)
	reg.MustRegister(srvmetrics.TasksRunning(engine.Owned))
	reg.MustRegister(srvmetrics.LogLinesDropped(logs.Dropped))
	if err := engine.Start(ctx); err != nil {
		return err
	}
	defer engine.Close()
	hosts := agentop.NewService(st, engine)
	tasks := task.NewService(engine)

	if grpcLis == nil {
		if grpcLis, err = new(net.ListenConfig).Listen(ctx, "tcp", c.grpcAddr); err != nil {
			return fmt.Errorf("gRPC listener: %w", err)
		}
	}
	httpLis, err := new(net.ListenConfig).Listen(ctx, "tcp", c.httpAddr)
	if err != nil {
		return fmt.Errorf("REST listener: %w", err)
	}
	var grpcOpts []grpc.ServerOption
	if !c.insecure {
		// Session tickets sealed with keys derived from the sealing key, which
		// every replica of a store shares: an agent resumes on any of them.
		resume := pki.Resumable(ca.MutualTLSConfig(), sealKey, nil)
		reg.MustRegister(srvmetrics.TLSHandshakes(resume.Handshakes))
		grpcOpts = append(grpcOpts, grpc.Creds(rpc.LimitHandshakesBusy(credentials.NewTLS(resume.Config()),
			c.maxHandshakes, rpc.DefaultHandshakeQueueWait, agents.Busy)))
	}
	grpcOpts = append(grpcOpts, ms.GRPCOptions()...)
	gs := rpc.NewServer(rpc.Config{Hosts: hosts, Tasks: tasks, Fleet: ms.Fleet(agents), Users: users, Enroll: enrollment,
		AccessKeys: keys, Throttle: throttle, Audit: audits, Replicas: self, Store: st, Log: log,
		AgentLimits: rpc.AgentLimits{MsgsPerSec: c.agentMsgRate, MsgBurst: c.agentMsgBurst}, HandshakeTimeout: c.handshake}, grpcOpts...)
	cluster.Register(gs, cluster.ServerConfig{Router: router, OnNotify: hooks.changed, Log: log.With().Str("component", "cluster").Logger()})
	ms.InitGRPC(gs)
	// The web console keys its session cookies with the sealing key, which
	// every replica of a store shares.
	ui, err := console.New(console.Config{Hosts: hosts, Tasks: tasks, Users: users, Throttle: throttle, Secret: sealKey,
		Insecure: c.insecure, Audit: audits, Logs: logNotes, Log: log.With().Str("component", "console").Logger()})
	if err != nil {
		return err
	}
	hs := &http.Server{
		Handler: httpHandler(c, ui, rest.NewHandler(rest.Config{Hosts: hosts, Tasks: tasks, Users: users, Enroll: enrollment,
			AccessKeys: keys, Throttle: throttle, Audit: audits, Replicas: self, Store: st, Log: log, Observer: ms})),
		// Also bounds the TLS handshake (the least of the three timeouts).
		ReadHeaderTimeout: c.handshake,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		// TLS handshake failures (scanners, plaintext clients) and the like.
		ErrorLog: stdlog.New(debugWriter{log.With().Str("component", "http").Logger()}, "", 0),
	}
	serveHTTP := httpServe(c, hs, httpLis, ca.TLSConfig(), log)
	errc := make(chan error, 2)
	agents.Serving()
	go func() { errc <- serveGRPC(gs, grpcLis) }()
	go func() { errc <- serveHTTP() }()
	log.Info().Str("grpc_addr", grpcLis.Addr().String()).Str("http_addr", httpLis.Addr().String()).Int("agents_expected", len(expected)).
		Bool("tls", !c.insecure).Bool("rest_tls", !c.restPlaintext()).Str("data_dir", c.dataDir).Str("store", storeName).Str("version", version).
		Str("replica_id", id.id).Str("advertise_addr", id.advertise).Msg("server started")

	select {
	case <-ctx.Done():
		log.Info().Msg("shutting down")
	case err = <-errc:
		log.Error().Err(err).Msg("listener failed; shutting down")
	}
	shutdown(c.shutdownWait, hs, agents, engine, gs)
	return err
}

func serveGRPC(s *grpc.Server, lis net.Listener) error {
	if err := s.Serve(lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("gRPC server: %w", err)
	}
	return nil
}

// shutdown stops REST, stops accepting gRPC connections (so agents do not
// reconnect to this server while it ends, raising their backoff), ends the
// agent streams (agents reconnect to the next server) and the engine's
// attempts and watches (their subtasks stay RUNNING for the next start),
// then waits for gRPC to stop gracefully, hard past the deadline.
func shutdown(wait time.Duration, hs *http.Server, agents *fleet.Fleet, engine *task.Engine, gs *grpc.Server) {
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	_ = hs.Shutdown(ctx)
	done := make(chan struct{})
	go func() {
		gs.GracefulStop() // closes the listeners at once, then waits for the calls
		close(done)
	}()
	agents.Close()
	engine.Close()
	select {
	case <-done:
	case <-ctx.Done():
		gs.Stop()
		<-done
	}
}

// certHosts lists what a generated server certificate must cover: the
// loopback names, this host's name, the listen and advertise hosts (c's
// advertise address resolved: host:port), and --tls-san. Wildcard addresses are dropped (pki ignores them).
func certHosts(c config) []string {
	hosts := []string{"localhost", "127.0.0.1", "::1"}
	if h, err := os.Hostname(); err == nil && h != "" {
		hosts = append(hosts, h)
	}
	for _, addr := range []string{c.grpcAddr, c.httpAddr, c.advertise} {
		if h, _, err := net.SplitHostPort(addr); err == nil {
			hosts = append(hosts, h)
		}
	}
	return append(hosts, c.tlsSANs...)
}

// debugWriter logs each line net/http writes to its error log at debug.
type debugWriter struct{ log zerolog.Logger }

func (w debugWriter) Write(p []byte) (int, error) {
	w.log.Debug().Str("error", strings.TrimSpace(string(p))).Msg("http server error")
	return len(p), nil
}

func firstIPv4() string {
	ifaces, err := net.Interfaces()
	if err == nil {
		for _, ifc := range ifaces {
			if ifc.Flags&net.FlagUp == 0 || ifc.Flags&net.FlagLoopback != 0 {
				continue
			}
			addrs, _ := ifc.Addrs()
			for _, a := range addrs {
				if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil {
					return n.IP.String()
				}
			}
		}
	}
	return "127.0.0.1"
}
