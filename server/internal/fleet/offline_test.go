package fleet

import (
	"context"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"agentplane/server/internal/host"
)

// fencedRegistry is a registry whose OFFLINE write is fenced by the
// stream's epoch (StreamRegistry), held until release is closed.
type fencedRegistry struct {
	*registry
	writing chan struct{} // gets one when SetHostOffline is first called
	release chan struct{}
}

func (r *fencedRegistry) SetHostOffline(_ context.Context, id, epoch int64) (bool, error) {
	select {
	case r.writing <- struct{}{}:
	default:
	}
	<-r.release // as the store's, once queued: whatever ctx does (the test closes it)
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.epochs[id] != epoch {
		return false, nil
	}
	r.status[id] = host.StatusOffline
	return true, nil
}

// TestAStreamEndDoesNotHoldTheHostsNextStream: while a stream's end waits
// for its OFFLINE write (queued behind a busy store writer), the host's
// next stream registers on this replica at once; the write, fenced by the
// old stream's epoch, then leaves the new stream's ONLINE.
func TestAStreamEndDoesNotHoldTheHostsNextStream(t *testing.T) {
	reg := &fencedRegistry{registry: newRegistry(), writing: make(chan struct{}, 1), release: make(chan struct{})}
	h, err := reg.RegisterHost(context.Background(), host.Host{Name: "a"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	f := New(Config{Registry: reg, Logs: reg.registry, Log: zerolog.Nop(), CancelWait: time.Second})
	defer f.Close()
	hello := Hello{Identity: &Identity{HostID: h.ID, HostName: "a"}, HostName: "a"}
	old, _, err := f.Connect(context.Background(), hello)
	if err != nil {
		t.Fatal(err)
	}
	ended := make(chan struct{})
	go func() {
		defer close(ended)
		f.Disconnect(old)
	}()
	<-reg.writing
	type connected struct {
		s   *Session
		err error
	}
	next := make(chan connected, 1)
	go func() {
		s, _, err := f.Connect(context.Background(), hello)
		next <- connected{s, err}
	}()
	var c connected
	select {
	case c = <-next:
	case <-time.After(30 * time.Second):
		close(reg.release)
		<-ended
		t.Fatal("the host's next stream waited for the old stream's OFFLINE write")
	}
	close(reg.release)
	<-ended
	if c.err != nil {
		t.Fatal(c.err)
	}
	defer f.Disconnect(c.s)
	if c.s.Epoch != old.Epoch+1 {
		t.Fatalf("next stream's epoch %d after %d", c.s.Epoch, old.Epoch)
	}
	if st := reg.statusOf(h.ID); st != host.StatusOnline {
		t.Fatalf("host %s after the old stream's end was written, want ONLINE", st)
	}
	if f.settled(h.ID) != c.s {
		t.Fatal("the next stream is not the host's session")
	}
}
