package conn

import (
	"context"
	"errors"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/durationpb"

	"agentplane/agentd/internal/backoff"
	"agentplane/agentd/internal/proc"
	"agentplane/agentd/internal/state"
	agentv1 "agentplane/gen/agentplane/agent/v1"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const waitFor = 10 * time.Second

// fakeServer is a hand-written AgentService: each accepted stream (after its
// Hello, answered with a Welcome) is handed to the test on streams.
type fakeServer struct {
	agentv1.UnimplementedAgentServiceServer
	hostID    int64
	heartbeat time.Duration // the Welcome's heartbeat interval; 0 means 50ms
	streams   chan *fakeStream
	// begin answers agentd's go-ahead requests; nil answer: none is sent.
	// Unset: every command may proceed. Set it with setBegin.
	mu    sync.Mutex
	begin func(*agentv1.CommandBegin) *agentv1.CommandBeginAnswer
}

// setBegin sets how the server answers go-ahead requests.
func (f *fakeServer) setBegin(fn func(*agentv1.CommandBegin) *agentv1.CommandBeginAnswer) {
	f.mu.Lock()
	f.begin = fn
	f.mu.Unlock()
}

type fakeStream struct {
	hello *agentv1.Hello
	reqs  chan *agentv1.ConnectRequest  // every message after the Hello
	send  chan *agentv1.ConnectResponse // the test's messages to agentd
	cut   chan struct{}                 // closed by the test: the server ends the stream
	// begins receives agentd's go-ahead requests (answered by
	// fakeServer.begin), which are not in reqs.
	begins chan *agentv1.CommandBegin
}

func (f *fakeServer) Connect(stream agentv1.AgentService_ConnectServer) error {
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	hb := f.heartbeat
	if hb == 0 {
		hb = 50 * time.Millisecond
	}
	if err := stream.Send(&agentv1.ConnectResponse{Kind: &agentv1.ConnectResponse_Welcome{Welcome: &agentv1.Welcome{
		HostId: f.hostID, HeartbeatInterval: durationpb.New(hb),
	}}}); err != nil {
		return err
	}
	fs := &fakeStream{
		hello:  first.GetHello(),
		reqs:   make(chan *agentv1.ConnectRequest, 1024),
		send:   make(chan *agentv1.ConnectResponse),
		cut:    make(chan struct{}),
		begins: make(chan *agentv1.CommandBegin, 64),
	}
	ctx := stream.Context()
	select {
	case f.streams <- fs:
	case <-ctx.Done():
		return ctx.Err()
	}
	recvDone := make(chan struct{})
	go func() {
		defer close(recvDone)
		for {
			m, err := stream.Recv()
			if err != nil {
				return
			}
			if b := m.GetBegin(); b != nil {
				if !f.answerBegin(ctx, fs, b) {
					return
				}
				continue
			}
			select {
			case fs.reqs <- m:
			case <-ctx.Done():
				return
			}
		}
	}()
	for {
		select {
		case m := <-fs.send:
			if err := stream.Send(m); err != nil {
				return err
			}
		case <-recvDone: // agentd half-closed or went away
			return nil
		case <-fs.cut:
			return errors.New("cut by test")
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// answerBegin records a go-ahead request and answers it as f.begin says;
// false when the stream ended.
func (f *fakeServer) answerBegin(ctx context.Context, fs *fakeStream, b *agentv1.CommandBegin) bool {
	select {
	case fs.begins <- b:
	default:
	}
	a := &agentv1.CommandBeginAnswer{SubtaskId: b.GetSubtaskId(), Attempt: b.GetAttempt(), Proceed: true}
	f.mu.Lock()
	answer := f.begin
	f.mu.Unlock()
	if answer != nil {
		a = answer(b)
	}
	if a == nil {
		return true
	}
	select {
	case fs.send <- &agentv1.ConnectResponse{Kind: &agentv1.ConnectResponse_BeginAnswer{BeginAnswer: a}}:
		return true
	case <-fs.cut:
		return false
	case <-ctx.Done():
		return false
	}
}

// fakeRunner is a Runner whose StopAll and StartAll emit events, then
// optionally block until released or their ctx is done.
type fakeRunner struct {
	mu         sync.Mutex
	calls      int // StopAll and StartAll calls
	specReads  int // ReadStartSpec calls
	startSpecs []proc.StartSpec
	ctxErr     error
	block      bool
	started    chan struct{} // receives once per StopAll or StartAll call
	release    chan struct{}
}

func newFakeRunner(block bool) *fakeRunner {
	return &fakeRunner{block: block, started: make(chan struct{}, 16), release: make(chan struct{})}
}

var target = proc.Target{PID: 4242, Name: "ocp_mgragent", Exe: "/home/admin/ocp_agent/bin/ocp_mgragent",
	CreateTime: time.Unix(1700000000, 0)}

func (r *fakeRunner) Scan(context.Context) ([]proc.Target, error) { return []proc.Target{target}, nil }

func (r *fakeRunner) StopAll(ctx context.Context, grace time.Duration, emit func(proc.Event)) error {
	r.mu.Lock()
	r.calls++
	r.mu.Unlock()
	r.started <- struct{}{}
	emit(proc.Event{Kind: proc.EventFound, Target: target, Time: time.Now(), Message: "found"})
	emit(proc.Event{Kind: proc.EventSigtermSent, Target: target, Time: time.Now(), Message: "sigterm"})
	if r.block {
		select {
		case <-r.release:
		case <-ctx.Done():
			r.mu.Lock()
			r.ctxErr = ctx.Err()
			r.mu.Unlock()
			return ctx.Err()
		}
	}
	emit(proc.Event{Kind: proc.EventExited, Target: target, Time: time.Now(), Message: "exited"})
	return nil
}

func (r *fakeRunner) ReadStartSpec(_ context.Context, t proc.Target) (proc.StartSpec, error) {
	r.mu.Lock()
	r.specReads++
	r.mu.Unlock()
	return proc.StartSpec{Name: t.Name, PID: t.PID, CreateTime: t.CreateTime, Exe: t.Exe,
		Args: []string{t.Exe, "--flag"}, Env: []string{"A=1"}, Dir: "/", User: "admin", UID: 500, GID: 500}, nil
}

func (r *fakeRunner) StartAll(ctx context.Context, specs []proc.StartSpec, emit func(proc.Event)) (int, error) {
	r.mu.Lock()
	r.calls++
	r.startSpecs = specs
	r.mu.Unlock()
	r.started <- struct{}{}
	if r.block {
		select {
		case <-r.release:
		case <-ctx.Done():
			r.mu.Lock()
			r.ctxErr = ctx.Err()
			r.mu.Unlock()
			return 0, ctx.Err()
		}
	}
	emit(proc.Event{Kind: proc.EventOutput, Time: time.Now(), Message: "ocp_agentctl: starting"})
	emit(proc.Event{Kind: proc.EventStarted, Target: target, Time: time.Now(), Message: "started"})
	return 1, nil
}

func (r *fakeRunner) SpecReads() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.specReads
}

func (r *fakeRunner) Calls() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.calls
}

type harness struct {
	t         *testing.T
	srv       *fakeServer
	state     *state.State
	runner    Runner
	scanEvery time.Duration // Config.ScanEvery; 0 means the default
	beginWait time.Duration // Config.BeginTimeout; 0 means the default
	dir       string
	cc        *grpc.ClientConn
	cancel    context.CancelFunc
	done      chan error
}

// start runs a fake server and a Client against it; everything stops at
// test cleanup.
func start(t *testing.T, runner Runner, dir string) *harness {
	t.Helper()
	return startWith(t, runner, dir, 0, 0)
}

// startWith is start with the server's heartbeat interval (0: 50ms) and
// the Client's ScanEvery (0: the default).
func startWith(t *testing.T, runner Runner, dir string, heartbeat, scanEvery time.Duration) *harness {
	t.Helper()
	h := newHarness(t, runner, dir, heartbeat, scanEvery)
	h.run()
	return h
}

// newHarness is startWith without starting the Client: the test sets the
// harness up further, then calls run.
func newHarness(t *testing.T, runner Runner, dir string, heartbeat, scanEvery time.Duration) *harness {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &fakeServer{hostID: 42, heartbeat: heartbeat, streams: make(chan *fakeStream, 16)}
	gs := grpc.NewServer()
	agentv1.RegisterAgentServiceServer(gs, srv)
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)

	h := &harness{t: t, srv: srv, runner: runner, scanEvery: scanEvery, dir: dir}
	h.cc, err = grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.cc.Close() })
	return h
}

