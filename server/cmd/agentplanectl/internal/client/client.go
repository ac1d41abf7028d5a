// Package client is agentplanectl's gRPC connection: TLS with the server's
// CA, credentials on every call (HTTP Basic, or OCP's access-key signature
// covering the request), a timeout on unary calls, and errors turned into
// one line an operator can act on (errors.go).
package client

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	auditv1 "agentplane/gen/agentplane/audit/v1"
	hostv1 "agentplane/gen/agentplane/host/v1"
	iamv1 "agentplane/gen/agentplane/iam/v1"
	taskv1 "agentplane/gen/agentplane/task/v1"
	"agentplane/server/cmd/agentplanectl/internal/config"
	"agentplane/server/internal/auth"
)

// maxRecv is the largest answer accepted: a 10,000-host batch's task is
// several MB (README, gRPC).
const maxRecv = 64 << 20

// Client holds the connection and the service stubs.
type Client struct {
	Addr    string
	Timeout time.Duration // of each unary call

	Hosts hostv1.HostServiceClient
	Tasks taskv1.TaskServiceClient
	IAM   iamv1.IamServiceClient
	Audit auditv1.AuditServiceClient

	cc  *grpc.ClientConn
	cfg config.Resolved
	now func() time.Time
}

// New connects (lazily: the first call dials) to the resolved server.
func New(cfg config.Resolved, timeout time.Duration) (*Client, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if cfg.CAFile != "" {
		b, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, config.Errorf("CA file: %v", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(b) {
			return nil, config.Errorf("CA file %s holds no PEM certificate", cfg.CAFile)
		}
		tc.RootCAs = pool
	}
	c := &Client{Addr: cfg.Server, Timeout: timeout, cfg: cfg, now: time.Now}
	cc, err := grpc.NewClient("dns:///"+cfg.Server,
		grpc.WithTransportCredentials(credentials.NewTLS(tc)),
		// The signature covers the :authority: make it the address as given.
		grpc.WithAuthority(cfg.Server),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxRecv)),
		grpc.WithUnaryInterceptor(c.unary),
		grpc.WithUserAgent("agentplanectl"),
	)
	if err != nil {
		return nil, config.Errorf("server address %q: %v", cfg.Server, err)
	}
	c.cc = cc
	c.Hosts = hostv1.NewHostServiceClient(cc)
	c.Tasks = taskv1.NewTaskServiceClient(cc)
	c.IAM = iamv1.NewIamServiceClient(cc)
	c.Audit = auditv1.NewAuditServiceClient(cc)
	return c, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.cc.Close() }

// unary bounds each unary call by Timeout and adds its credentials.
func (c *Client) unary(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	if c.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.Timeout)
		defer cancel()
	}
	m, _ := req.(proto.Message)
	ctx, err := c.Outgoing(ctx, method, m)
	if err != nil {
		return err
	}
	return invoker(ctx, method, req, reply, cc, opts...)
}

// Outgoing returns ctx with the call's credentials in its metadata: for a
// signed call, the request's digest, the date and the signature of
// POST\n\napplication/grpc\n{date}\n{authority}\n{x-ocp-* lines}\n{method}
// (README, Access keys). Streams call it themselves with their one request.
func (c *Client) Outgoing(ctx context.Context, method string, req proto.Message) (context.Context, error) {
	switch c.cfg.Method {
	case config.Basic:
		v := base64.StdEncoding.EncodeToString([]byte(c.cfg.User + ":" + c.cfg.Password))
		return metadata.AppendToOutgoingContext(ctx, "authorization", "Basic "+v), nil
	case config.Signature:
		b, err := proto.MarshalOptions{Deterministic: true}.Marshal(req)
		if err != nil {
			return nil, fmt.Errorf("serializing the request to sign it: %w", err)
		}
		sum := sha256.Sum256(b)
		digest := hex.EncodeToString(sum[:])
		date := c.now().UTC().Format(http.TimeFormat)
		sts, err := auth.StringToSign(&auth.SignedRequest{
			Method: "POST", ContentType: "application/grpc", Date: date, Host: c.Addr, Path: method,
			Headers: map[string][]string{rpcDigestHeader: {digest}},
		})
		if err != nil {
			return nil, err
		}
		sig := auth.Sign(c.cfg.SecretKey, sts)
		return metadata.AppendToOutgoingContext(ctx, rpcDigestHeader, digest, "date", date,
			"authorization", auth.SignatureScheme+" "+c.cfg.AccessKey+":"+sig), nil
	}
	return ctx, nil
}

// rpcDigestHeader is rpc.ContentDigestHeader, the x-ocp-* metadata that
// carries the request's SHA-256 (a constant of the server's adapter, which
// this client does not import).
const rpcDigestHeader = "x-ocp-content-sha256"
