package servers

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
)

// Config configures a Pool. Entries and Creds are required.
type Config struct {
	Entries []Entry                          // from Parse
	Creds   credentials.TransportCredentials // of every connection
	// ServerName, when set, is the name every server's certificate must
	// carry, as a fixed name in Creds' tls.Config (which must be the same,
	// or gRPC refuses the connection); default each entry's host.
	ServerName     string
	Options        []grpc.DialOption // more options of every connection (keepalive, backoff)
	Resolver       Resolver          // default net.DefaultResolver
	ResolveTimeout time.Duration     // of one entry's lookup; default DefaultResolveTimeout
	Rand           *rand.Rand        // draws the order; default a random seed
	Log            zerolog.Logger
}

// Conn is the connection of one attempt.
type Conn struct {
	Endpoint Endpoint
	CC       *grpc.ClientConn
	Servers  int  // how many endpoints the list resolved to at this attempt: a round
	Fresh    bool // CC was made for this attempt: it holds no failure of an earlier one
}

// Pool holds agentd's one connection to the server of the current attempt
// and picks the server of the next one (Next). Connections are made by
// grpc.NewClient on the endpoint's address, with the entry as authority, so
// the server's certificate is checked for the name dialled; with
// Config.ServerName, that name is checked for every endpoint instead. Pool is also a grpc.ClientConnInterface over the
// current connection, for calls beside the stream (certificate renewal).
// Its methods are safe for concurrent use.
type Pool struct {
	cfg Config

	nextMu sync.Mutex // serializes Next: guards rot
	rot    *rotation

	mu     sync.Mutex // guards the fields below
	cur    Conn       // CC nil before the first Next
	closed bool
}

var _ grpc.ClientConnInterface = (*Pool)(nil)

// NewPool returns a Pool; it connects nothing until Next.
func NewPool(cfg Config) *Pool {
	if cfg.Resolver == nil {
		cfg.Resolver = netResolver{}
	}
	if cfg.ResolveTimeout <= 0 {
		cfg.ResolveTimeout = DefaultResolveTimeout
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
	}
	return &Pool{cfg: cfg, rot: newRotation(cfg)}
}

// Next returns the connection to the next server in this agentd's order
// (resolving every entry again, so that a changed DNS answer is seen). The
// connection of the previous attempt is kept when the next server is the
// same (one server: always), else closed. The returned connection is the
// Pool's: do not close it. Next returns an error when no entry resolves,
// and when the Pool is closed.
func (p *Pool) Next(ctx context.Context) (Conn, error) {
	p.nextMu.Lock()
	defer p.nextMu.Unlock()
	ep, n, err := p.rot.next(ctx)
	if err != nil {
		return Conn{}, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return Conn{}, errors.New("servers: pool closed")
	}
	if p.cur.CC != nil && p.cur.Endpoint == ep {
		p.cur.Servers, p.cur.Fresh = n, false
		return p.cur, nil
	}
	cc, err := p.dial(ep)
	if err != nil {
		return Conn{}, err
	}
	if p.cur.CC != nil {
		p.cur.CC.Close()
	}
	p.cur = Conn{Endpoint: ep, CC: cc, Servers: n, Fresh: true}
	return p.cur, nil
}

// dial returns a connection (not yet connected) to ep.
func (p *Pool) dial(ep Endpoint) (*grpc.ClientConn, error) {
	// The TLS name checked is the host of the authority (grpc-go's
	// credentials.NewTLS): the entry's, not the address's.
	authority := ep.Entry.String()
	if p.cfg.ServerName != "" {
		authority = p.cfg.ServerName
	}
	opts := append([]grpc.DialOption{grpc.WithTransportCredentials(p.cfg.Creds), grpc.WithAuthority(authority)}, p.cfg.Options...)
	cc, err := grpc.NewClient("passthrough:///"+ep.Addr, opts...)
	if err != nil {
		return nil, fmt.Errorf("server %s: %w", ep, err)
	}
	return cc, nil
}

// Close closes the current connection; Next fails afterwards.
func (p *Pool) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	if p.cur.CC == nil {
		return nil
	}
	err := p.cur.CC.Close()
	p.cur.CC = nil
	return err
}

func (p *Pool) current() (*grpc.ClientConn, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cur.CC == nil {
		return nil, status.Error(codes.Unavailable, "not connected to any server")
	}
	return p.cur.CC, nil
}

// Invoke calls method on the current connection.
func (p *Pool) Invoke(ctx context.Context, method string, args, reply any, opts ...grpc.CallOption) error {
	cc, err := p.current()
	if err != nil {
		return err
	}
	return cc.Invoke(ctx, method, args, reply, opts...)
}

// NewStream opens a stream on the current connection.
func (p *Pool) NewStream(ctx context.Context, desc *grpc.StreamDesc, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	cc, err := p.current()
	if err != nil {
		return nil, err
	}
	return cc.NewStream(ctx, desc, method, opts...)
}

// netResolver is net.DefaultResolver, read at each call.
type netResolver struct{}

func (netResolver) LookupHost(ctx context.Context, host string) ([]string, error) {
	return net.DefaultResolver.LookupHost(ctx, host)
}