func (h *harness) run() {
	t := h.t
	st, err := state.Open(h.dir)
	if err != nil {
		t.Fatal(err)
	}
	h.state = st
	c := New(Config{
		Service: agentv1.NewAgentServiceClient(h.cc), State: st, Runner: h.runner,
		Token: "tok", HostName: "h1", InnerIP: "10.0.0.1", MachineID: "mid", Version: "test",
		InstallHome:     "/home/admin/ocp_agent",
		Backoff:         backoff.Backoff{Base: 5 * time.Millisecond, Cap: 50 * time.Millisecond},
		ShutdownTimeout: 2 * time.Second,
		ScanEvery:       h.scanEvery,
		BeginTimeout:    h.beginWait,
		Log:             zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.DebugLevel),
	})
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	h.done = make(chan error, 1)
	go func() { h.done <- c.Run(ctx) }()
	t.Cleanup(h.stop)
}

// stop ends the Client and waits for Run to return.
func (h *harness) stop() {
	if h.cancel == nil {
		return
	}
	h.cancel()
	h.cancel = nil
	select {
	case err := <-h.done:
		if err != nil {
			h.t.Errorf("Run: %v", err)
		}
	case <-time.After(waitFor):
		h.t.Errorf("Run did not return")
	}
	h.state.Close()
}

