package rpc

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	agentv1 "agentplane/gen/agentplane/agent/v1"
	"agentplane/server/internal/fleet"
	"agentplane/server/internal/host"
	"agentplane/server/internal/task"
)

// hosts is a hand-written fleet.Registry and fleet.Logs.
type hosts struct {
	mu     sync.Mutex
	hello  host.Host
	status host.Status
}

func (h *hosts) RegisterHost(_ context.Context, r host.Host, _ time.Time) (host.Host, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	r.ID, h.hello, h.status = 1, r, host.StatusOnline
	return r, nil
}

func (h *hosts) GetHost(_ context.Context, id int64) (*host.Host, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	r := h.hello
	return &r, nil
}

func (h *hosts) HostSeen(context.Context, int64, time.Time, []host.Process) error { return nil }

func (h *hosts) HostsSeen(context.Context, map[int64]time.Time) error { return nil }

func (h *hosts) SetHostStatus(_ context.Context, _ int64, st host.Status) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.status = st
	return nil
}

func (h *hosts) AttemptLive(context.Context, int64, int64, int) (bool, error) { return false, nil }

func (h *hosts) AppendSubtaskLog(context.Context, int64, task.LogLine) error { return nil }

func (h *hosts) get() (host.Host, host.Status) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.hello, h.status
}

// TestSilentAgentStreamIsEndedAndItsHostGoesOffline runs the stream adapter
// over an in-memory connection: a Hello's install home and processes reach
// the registry, and an agent that then stays silent past the lost bound has
// its stream ended and its host OFFLINE.
func TestSilentAgentStreamIsEndedAndItsHostGoesOffline(t *testing.T) {
	reg := &hosts{}
	f := fleet.New(fleet.Config{Registry: reg, Logs: reg, Token: "tok", Log: zerolog.Nop(), LostAfter: 200 * time.Millisecond})
	defer f.Close()
	conn := agentConn(t, f)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := agentv1.NewAgentServiceClient(conn).Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	err = stream.Send(&agentv1.ConnectRequest{Kind: &agentv1.ConnectRequest_Hello{Hello: &agentv1.Hello{
		Token: "tok", HostName: "h1", InstallHome: "/home/admin/ocp_agent",
		Processes: []*agentv1.Process{{Pid: 7, Name: "ocp_agentd"}},
	}}})
	if err != nil {
		t.Fatal(err)
	}
	if m, err := stream.Recv(); err != nil || m.GetWelcome().GetHostId() != 1 {
		t.Fatalf("welcome: %v %v", m, err)
	}
	h, st := reg.get()
	if h.InstallHome != "/home/admin/ocp_agent" || len(h.Processes) != 1 || h.Processes[0].Status != host.AgentStarted ||
		st != host.StatusOnline {
		t.Fatalf("registered %+v, %s", h, st)
	}
	// Silence: the server ends the stream.
	if _, err := stream.Recv(); status.Code(err) != codes.Aborted {
		t.Fatalf("stream of a silent agent ended with %v, want Aborted", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, st := reg.get(); st == host.StatusOffline {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("host still ONLINE after its agent was lost")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// agentConn serves the stream adapter over f on an in-memory connection
// and returns a client connection to it; both end with the test.
func agentConn(t *testing.T, f *fleet.Fleet) *grpc.ClientConn {
	t.Helper()
	lis := bufconn.Listen(1 << 20)
	gs := grpc.NewServer()
	agentv1.RegisterAgentServiceServer(gs, &agentServer{fleet: f, log: zerolog.Nop()})
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop)
	conn, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

func TestToOutboundActions(t *testing.T) {
	stop := toOutbound(fleet.Outbound{Command: &fleet.Command{SubtaskID: 1, Attempt: 2, StopAgent: &fleet.StopAgent{Grace: time.Second}}})
	if a := stop.GetCommand().GetStopAgent(); a == nil || a.GetGrace().AsDuration() != time.Second {
		t.Fatalf("stop: %v", stop)
	}
	start := toOutbound(fleet.Outbound{Command: &fleet.Command{SubtaskID: 1, Attempt: 3, StartAgent: &fleet.StartAgent{}}})
	if start.GetCommand().GetStartAgent() == nil || start.GetCommand().GetAttempt() != 3 {
		t.Fatalf("start: %v", start)
	}
}
