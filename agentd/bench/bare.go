package bench

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"agentplane/agentd/internal/identity"
)

// The baseline of the server's memory per connected host: a bare grpc-go
// server, in a process of its own, holding the same number of streams, each
// on its own connection, with the agent streams' transport (TLS 1.3 with
// client certificates from the same CA, no gRPC read buffer). Each stream
// is a health Watch, which idles like an agent stream between heartbeats.
// So the ratio is what agentplane adds per host on top of grpc-go's own.

// The server's data dir as the README documents it: the bench treats the
// server as a black box, like any client, and reads only these files.
const (
	caCertFile     = "ca.crt"
	serverCertFile = "server.crt"
	serverKeyFile  = "server.key"
)

// BareServerCommand is the agentplane-bench subcommand that runs it.
const BareServerCommand = "bare-grpc-server"

// RunBareServer runs the bare server: flags --addr, --data-dir (the
// agentplane server's, for its certificates). It serves until SIGTERM.
func RunBareServer(args []string) error {
	fs := flag.NewFlagSet(BareServerCommand, flag.ContinueOnError)
	addr := fs.String("addr", "127.0.0.1:0", "listen address")
	dataDir := fs.String("data-dir", "", "an agentplane server's data dir: its server certificate and CA")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cert, err := tls.LoadX509KeyPair(filepath.Join(*dataDir, serverCertFile), filepath.Join(*dataDir, serverKeyFile))
	if err != nil {
		return err
	}
	pool, err := certPool(filepath.Join(*dataDir, caCertFile))
	if err != nil {
		return err
	}
	creds := credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{cert}, ClientCAs: pool,
		ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS13})
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	lis, err := new(net.ListenConfig).Listen(ctx, "tcp", *addr)
	if err != nil {
		return err
	}
	s := grpc.NewServer(grpc.Creds(creds), grpc.ReadBufferSize(0))
	healthpb.RegisterHealthServer(s, health.NewServer())
	go func() {
		<-ctx.Done()
		s.Stop()
	}()
	fmt.Println(lis.Addr().String()) // for the bench: where it listens
	return s.Serve(lis)
}

func certPool(path string) (*x509.CertPool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("%s: no certificate", path)
	}
	return pool, nil
}

// bareRSSPerHost starts the bare server, opens n streams to it with the
// identity in idDir (an enrolled simulated host's), and returns the
// server's RSS growth per stream, measured as the fleet's.
func bareRSSPerHost(ctx context.Context, env *Env, dataDir, idDir string, n int, settle time.Duration) (int64, error) {
	out := filepath.Join(env.Work, fmt.Sprintf("bare-%d.addr", n))
	f, err := os.Create(out)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	self, err := os.Executable()
	if err != nil {
		return 0, err
	}
	p, err := env.StartWithStdout(ctx, fmt.Sprintf("bare-grpc-server-%d", n), f, self, BareServerCommand, "--data-dir", dataDir)
	if err != nil {
		return 0, err
	}
	defer func() { _ = p.Stop(10 * time.Second) }() // a stop that timed out killed it: nothing left to do
	var addr string
	err = Poll(ctx, 10*time.Second, 10*time.Millisecond, "bare grpc server listening", func() (bool, error) {
		if p.Exited() {
			return false, fmt.Errorf("exited: %s", p.Tail(5))
		}
		b, _ := os.ReadFile(out)
		if len(b) > 0 && b[len(b)-1] == '\n' {
			addr = string(b[:len(b)-1])
			return true, nil
		}
		return false, nil
	})
	if err != nil {
		return 0, err
	}
	if err := sleepCtx(ctx, 2*time.Second); err != nil {
		return 0, err
	}
	rss0, err := RSS(p.PID())
	if err != nil {
		return 0, err
	}
	cert, err := tls.LoadX509KeyPair(filepath.Join(idDir, identity.CertFile), filepath.Join(idDir, identity.KeyFile))
	if err != nil {
		return 0, err
	}
	pool, err := certPool(filepath.Join(dataDir, caCertFile))
	if err != nil {
		return 0, err
	}
	creds := credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool, MinVersion: tls.VersionTLS13})
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var conns []*grpc.ClientConn
	defer func() {
		for _, cc := range conns {
			cc.Close()
		}
	}()
	for range n {
		cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
		if err != nil {
			return 0, err
		}
		conns = append(conns, cc)
		w, err := healthpb.NewHealthClient(cc).Watch(sctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(true))
		if err != nil {
			return 0, fmt.Errorf("bare stream: %w", err)
		}
		if _, err := w.Recv(); err != nil { // the stream is up
			return 0, fmt.Errorf("bare stream: %w", err)
		}
	}
	if err := sleepCtx(ctx, settle); err != nil {
		return 0, err
	}
	rssN, err := RSS(p.PID())
	if err != nil {
		return 0, err
	}
	return (rssN - rss0) / int64(n), nil
}