func (h *harness) stream() *fakeStream {
	h.t.Helper()
	select {
	case fs := <-h.srv.streams:
		return fs
	case <-time.After(waitFor):
		h.t.Fatal("no stream from agentd")
		return nil
	}
}

func (fs *fakeStream) push(t *testing.T, m *agentv1.ConnectResponse) {
	t.Helper()
	select {
	case fs.send <- m:
	case <-time.After(waitFor):
		t.Fatal("cannot send to agentd")
	}
}

// next returns the next message that is not a heartbeat.
func (fs *fakeStream) next(t *testing.T) *agentv1.ConnectRequest {
	t.Helper()
	deadline := time.After(waitFor)
	for {
		select {
		case m := <-fs.reqs:
			if m.GetHeartbeat() == nil {
				return m
			}
		case <-deadline:
			t.Fatal("no message from agentd")
			return nil
		}
	}
}

// result returns the next result, skipping progress.
func (fs *fakeStream) result(t *testing.T) *agentv1.CommandResult {
	t.Helper()
	for {
		m := fs.next(t)
		if r := m.GetResult(); r != nil {
			return r
		}
	}
}

func command(subtask int64, attempt int32, timeout time.Duration) *agentv1.ConnectResponse {
	return &agentv1.ConnectResponse{Kind: &agentv1.ConnectResponse_Command{Command: &agentv1.Command{
		SubtaskId: subtask, Attempt: attempt, Timeout: durationpb.New(timeout),
		Action: &agentv1.Command_StopAgent{StopAgent: &agentv1.StopAgentAction{}},
	}}}
}

func startCommand(subtask int64, attempt int32, timeout time.Duration) *agentv1.ConnectResponse {
	return &agentv1.ConnectResponse{Kind: &agentv1.ConnectResponse_Command{Command: &agentv1.Command{
		SubtaskId: subtask, Attempt: attempt, Timeout: durationpb.New(timeout),
		Action: &agentv1.Command_StartAgent{StartAgent: &agentv1.StartAgentAction{}},
	}}}
}

func ack(subtask int64, attempt int32) *agentv1.ConnectResponse {
	return &agentv1.ConnectResponse{Kind: &agentv1.ConnectResponse_Ack{Ack: &agentv1.ResultAck{SubtaskId: subtask, Attempt: attempt}}}
}

func poll(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		<-tick.C
	}
}

func pendingCount(t *testing.T, st *state.State) int {
	p, err := st.PendingResults()
	if err != nil {
		t.Fatal(err)
	}
	return len(p)
}

