// Command agentplane-server is the central server: it turns requests into
// durable DAG tasks, runs them against the agentds of the fleet, and serves
// the gRPC API beside the OCP-compatible REST API.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"google.golang.org/grpc"

	"agentplane/server/agentop"
	"agentplane/server/auth"
	"agentplane/server/fleet"
	"agentplane/server/logging"
	"agentplane/server/rest"
	"agentplane/server/rpc"
	"agentplane/server/store"
	"agentplane/server/task"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

type config struct {
	dataDir      string
	grpcAddr     string
	httpAddr     string
	advertise    string
	insecure     bool
	logFormat    string
	logLevel     string
	heartbeat    time.Duration
	lostAfter    time.Duration
	shutdownWait time.Duration
}

func main() {
	var c config
	fs := flag.NewFlagSet("agentplane-server", flag.ContinueOnError)
	fs.StringVar(&c.dataDir, "data-dir", "data", "directory of the SQLite database, the agent token and the admin password file")
	fs.StringVar(&c.grpcAddr, "grpc-addr", "127.0.0.1:7070", "gRPC listen address (API and agent streams)")
	fs.StringVar(&c.httpAddr, "http-addr", "127.0.0.1:8080", "REST listen address")
	fs.StringVar(&c.advertise, "advertise-addr", "", "address recorded as the executor of tasks (default: this host's first non-loopback IPv4)")
	fs.BoolVar(&c.insecure, "insecure", false, "allow plaintext listeners on non-loopback addresses")
	fs.StringVar(&c.logFormat, "log-format", "auto", "log format: auto (console on a terminal, else json), json or console")
	fs.StringVar(&c.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.DurationVar(&c.heartbeat, "heartbeat-interval", 10*time.Second, "how often agents send heartbeats")
	fs.DurationVar(&c.lostAfter, "agent-lost-after", 30*time.Second, "an agentd silent this long is lost: its host goes OFFLINE and its running commands fail")
	fs.DurationVar(&c.shutdownWait, "shutdown-timeout", 10*time.Second, "how long shutdown waits for calls in flight")
	showVersion := fs.Bool("version", false, "print the version and exit")
	if err := fs.Parse(os.Args[1:]); err != nil {
		os.Exit(2)
	}
	if *showVersion {
		fmt.Println("agentplane-server", version)
		return
	}
	if c.heartbeat <= 0 || c.lostAfter < 2*c.heartbeat {
		fmt.Fprintf(os.Stderr, "agentplane-server: --agent-lost-after (%s) must be at least twice --heartbeat-interval (%s), which must be positive\n", c.lostAfter, c.heartbeat)
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
	for _, addr := range []string{c.grpcAddr, c.httpAddr} {
		if err := checkPlaintext(addr, c.insecure); err != nil {
			return err
		}
	}
	if c.advertise == "" {
		c.advertise = firstIPv4()
	}

	st, err := store.Open(ctx, c.dataDir)
	if err != nil {
		return err
	}
	defer st.Close()
	if err := st.MarkAllOffline(ctx); err != nil {
		return err
	}

	users := auth.NewService(st, log)
	pwFile, err := users.Bootstrap(ctx, c.dataDir, os.Getenv("AGENTPLANE_ADMIN_PASSWORD"))
	if err != nil {
		return fmt.Errorf("creating the admin user: %w", err)
	}
	if pwFile != "" {
		log.Warn().Str("file", pwFile).Msg("created user admin with a random password; read it from the file")
	}
	token, err := auth.LoadOrCreateAgentToken(c.dataDir)
	if err != nil {
		return err
	}

	agents := fleet.New(fleet.Config{
		Registry: st, Logs: st, Token: token, HeartbeatInterval: c.heartbeat, LostAfter: c.lostAfter,
		Log: log.With().Str("component", "fleet").Logger(),
	})
	engine := task.New(task.Config{
		Store: st, Executors: agentop.Executors(st, agents), Executor: c.advertise,
		Log: log.With().Str("component", "engine").Logger(),
	})
	if err := engine.Start(ctx); err != nil {
		return err
	}
	defer engine.Close()
	hosts := agentop.NewService(st, engine)

	grpcLis, err := net.Listen("tcp", c.grpcAddr)
	if err != nil {
		return fmt.Errorf("gRPC listener: %w", err)
	}
	httpLis, err := net.Listen("tcp", c.httpAddr)
	if err != nil {
		grpcLis.Close()
		return fmt.Errorf("REST listener: %w", err)
	}
	gs := rpc.NewServer(rpc.Config{Hosts: hosts, Tasks: engine, Fleet: agents, Users: users, Log: log})
	hs := &http.Server{
		Handler:           rest.NewHandler(rest.Config{Hosts: hosts, Tasks: engine, Users: users, Log: log}),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
	}
	errc := make(chan error, 2)
	go func() { errc <- serveGRPC(gs, grpcLis) }()
	go func() { errc <- hs.Serve(httpLis) }()
	log.Info().Str("grpc_addr", grpcLis.Addr().String()).Str("http_addr", httpLis.Addr().String()).
		Str("data_dir", c.dataDir).Str("version", version).Msg("server started")

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

// shutdown stops REST, ends the agent streams (agents reconnect to the next
// server) and the engine's attempts and watches (their subtasks stay RUNNING
// for the next start), then stops gRPC gracefully, hard past the deadline.
func shutdown(wait time.Duration, hs *http.Server, agents *fleet.Fleet, engine *task.Engine, gs *grpc.Server) {
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	_ = hs.Shutdown(ctx)
	agents.Close()
	engine.Close()
	done := make(chan struct{})
	go func() {
		gs.GracefulStop()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		gs.Stop()
		<-done
	}
}

// checkPlaintext refuses a plaintext listener on a non-loopback address
// unless insecure is set: TLS arrives in a later release.
func checkPlaintext(addr string, insecure bool) error {
	h, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("listen address %q: %w", addr, err)
	}
	if ip := net.ParseIP(h); (ip != nil && ip.IsLoopback()) || h == "localhost" || insecure {
		return nil
	}
	return fmt.Errorf("listen address %q is not loopback: plaintext there needs --insecure", addr)
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
