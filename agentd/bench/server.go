package bench

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
)

// AdminUser and AdminPassword are the credentials of the servers the
// benchmarks start.
const (
	AdminUser     = "admin"
	AdminPassword = "agentplane-bench-admin"
)

// Server is an agentplane-server the bench started, with TLS (the default).
type Server struct {
	env      *Env
	name     string
	DataDir  string
	GRPCAddr string
	HTTPAddr string
	Args     []string // extra flags
	Proc     *Process

	CAFile string
	TLS    *tls.Config // trusts the server's CA
	HTTP   *http.Client
}

// StartServer starts a server on fresh loopback ports with its data dir in
// Work/name, and waits until REST answers the admin.
func (e *Env) StartServer(ctx context.Context, name string, args ...string) (*Server, error) {
	s := &Server{env: e, name: name, DataDir: filepath.Join(e.Work, name), Args: args}
	var err error
	if s.GRPCAddr, err = freeAddr(ctx); err != nil {
		return nil, err
	}
	if s.HTTPAddr, err = freeAddr(ctx); err != nil {
		return nil, err
	}
	return s, s.Launch(ctx)
}

// Launch starts the server process (again, after Stop or Kill) on the same
// data dir and ports, and waits until it is ready.
func (s *Server) Launch(ctx context.Context) error {
	argv := append([]string{s.env.Binary("agentplane-server"), "--data-dir", s.DataDir, "--grpc-addr", s.GRPCAddr,
		"--http-addr", s.HTTPAddr, "--log-format", "json", "--log-level", "warn", "--metrics-addr", "127.0.0.1:0"}, s.Args...)
	p, err := s.env.Start(ctx, s.name, []string{"AGENTPLANE_ADMIN_PASSWORD=" + AdminPassword}, argv...)
	if err != nil {
		return err
	}
	s.Proc = p
	err = Poll(ctx, 60*time.Second, 20*time.Millisecond, "server ready", func() (bool, error) {
		if p.Exited() {
			return false, fmt.Errorf("server exited: %s", p.Tail(20))
		}
		return s.trustCA() && s.ready(ctx), nil
	})
	if err != nil {
		p.Kill()
	}
	return err
}

func (s *Server) trustCA() bool {
	if s.TLS != nil {
		return true
	}
	path := filepath.Join(s.DataDir, caCertFile)
	b, err := os.ReadFile(path)
	if err != nil {
		return false
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return false
	}
	s.CAFile, s.TLS = path, &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	s.HTTP = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		TLSClientConfig: s.TLS, MaxIdleConns: 256, MaxIdleConnsPerHost: 256,
	}}
	return true
}

func (s *Server) ready(ctx context.Context) bool {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.URL("/api/v2/compute/hosts"), nil)
	req.SetBasicAuth(AdminUser, AdminPassword)
	resp, err := s.HTTP.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// URL is the REST URL of path.
func (s *Server) URL(path string) string { return "https://" + s.HTTPAddr + path }

// BasicAuth is the admin's Authorization header value.
func BasicAuth() string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(AdminUser+":"+AdminPassword))
}

// Dial opens a gRPC connection to the server as the admin (TLS, Basic
// credentials in every call's metadata).
func (s *Server) Dial() (*grpc.ClientConn, error) {
	return grpc.NewClient(s.GRPCAddr, grpc.WithTransportCredentials(credentials.NewTLS(s.TLS)),
		grpc.WithUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn,
			invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			return invoker(metadata.AppendToOutgoingContext(ctx, "authorization", BasicAuth()), method, req, reply, cc, opts...)
		}),
		grpc.WithStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string,
			streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
			return streamer(metadata.AppendToOutgoingContext(ctx, "authorization", BasicAuth()), desc, cc, method, opts...)
		}))
}

// RSS is the server's resident set size.
func (s *Server) RSS() (int64, error) { return RSS(s.Proc.PID()) }

// Stop SIGTERMs the server and waits for it to exit.
func (s *Server) Stop() error { return s.Proc.Stop(30 * time.Second) }

// Kill SIGKILLs the server.
func (s *Server) Kill() { s.Proc.Kill() }

// freeAddr returns a loopback address whose port was free a moment ago.
func freeAddr(ctx context.Context) (string, error) {
	l, err := new(net.ListenConfig).Listen(ctx, "tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}
