package rpc

import (
	"errors"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/credentials"
)

// heldCreds is a server handshake that reads the client's first bytes,
// then holds until release is closed.
type heldCreds struct {
	credentials.TransportCredentials
	release chan struct{}
	read    chan []byte
}

func (h heldCreds) ServerHandshake(c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	b := make([]byte, 3)
	if _, err := io.ReadFull(c, b); err != nil {
		return nil, nil, err
	}
	h.read <- b
	<-h.release
	return c, nil, nil
}

type handshook struct {
	err error
}

func serverHandshake(creds credentials.TransportCredentials, c net.Conn) <-chan handshook {
	done := make(chan handshook, 1)
	go func() {
		_, _, err := creds.ServerHandshake(c)
		done <- handshook{err}
	}()
	return done
}

func TestLimitHandshakes(t *testing.T) {
	inner := heldCreds{release: make(chan struct{}), read: make(chan []byte, 3)}
	creds := LimitHandshakes(inner, 1, 300*time.Millisecond)

	// A connection that has not spoken takes no slot.
	silentS, silentC := net.Pipe()
	defer silentC.Close()
	silent := serverHandshake(creds, silentS)

	firstS, firstC := net.Pipe()
	defer firstC.Close()
	first := serverHandshake(creds, firstS)
	go firstC.Write([]byte("abc"))
	select {
	case b := <-inner.read:
		if string(b) != "abc" { // the byte read to wait for the client is replayed
			t.Fatalf("handshake read %q", b)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the first handshake did not run while a silent connection waited")
	}

	// The slot is taken: the next waits, and is closed after the wait.
	secondS, secondC := net.Pipe()
	defer secondC.Close()
	began := time.Now()
	second := serverHandshake(creds, secondS)
	go secondC.Write([]byte("def"))
	select {
	case r := <-second:
		if !errors.Is(r.err, errHandshakeQueue) {
			t.Fatalf("second handshake: %v", r.err)
		}
		if took := time.Since(began); took < 300*time.Millisecond {
			t.Fatalf("refused after %s", took)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the second handshake waited past its bound")
	}

	// Once the first ends, the slot is free again.
	close(inner.release)
	if r := <-first; r.err != nil {
		t.Fatal(r.err)
	}
	thirdS, thirdC := net.Pipe()
	defer thirdC.Close()
	third := serverHandshake(creds, thirdS)
	go thirdC.Write([]byte("ghi"))
	if r := <-third; r.err != nil {
		t.Fatal(r.err)
	}
	silentC.Close()
	if r := <-silent; r.err == nil {
		t.Fatal("a client that closed without a byte handshook")
	}
}

// TestLimitHandshakesReportsBusy: a connection that finds every slot taken
// reports the server busy (the fleet then counts no agent lost meanwhile);
// one that finds a slot free does not.
func TestLimitHandshakesReportsBusy(t *testing.T) {
	inner := heldCreds{release: make(chan struct{}), read: make(chan []byte, 3)}
	var busy atomic.Int64
	creds := LimitHandshakesBusy(inner, 1, 100*time.Millisecond, func() { busy.Add(1) })

	firstS, firstC := net.Pipe()
	defer firstC.Close()
	first := serverHandshake(creds, firstS)
	go firstC.Write([]byte("abc"))
	select {
	case <-inner.read:
	case <-time.After(5 * time.Second):
		t.Fatal("the first handshake did not run")
	}
	if n := busy.Load(); n != 0 {
		t.Fatalf("busy reported %d times with a free slot", n)
	}
	secondS, secondC := net.Pipe()
	defer secondC.Close()
	second := serverHandshake(creds, secondS)
	go secondC.Write([]byte("def"))
	if r := <-second; !errors.Is(r.err, errHandshakeQueue) {
		t.Fatalf("second handshake: %v", r.err)
	}
	if n := busy.Load(); n != 1 {
		t.Fatalf("busy reported %d times for one connection waiting, want 1", n)
	}
	close(inner.release)
	if r := <-first; r.err != nil {
		t.Fatal(r.err)
	}
}
