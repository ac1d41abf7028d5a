package conn

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"agentplane/agentd/internal/backoff"
	"agentplane/agentd/internal/state"
	agentv1 "agentplane/gen/agentplane/agent/v1"
)

// sessionLog records OnSession calls.
type sessionLog struct {
	mu    sync.Mutex
	calls []bool
}

func (l *sessionLog) add(connected bool) {
	l.mu.Lock()
	l.calls = append(l.calls, connected)
	l.mu.Unlock()
}

func (l *sessionLog) get() []bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]bool(nil), l.calls...)
}

func TestOnSession(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &fakeServer{hostID: 42, streams: make(chan *fakeStream, 16)}
	gs := grpc.NewServer()
	agentv1.RegisterAgentServiceServer(gs, srv)
	go gs.Serve(lis)
	defer gs.Stop()
	cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	st, err := state.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()

	var log sessionLog
	c := New(Config{
		Service: agentv1.NewAgentServiceClient(cc), State: st, Runner: newFakeRunner(false),
		Token: "tok", HostName: "h1", InstallHome: "/home/admin/ocp_agent",
		Backoff:         backoff.Backoff{Base: 5 * time.Millisecond, Cap: 50 * time.Millisecond},
		ShutdownTimeout: 2 * time.Second,
		Log:             zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.DebugLevel),
		OnSession:       log.add,
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()

	fs := waitStream(t, srv)
	poll(t, "connected", func() bool { return len(log.get()) == 1 })
	if got := log.get(); !got[0] {
		t.Fatalf("calls after welcome = %v, want [true]", got)
	}

	// The server ends the stream: false, then true once reconnected.
	close(fs.cut)
	waitStream(t, srv)
	poll(t, "disconnected and reconnected", func() bool { return len(log.get()) == 3 })
	if got := log.get(); got[1] || !got[2] {
		t.Fatalf("calls after a cut = %v, want [true false true]", got)
	}

	// Shutdown ends the session: false.
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(waitFor):
		t.Fatal("Run did not return")
	}
	if got := log.get(); len(got) != 4 || got[3] {
		t.Fatalf("calls after shutdown = %v, want [true false true false]", got)
	}
}

func waitStream(t *testing.T, srv *fakeServer) *fakeStream {
	t.Helper()
	select {
	case fs := <-srv.streams:
		return fs
	case <-time.After(waitFor):
		t.Fatal("no stream from agentd")
		return nil
	}
}
