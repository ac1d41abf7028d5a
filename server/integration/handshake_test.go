package integration_test

import (
	"errors"
	"net"
	"testing"
	"time"
)

// TestSilentConnectionsClosed: a TCP connection that never starts its TLS
// handshake (nor sends anything) is closed by both listeners once the
// handshake bound (--handshake-timeout) has passed, instead of being held.
func TestSilentConnectionsClosed(t *testing.T) {
	t.Parallel()
	const bound = time.Second
	s := startServer(t, "--handshake-timeout", bound.String())
	for name, addr := range map[string]string{"gRPC": s.grpcAddr, "REST": s.httpAddr} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			start := time.Now()
			// Far past the bound: a connection still open then is held.
			_ = c.SetReadDeadline(start.Add(15 * bound))
			_, err = c.Read(make([]byte, 1))
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatalf("the %s listener still holds a silent connection after %s (bound %s)", name, time.Since(start).Round(time.Second), bound)
			}
			t.Logf("closed after %s: %v", time.Since(start).Round(10*time.Millisecond), err)
		})
	}
}
