package rpc

import (
	"errors"
	"net"
	"time"

	"google.golang.org/grpc/credentials"
)

// Defaults of LimitHandshakes, for agentplane-server.
const (
	// DefaultMaxHandshakes bounds the TLS handshakes run at once. A slot
	// is held across the client's round trips too, so the bound must
	// cover a slow client fleet's latency (512 at 0.5 s each is 1,000
	// handshakes a second), while the CPU of that many (a few ms each)
	// keeps each under a second or two on two busy cores.
	DefaultMaxHandshakes = 512
	// DefaultHandshakeQueueWait is how long a connection may wait for a
	// handshake slot: well under agentd's 20 s connect timeout, so a client
	// still waits when its handshake runs, and under the server's
	// --handshake-timeout (10 s), which bounds the handshake that follows.
	DefaultHandshakeQueueWait = 6 * time.Second
)

// errHandshakeQueue is why a connection that waited too long for a slot is
// closed.
var errHandshakeQueue = errors.New("too many TLS handshakes in progress; retry")

// LimitHandshakes returns creds that run at most n server handshakes at
// once, in arrival order. A connection that has not sent its first byte
// takes no slot; one that waits more than wait for a slot (counted from its
// accept) is closed unhandshaken, and its client retries with its backoff.
// n < 1: no bound.
//
// Without it, 10,000 agents reconnecting to a restarted server run 10,000
// handshakes at once on a few cores; each takes thousands of times its CPU
// cost, the clients' connect timeouts pass first, and they retry: the
// server spends its CPU on handshakes nobody waits for, and the reconnect
// storm collapses to a few accepts a second. Bounded, each handshake
// finishes in time and the storm runs at the server's real handshake rate.
func LimitHandshakes(c credentials.TransportCredentials, n int, wait time.Duration) credentials.TransportCredentials {
	return LimitHandshakesBusy(c, n, wait, nil)
}

// LimitHandshakesBusy is LimitHandshakes, calling busy (when not nil)
// each time a connection finds every slot taken: the server is taking
// more connections than it can at once (fleet.Fleet.Busy). busy must be
// cheap and must not block.
func LimitHandshakesBusy(c credentials.TransportCredentials, n int, wait time.Duration, busy func()) credentials.TransportCredentials {
	if n < 1 {
		return c
	}
	if busy == nil {
		busy = func() {}
	}
	return &limitedCreds{TransportCredentials: c, slots: make(chan struct{}, n), wait: wait, busy: busy}
}

type limitedCreds struct {
	credentials.TransportCredentials
	slots chan struct{}
	wait  time.Duration
	busy  func()
}

func (l *limitedCreds) ServerHandshake(raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	deadline := time.Now().Add(l.wait)
	// Until the client speaks, waiting for it costs nothing; gRPC's
	// connection timeout bounds this read.
	first := make([]byte, 1)
	if _, err := raw.Read(first); err != nil {
		return nil, nil, err
	}
	select {
	case l.slots <- struct{}{}: // a free slot is taken even past the deadline
	default:
		l.busy()
		t := time.NewTimer(time.Until(deadline))
		select {
		case l.slots <- struct{}{}:
			t.Stop()
		case <-t.C:
			return nil, nil, errHandshakeQueue
		}
	}
	defer func() { <-l.slots }()
	return l.TransportCredentials.ServerHandshake(&replayConn{Conn: raw, first: first})
}

func (l *limitedCreds) Clone() credentials.TransportCredentials {
	return &limitedCreds{TransportCredentials: l.TransportCredentials.Clone(), slots: l.slots, wait: l.wait, busy: l.busy}
}

// replayConn reads first before the rest of Conn.
type replayConn struct {
	net.Conn
	first []byte
}

func (c *replayConn) Read(p []byte) (int, error) {
	if len(c.first) > 0 {
		n := copy(p, c.first)
		c.first = c.first[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}