func TestHelloWelcomePersistsHostID(t *testing.T) {
	dir := t.TempDir()
	h := start(t, newFakeRunner(false), dir)
	fs := h.stream()
	hello := fs.hello
	if hello.GetToken() != "tok" || hello.GetHostId() != 0 || hello.GetHostName() != "h1" ||
		hello.GetInnerIpAddress() != "10.0.0.1" || hello.GetMachineId() != "mid" || hello.GetAgentdVersion() != "test" ||
		hello.GetInstallHome() != "/home/admin/ocp_agent" {
		t.Fatalf("hello = %v", hello)
	}
	if len(hello.GetProcesses()) != 1 || hello.GetProcesses()[0].GetPid() != target.PID {
		t.Fatalf("hello processes = %v", hello.GetProcesses())
	}
	poll(t, "host id stored", func() bool { id, _ := h.state.HostID(); return id == 42 })
	// A heartbeat arrives with the processes.
	select {
	case m := <-fs.reqs:
		if hb := m.GetHeartbeat(); hb == nil || len(hb.GetProcesses()) != 1 || hb.GetSentAt() == nil {
			t.Fatalf("first message after welcome = %v, want a heartbeat", m)
		}
	case <-time.After(waitFor):
		t.Fatal("no heartbeat")
	}
	h.stop()

	// After a restart, Hello carries the stored id; the server assigns a new one.
	h.srv.hostID = 43
	h.run()
	if got := h.stream().hello.GetHostId(); got != 42 {
		t.Fatalf("hello host_id after restart = %d, want 42", got)
	}
	poll(t, "new host id stored", func() bool { id, _ := h.state.HostID(); return id == 43 })
}

func TestCommandProgressResultAck(t *testing.T) {
	h := start(t, newFakeRunner(false), t.TempDir())
	fs := h.stream()
	// Unknown (empty) and repeated welcome messages are ignored.
	fs.push(t, &agentv1.ConnectResponse{})
	fs.push(t, &agentv1.ConnectResponse{Kind: &agentv1.ConnectResponse_Welcome{Welcome: &agentv1.Welcome{HostId: 99}}})
	fs.push(t, command(10, 1, time.Minute))

	var kinds []agentv1.ProcessEventKind
	var res *agentv1.CommandResult
	for res == nil {
		m := fs.next(t)
		if p := m.GetProgress(); p != nil {
			if p.GetSubtaskId() != 10 || p.GetAttempt() != 1 || p.GetProcess().GetPid() != target.PID || p.GetTime() == nil {
				t.Fatalf("progress = %v", p)
			}
			kinds = append(kinds, p.GetKind())
		}
		res = m.GetResult()
	}
	want := []agentv1.ProcessEventKind{
		agentv1.ProcessEventKind_PROCESS_EVENT_KIND_FOUND,
		agentv1.ProcessEventKind_PROCESS_EVENT_KIND_SIGTERM_SENT,
		agentv1.ProcessEventKind_PROCESS_EVENT_KIND_EXITED,
	}
	if len(kinds) != len(want) {
		t.Fatalf("progress kinds = %v, want %v", kinds, want)
	}
	for i := range want {
		if kinds[i] != want[i] {
			t.Fatalf("progress kinds = %v, want %v", kinds, want)
		}
	}
	if res.GetOutcome() != agentv1.CommandOutcome_COMMAND_OUTCOME_SUCCEEDED || res.GetSubtaskId() != 10 || res.GetFinishTime() == nil {
		t.Fatalf("result = %v", res)
	}
	if id, _ := h.state.HostID(); id != 42 {
		t.Fatalf("host id = %d after a repeated welcome, want 42", id)
	}
	if n := pendingCount(t, h.state); n != 1 {
		t.Fatalf("pending before ack = %d, want 1", n)
	}
	fs.push(t, ack(10, 1))
	poll(t, "outbox empty after ack", func() bool { return pendingCount(t, h.state) == 0 })
}

func TestDuplicateCommandRunsOnce(t *testing.T) {
	r := newFakeRunner(true)
	h := start(t, r, t.TempDir())
	fs := h.stream()
	fs.push(t, command(11, 2, time.Minute))
	<-r.started
	fs.push(t, command(11, 2, time.Minute)) // while running: ignored
	close(r.release)
	first := fs.result(t)
	fs.push(t, command(11, 2, time.Minute)) // after the end: the stored result
	second := fs.result(t)
	if first.GetOutcome() != agentv1.CommandOutcome_COMMAND_OUTCOME_SUCCEEDED || second.GetOutcome() != first.GetOutcome() ||
		second.GetMessage() != first.GetMessage() {
		t.Fatalf("results = %v, %v", first, second)
	}
	fs.push(t, ack(11, 2))
	fs.push(t, command(11, 2, time.Minute)) // even after the ack
	if third := fs.result(t); third.GetOutcome() != first.GetOutcome() {
		t.Fatalf("result after ack = %v", third)
	}
	if n := r.Calls(); n != 1 {
		t.Fatalf("StopAll called %d times, want 1", n)
	}
}

