// Command agentplane-agentd is the per-host daemon of agentplane: it keeps
// one stream to agentplane-server, registers the host, sends heartbeats,
// records how the OCP Agent's base processes were started, and stops and
// starts them when the server asks.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"

	"agentplane/agentd/conn"
	"agentplane/agentd/proc"
	"agentplane/agentd/state"
	agentv1 "agentplane/gen/agentplane/agent/v1"
	"agentplane/server/logging"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

const tokenEnv = "AGENTPLANE_AGENT_TOKEN"

func main() {
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
	grace                                              time.Duration
	insecure, showVersion                              bool
	logFormat, logLevel                                string
}

func parseFlags(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("agentplane-agentd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	hostname, _ := os.Hostname()
	fs.StringVar(&o.server, "server", "127.0.0.1:7070", "agentplane-server gRPC address, host:port")
	fs.StringVar(&o.tokenFile, "token-file", "", "file holding the enrollment token (or set $"+tokenEnv+")")
	fs.StringVar(&o.stateDir, "state-dir", "/var/lib/agentplane-agentd", "directory for the host id and the command journal")
	fs.StringVar(&o.hostName, "host-name", hostname, "host name to register (several agentds on one machine act as several hosts)")
	fs.StringVar(&o.installHome, "install-home", "/home/admin/ocp_agent", "OCP Agent install home; only processes whose executable lies under it are stopped or started")
	fs.DurationVar(&o.grace, "grace", 30*time.Second, "time between SIGTERM and SIGKILL when the server does not say")
	fs.BoolVar(&o.insecure, "insecure", false, "allow plaintext gRPC to a non-loopback server (TLS is not supported yet)")
	fs.StringVar(&o.logFormat, "log-format", "auto", "log format: auto (console on a terminal, else json), json or console")
	fs.StringVar(&o.logLevel, "log-level", "info", "log level: debug, info, warn or error")
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
	token, err := readToken(o.tokenFile)
	if err != nil {
		return err
	}
	if err := checkServer(o.server, o.insecure); err != nil {
		return err
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
	logging.RouteGRPC(log)

	st, err := state.Open(o.stateDir)
	if err != nil {
		return fmt.Errorf("--state-dir: %w", err)
	}
	defer st.Close()

	cc, err := grpc.NewClient(o.server,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 10 * time.Second, PermitWithoutStream: true}),
	)
	if err != nil {
		return fmt.Errorf("--server %q: %w", o.server, err)
	}
	defer cc.Close()

	ip := innerIP(o.server)
	client := conn.New(conn.Config{
		Service:     agentv1.NewAgentServiceClient(cc),
		State:       st,
		Runner:      &proc.Stopper{InstallHome: o.installHome, Grace: o.grace, Log: log},
		Token:       token,
		HostName:    o.hostName,
		InnerIP:     ip,
		MachineID:   machineID(),
		Version:     version,
		InstallHome: o.installHome,
		Grace:       o.grace,
		Log:         log,
	})
	log.Info().Str("server", o.server).Str("host_name", o.hostName).Str("inner_ip", ip).
		Str("state_dir", o.stateDir).Str("install_home", o.installHome).Str("version", version).Msg("agentd starting")
	err = client.Run(ctx)
	log.Info().Msg("agentd stopped")
	return err
}

func readToken(path string) (string, error) {
	if path == "" {
		if t := strings.TrimSpace(os.Getenv(tokenEnv)); t != "" {
			return t, nil
		}
		return "", fmt.Errorf("--token-file is required (or set $%s)", tokenEnv)
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

// checkServer refuses plaintext to a non-loopback address unless insecure.
func checkServer(addr string, insecure bool) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil || port == "" {
		return fmt.Errorf("--server %q: want host:port", addr)
	}
	if insecure || isLoopback(host) {
		return nil
	}
	return fmt.Errorf("--server %s is not a loopback address and TLS is not supported yet; pass --insecure to use plaintext", addr)
}

func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// innerIP returns the local address used to reach the server when it is not
// loopback, else the first non-loopback IPv4 address of an up interface,
// else "".
func innerIP(server string) string {
	if c, err := net.Dial("udp", server); err == nil { // no packet is sent
		ip := c.LocalAddr().(*net.UDPAddr).IP
		c.Close()
		if !ip.IsLoopback() && ip.To4() != nil {
			return ip.String()
		}
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
