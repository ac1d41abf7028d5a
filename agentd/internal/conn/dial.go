package conn

import (
	"fmt"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
)

// Dial returns agentd's connection to the server (not yet connected; the
// first call connects). Keepalive pings (every 10 s of silence from the
// server, given up 20 s later) find a dead or frozen server, or a cut
// network, within 30 s, so that agentd moves to another replica; a server
// that is only busy (taking thousands of reconnects on loaded cores)
// answers within that, and its established streams stay.
//
// Reconnects are paced by Client's own backoff, with full jitter, not by
// gRPC's: Client calls ResetConnectBackoff before each attempt and waits for
// the connection (up to WelcomeTimeout), so one attempt is one real try. gRPC's
// backoff only spaces the tries within one attempt, at most a second apart,
// so an agent is back within about a second of the server, never after a
// cached failure of gRPC's; 10,000 agents after a server restart spread over
// the jitter of their own backoffs. For several servers, servers.Pool makes
// the connections with DialOptions, and a new one fails its attempt at its
// first failure (see Client.Run): refused at once, or not connected (TCP,
// TLS and HTTP/2 preface) within connectTimeout.
func Dial(server string, creds credentials.TransportCredentials) (*grpc.ClientConn, error) {
	cc, err := grpc.NewClient(server, append([]grpc.DialOption{grpc.WithTransportCredentials(creds)}, DialOptions()...)...)
	if err != nil {
		return nil, fmt.Errorf("server %q: %w", server, err)
	}
	return cc, nil
}

// Keepalive: a ping after keepaliveTime without a frame from the server,
// and the connection given up keepaliveTimeout later without an answer (any
// frame read meanwhile counts as one). A surviving replica taking a dead
// one's reconnects on two loaded cores answered pings 5-15 s late: with a
// 5 s timeout its established streams were dropped and reconnected in
// turn, each costing another TLS handshake and registration, a storm that
// fed itself. 20 s is gRPC's own default.
//
// connectTimeout bounds one connection attempt (TCP, the TLS handshake and
// the server's HTTP/2 preface). A busy server queues handshakes (see the
// server's --grpc-max-handshakes, whose queue wait is shorter than this):
// a client that gave up sooner had its handshake done for nothing and
// queued again. A frozen or unreachable server costs one attempt this
// long before the next server is tried.
const (
	keepaliveTime    = 10 * time.Second
	keepaliveTimeout = 20 * time.Second
	connectTimeout   = 20 * time.Second
)

// DialOptions are Dial's options but the credentials: keepalive and gRPC's
// backoff within one attempt, for a servers.Pool of several servers.
func DialOptions() []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: keepaliveTime, Timeout: keepaliveTimeout, PermitWithoutStream: true}),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second},
			MinConnectTimeout: connectTimeout,
		}),
	}
}
