package rpc

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	agentv1 "agentplane/gen/agentplane/agent/v1"
	"agentplane/server/internal/errs"
	"agentplane/server/internal/fleet"
	"agentplane/server/internal/host"
	"agentplane/server/internal/task"
)

// fuzzRegistry is a hand-written fleet.Registry and fleet.Logs for any
// number of hosts, recording the log lines appended by subtask.
type fuzzRegistry struct {
	mu   sync.Mutex
	ids  map[string]int64
	logs map[int64][]string
}

func (r *fuzzRegistry) RegisterHost(_ context.Context, h host.Host, _ time.Time) (host.Host, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	id, ok := r.ids[h.Name]
	if !ok {
		id = int64(len(r.ids) + 1)
		r.ids[h.Name] = id
	}
	h.ID = id
	return h, nil
}

func (r *fuzzRegistry) GetHost(_ context.Context, id int64) (*host.Host, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for name, hid := range r.ids {
		if hid == id {
			return &host.Host{ID: id, Name: name}, nil
		}
	}
	return nil, fmt.Errorf("host %d: %w", id, errs.ErrNotFound)
}

func (r *fuzzRegistry) HostSeen(context.Context, int64, time.Time, []host.Process) error { return nil }

func (r *fuzzRegistry) HostsSeen(context.Context, map[int64]time.Time) error { return nil }

func (r *fuzzRegistry) SetHostStatus(context.Context, int64, host.Status) error { return nil }

// AttemptLive says that attempt 1 of subtask fuzzLiveSubtask is still
// running, as after a server restart before the engine resumed it.
func (r *fuzzRegistry) AttemptLive(_ context.Context, _, subtask int64, attempt int) (bool, error) {
	return subtask == fuzzLiveSubtask && attempt == 1, nil
}

func (r *fuzzRegistry) AppendSubtaskLog(_ context.Context, subtask int64, l task.LogLine) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.logs[subtask] = append(r.logs[subtask], l.Line)
	return nil
}

func (r *fuzzRegistry) logLines(subtask int64) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.logs[subtask])
}

// Subtasks of the agent-message fuzz target: one in flight on the
// stream's own host, one on another host, one whose attempt is live in the
// store but not dispatched.
const (
	fuzzOwnSubtask   = 7
	fuzzOtherSubtask = 8
	fuzzLiveSubtask  = 9
)

// agentSeeds are messages an agent sends, well-formed and not.
func agentSeeds() []*agentv1.ConnectRequest {
	now := timestamppb.New(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC))
	res := func(subtask int64, attempt int32, o agentv1.CommandOutcome) *agentv1.ConnectRequest {
		return &agentv1.ConnectRequest{Kind: &agentv1.ConnectRequest_Result{Result: &agentv1.CommandResult{
			SubtaskId: subtask, Attempt: attempt, Outcome: o, Message: "done", FinishTime: now,
		}}}
	}
	return []*agentv1.ConnectRequest{
		{},
		heartbeat(),
		{Kind: &agentv1.ConnectRequest_Heartbeat{Heartbeat: &agentv1.Heartbeat{SentAt: now, Processes: []*agentv1.Process{
			{Pid: 1, Name: "ocp_agentd", Exe: "/home/admin/ocp_agent/bin/ocp_agentd", Cmdline: "ocp_agentd -d", User: "admin", CreateTime: now},
			{Pid: 2, Name: "sshd"},
		}}}},
		progress(fuzzOwnSubtask, 1, "stopping ocp_agentd"),
		progress(fuzzOtherSubtask, 1, "forged"),
		{Kind: &agentv1.ConnectRequest_Progress{Progress: &agentv1.CommandProgress{SubtaskId: fuzzOwnSubtask, Attempt: 1, Time: &timestamppb.Timestamp{Seconds: -1 << 62, Nanos: -5}}}},
		res(fuzzOwnSubtask, 1, agentv1.CommandOutcome_COMMAND_OUTCOME_SUCCEEDED),
		res(fuzzOwnSubtask, 2, agentv1.CommandOutcome_COMMAND_OUTCOME_FAILED),
		res(fuzzOtherSubtask, 1, agentv1.CommandOutcome_COMMAND_OUTCOME_SUCCEEDED),
		res(fuzzLiveSubtask, 1, agentv1.CommandOutcome_COMMAND_OUTCOME_CANCELED),
		res(fuzzOwnSubtask, 1, agentv1.CommandOutcome_COMMAND_OUTCOME_UNSPECIFIED),
		res(fuzzOwnSubtask, 1, agentv1.CommandOutcome(99)),
		{Kind: &agentv1.ConnectRequest_Hello{Hello: &agentv1.Hello{HostName: "own"}}},
		{Kind: &agentv1.ConnectRequest_Hello{Hello: &agentv1.Hello{HostName: "other", HostId: 2, Token: "tok"}}},
		{Kind: &agentv1.ConnectRequest_Hello{Hello: &agentv1.Hello{HostName: "own", HostId: 1, Processes: []*agentv1.Process{{Name: "ocp_monagent"}}}}},
	}
}