func TestResultDeliveredAfterStreamCut(t *testing.T) {
	r := newFakeRunner(true)
	h := start(t, r, t.TempDir())
	fs := h.stream()
	fs.push(t, command(12, 1, time.Minute))
	<-r.started
	close(fs.cut)
	fs2 := h.stream() // agentd reconnected; the command still runs
	if fs2.hello.GetHostId() != 42 {
		t.Fatalf("hello host_id on reconnect = %d", fs2.hello.GetHostId())
	}
	close(r.release)
	res := fs2.result(t)
	if res.GetSubtaskId() != 12 || res.GetOutcome() != agentv1.CommandOutcome_COMMAND_OUTCOME_SUCCEEDED {
		t.Fatalf("result = %v", res)
	}
	r.mu.Lock()
	ctxErr := r.ctxErr
	r.mu.Unlock()
	if ctxErr != nil {
		t.Fatalf("runner ctx ended: %v", ctxErr)
	}
	fs2.push(t, ack(12, 1))
	poll(t, "outbox empty", func() bool { return pendingCount(t, h.state) == 0 })
}

func TestPendingResultResentOnConnect(t *testing.T) {
	dir := t.TempDir()
	st, err := state.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Begin(13, 1); err != nil { // then "crash"
		t.Fatal(err)
	}
	st.Close()
	r := newFakeRunner(false)
	h := start(t, r, dir)
	fs := h.stream()
	res := fs.result(t)
	if res.GetSubtaskId() != 13 || res.GetOutcome() != agentv1.CommandOutcome_COMMAND_OUTCOME_FAILED || res.GetMessage() != state.RestartedMessage {
		t.Fatalf("result = %v", res)
	}
	fs.push(t, command(13, 1, time.Minute))
	if res := fs.result(t); res.GetMessage() != state.RestartedMessage {
		t.Fatalf("repeated command result = %v", res)
	}
	if r.Calls() != 0 {
		t.Fatal("crashed command was run again")
	}
}

func TestCancelAndTimeout(t *testing.T) {
	for _, tc := range []struct {
		name    string
		cmd     func(int64, int32, time.Duration) *agentv1.ConnectResponse
		timeout time.Duration
		cancel  bool
		want    string
	}{
		{"stop cancel", command, time.Minute, true, "canceled: timed out after 600s"},
		{"stop timeout", command, 100 * time.Millisecond, false, "canceled: timed out after 100ms"},
		{"start cancel", startCommand, time.Minute, true, "canceled: timed out after 600s"},
		{"start timeout", startCommand, 100 * time.Millisecond, false, "canceled: timed out after 100ms"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newFakeRunner(true)
			h := start(t, r, t.TempDir())
			fs := h.stream()
			fs.push(t, tc.cmd(14, 1, tc.timeout))
			<-r.started
			if tc.cancel {
				fs.push(t, &agentv1.ConnectResponse{Kind: &agentv1.ConnectResponse_Cancel{Cancel: &agentv1.CancelCommand{
					SubtaskId: 14, Attempt: 1, Reason: "timed out after 600s"}}})
			}
			res := fs.result(t)
			if res.GetOutcome() != agentv1.CommandOutcome_COMMAND_OUTCOME_CANCELED || res.GetMessage() != tc.want {
				t.Fatalf("result = %v, want CANCELED %q", res, tc.want)
			}
			r.mu.Lock()
			ctxErr := r.ctxErr
			r.mu.Unlock()
			if ctxErr == nil {
				t.Fatal("runner's ctx was not ended")
			}
		})
	}
}

func TestCancelBeforeStartFences(t *testing.T) {
	r := newFakeRunner(false)
	h := start(t, r, t.TempDir())
	fs := h.stream()
	fs.push(t, &agentv1.ConnectResponse{Kind: &agentv1.ConnectResponse_Cancel{Cancel: &agentv1.CancelCommand{SubtaskId: 15, Attempt: 1}}})
	if res := fs.result(t); res.GetOutcome() != agentv1.CommandOutcome_COMMAND_OUTCOME_CANCELED {
		t.Fatalf("result = %v", res)
	}
	fs.push(t, command(15, 1, time.Minute))
	if res := fs.result(t); !strings.HasPrefix(res.GetMessage(), "canceled before it started") {
		t.Fatalf("result of the late command = %v", res)
	}
	if r.Calls() != 0 {
		t.Fatal("canceled command ran")
	}
}

