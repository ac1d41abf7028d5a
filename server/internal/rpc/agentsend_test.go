package rpc

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	agentv1 "agentplane/gen/agentplane/agent/v1"
	"agentplane/server/internal/fleet"
	"agentplane/server/internal/host"
)

// named is a registry giving each host name its own id.
type named struct {
	*hosts
	mu  sync.Mutex
	ids map[string]int64
}

func (n *named) RegisterHost(_ context.Context, r host.Host, _ time.Time) (host.Host, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.ids[r.Name] == 0 {
		n.ids[r.Name] = int64(len(n.ids) + 1)
	}
	r.ID = n.ids[r.Name]
	return r, nil
}

// streamHandlers counts the goroutines running the agent stream handler
// (a receive loop of its own would be one too).
func streamHandlers() int {
	buf := make([]byte, 1<<22)
	buf = buf[:runtime.Stack(buf, true)]
	n := 0
	for g := range strings.SplitSeq(string(buf), "\n\n") {
		if strings.Contains(g, "rpc.(*agentServer).Connect") {
			n++
		}
	}
	return n
}

// An idle agent stream holds one goroutine of the adapter's, and the
// server still ends it with the session's status (fleet.Close:
// UNAVAILABLE).
func TestAgentStreamHoldsOneGoroutine(t *testing.T) {
	reg := &named{hosts: &hosts{}, ids: map[string]int64{}}
	f := fleet.New(fleet.Config{Registry: reg, Logs: reg, Token: "tok", Log: zerolog.Nop()})
	defer f.Close()
	conn := agentConn(t, f)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	const n = 20
	streams := make([]agentv1.AgentService_ConnectClient, n)
	for i := range streams {
		s, err := agentv1.NewAgentServiceClient(conn).Connect(ctx)
		if err != nil {
			t.Fatal(err)
		}
		err = s.Send(&agentv1.ConnectRequest{Kind: &agentv1.ConnectRequest_Hello{Hello: &agentv1.Hello{Token: "tok", HostName: fmt.Sprintf("h%d", i)}}})
		if err != nil {
			t.Fatal(err)
		}
		if m, err := s.Recv(); err != nil || m.GetWelcome() == nil {
			t.Fatalf("welcome: %v %v", m, err)
		}
		streams[i] = s
	}
	deadline := time.Now().Add(5 * time.Second)
	for streamHandlers() != n {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines in the agent stream handler for %d idle streams", streamHandlers(), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	f.Close()
	for i, s := range streams {
		if _, err := s.Recv(); status.Code(err) != codes.Unavailable {
			t.Fatalf("stream %d ended with %v, want Unavailable", i, err)
		}
	}
}