// FuzzAgentMessage feeds bytes an agent could send on its stream through
// the server's handling: proto.Unmarshal (what gRPC does first), then the
// conversion, then the fleet, for a connected session of host "own" while a
// command is in flight to it and another to host "other". A Hello goes to
// fleet.Connect as the first message of a stream whose certificate names
// "own". Whatever the bytes: no panic; errors are ErrInvalidArgument (or a
// refusal of the Hello); a session is only ever for "own"; a result reaches
// only the dispatch it answers; progress is logged only for "own"'s
// command; both sessions stay up.
func FuzzAgentMessage(f *testing.F) {
	for _, m := range agentSeeds() {
		b, err := proto.Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{0xff, 0xff})
	f.Fuzz(func(t *testing.T, data []byte) {
		var m agentv1.ConnectRequest
		if proto.Unmarshal(data, &m) != nil {
			return // gRPC ends the stream before the server's code sees it
		}
		reg := &fuzzRegistry{ids: map[string]int64{}, logs: map[int64][]string{}}
		fl := fleet.New(fleet.Config{Registry: reg, Logs: reg, Token: "tok", Log: zerolog.Nop()})
		defer fl.Close()
		ctx := context.Background()
		own, _, err := fl.Connect(ctx, fleet.Hello{Token: "tok", HostName: "own"})
		if err != nil {
			t.Fatal(err)
		}
		other, _, err := fl.Connect(ctx, fleet.Hello{Token: "tok", HostName: "other"})
		if err != nil {
			t.Fatal(err)
		}
		dctx, stop := context.WithCancelCause(ctx)
		var wg sync.WaitGroup
		results := map[int64]*fleet.Result{}
		var rmu sync.Mutex
		for _, d := range []struct {
			s       *fleet.Session
			subtask int64
		}{{own, fuzzOwnSubtask}, {other, fuzzOtherSubtask}} {
			wg.Go(func() {
				r, err := fl.Dispatch(dctx, d.s.HostID, fleet.Command{SubtaskID: d.subtask, Attempt: 1, StopAgent: &fleet.StopAgent{}})
				if err == nil {
					rmu.Lock()
					results[d.subtask] = &r
					rmu.Unlock()
				}
			})
			<-d.s.Out() // the command went out: it is in flight
		}
		defer func() {
			stop(task.ErrShutdown) // Dispatch returns at once, keeping no cancel
			wg.Wait()
			if own.Err() != nil || other.Err() != nil {
				t.Fatalf("a session ended: own %v, other %v", own.Err(), other.Err())
			}
			if r := results[fuzzOtherSubtask]; r != nil {
				t.Fatalf("another host's command got a result from this stream: %+v", r)
			}
			if n := reg.logLines(fuzzOtherSubtask); n != 0 {
				t.Fatalf("another host's command got %d log lines from this stream", n)
			}
			want := m.GetResult() != nil && m.GetResult().GetSubtaskId() == fuzzOwnSubtask && m.GetResult().GetAttempt() == 1 &&
				outcomes[m.GetResult().GetOutcome()] != 0 && len(m.GetResult().GetMessage()) <= fleet.MaxTextBytes
			if r := results[fuzzOwnSubtask]; (r != nil) != want || r != nil && r.Message != m.GetResult().GetMessage() {
				t.Fatalf("own command's result %+v for %v", r, &m)
			}
		}()

		if hello := m.GetHello(); hello != nil {
			ident := &fleet.Identity{HostID: own.HostID, HostName: "own"}
			s, _, err := fl.Connect(ctx, fromHello(ident, hello))
			if err != nil {
				if !errors.Is(err, errs.ErrInvalidArgument) && !errors.Is(err, errs.ErrPermissionDenied) && !errors.Is(err, errs.ErrTooManyRequests) {
					t.Fatalf("Connect: unexpected error %v", err)
				}
				return
			}
			if s.HostID != own.HostID {
				t.Fatalf("a stream of host %d got a session for host %d", own.HostID, s.HostID)
			}
			// It replaced own's session; put own's back as it was.
			fl.Disconnect(s)
			if own, _, err = fl.Connect(ctx, fleet.Hello{Token: "tok", HostName: "own"}); err != nil {
				t.Fatal(err)
			}
			<-own.Out() // the command in flight, re-sent
		}

		in, err := fromInbound(&m)
		if err != nil {
			if !errors.Is(err, errs.ErrInvalidArgument) {
				t.Fatalf("fromInbound: %v, want ErrInvalidArgument", err)
			}
			return
		}
		for range 2 { // and again, as after a reconnect
			if err := fl.Receive(ctx, own, in); err != nil && !errors.Is(err, errs.ErrInvalidArgument) {
				t.Fatalf("Receive: %v, want nil or ErrInvalidArgument", err)
			} else if err != nil && !strings.Contains(err.Error(), "allowed") && !strings.Contains(err.Error(), "only the base") {
				t.Fatalf("Receive refused a converted message without naming a bound: %v", err)
			}
		}
	})
}