func TestShutdownSendsCanceledResult(t *testing.T) {
	r := newFakeRunner(true)
	h := start(t, r, t.TempDir())
	fs := h.stream()
	fs.push(t, command(16, 1, time.Minute))
	<-r.started
	h.stop()
	res := fs.result(t)
	if res.GetOutcome() != agentv1.CommandOutcome_COMMAND_OUTCOME_CANCELED || res.GetMessage() != "canceled: agentd is shutting down" {
		t.Fatalf("result = %v", res)
	}
	st, err := state.Open(h.dir)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if n := pendingCount(t, st); n != 1 {
		t.Fatalf("pending after shutdown = %d, want 1 (never acknowledged)", n)
	}
}

func TestStartAgentCommand(t *testing.T) {
	r := newFakeRunner(false)
	h := start(t, r, t.TempDir())
	fs := h.stream()
	fs.push(t, startCommand(20, 1, time.Minute))
	var kinds []agentv1.ProcessEventKind
	var res *agentv1.CommandResult
	for res == nil {
		m := fs.next(t)
		if p := m.GetProgress(); p != nil {
			kinds = append(kinds, p.GetKind())
		}
		res = m.GetResult()
	}
	want := []agentv1.ProcessEventKind{
		agentv1.ProcessEventKind_PROCESS_EVENT_KIND_OUTPUT,
		agentv1.ProcessEventKind_PROCESS_EVENT_KIND_STARTED,
	}
	if !slices.Equal(kinds, want) {
		t.Fatalf("progress kinds = %v, want %v", kinds, want)
	}
	if res.GetOutcome() != agentv1.CommandOutcome_COMMAND_OUTCOME_SUCCEEDED || res.GetSubtaskId() != 20 ||
		res.GetMessage() != "started 1 OCP Agent base processes" {
		t.Fatalf("result = %v", res)
	}
	r.mu.Lock()
	specs := r.startSpecs
	r.mu.Unlock()
	if len(specs) != 1 || specs[0].Name != target.Name || specs[0].PID != target.PID || !slices.Equal(specs[0].Args, []string{target.Exe, "--flag"}) {
		t.Fatalf("StartAll got specs %+v, want the one recorded from the scan", specs)
	}
	fs.push(t, startCommand(20, 1, time.Minute)) // repeated: the stored result
	if again := fs.result(t); again.GetMessage() != res.GetMessage() {
		t.Fatalf("repeated result = %v", again)
	}
	if n := r.Calls(); n != 1 {
		t.Fatalf("StartAll called %d times, want 1", n)
	}
}

func TestStartSpecsRecordedOncePerProcess(t *testing.T) {
	dir := t.TempDir()
	r := newFakeRunner(false)
	h := start(t, r, dir)
	fs := h.stream()
	for range 3 { // heartbeats scan again; the process is the same
		select {
		case m := <-fs.reqs:
			if m.GetHeartbeat() == nil {
				t.Fatalf("message %v, want a heartbeat", m)
			}
		case <-time.After(waitFor):
			t.Fatal("no heartbeat")
		}
	}
	if n := r.SpecReads(); n != 1 {
		t.Fatalf("ReadStartSpec called %d times over several scans, want 1", n)
	}
	specs, err := h.state.StartSpecs()
	if err != nil || len(specs) != 1 || specs[0].PID != target.PID || specs[0].User != "admin" {
		t.Fatalf("stored specs = %+v, %v", specs, err)
	}
	h.stop()

	// A restarted agentd knows the process from the state dir.
	h.run()
	fs = h.stream() // its Hello carried a scan
	if n := r.SpecReads(); n != 1 {
		t.Fatalf("ReadStartSpec called %d times after a restart, want 1", n)
	}
	fs.push(t, startCommand(21, 1, time.Minute))
	if res := fs.result(t); res.GetOutcome() != agentv1.CommandOutcome_COMMAND_OUTCOME_SUCCEEDED {
		t.Fatalf("result = %v", res)
	}
	r.mu.Lock()
	specs = r.startSpecs
	r.mu.Unlock()
	if len(specs) != 1 || specs[0].PID != target.PID {
		t.Fatalf("StartAll got specs %+v after a restart", specs)
	}
}
