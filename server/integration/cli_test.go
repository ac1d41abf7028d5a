package integration_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	hostv1 "agentplane/gen/agentplane/host/v1"
	iamv1 "agentplane/gen/agentplane/iam/v1"
	taskv1 "agentplane/gen/agentplane/task/v1"
)

// agentplanectl, the CLI, run as a process against a real server and
// agentds: the exit statuses, the outputs scripts parse, the configuration
// (environment, a context file with an access key) and a watch that
// survives a cut connection.

// ctlBin is agentplanectl, built with -race on first use.
var ctlBin = &lazyBin{name: "agentplanectl", args: []string{"-race", "./server/cmd/agentplanectl"}}

func ctl(t *testing.T) string {
	t.Helper()
	return ctlBin.get(t)
}

// ctlResult is how a run of the CLI ended.
type ctlResult struct {
	code           int
	stdout, stderr string
}

func (r ctlResult) String() string {
	return fmt.Sprintf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
}

// ctlEnv is a clean environment for the CLI: no AGENTPLANE_* of the
// caller's, a HOME without a config file, plus env.
func ctlEnv(t *testing.T, env ...string) []string {
	t.Helper()
	var out []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "AGENTPLANE_") && !strings.HasPrefix(kv, "HOME=") && !strings.HasPrefix(kv, "XDG_CONFIG_HOME=") {
			out = append(out, kv)
		}
	}
	return append(append(out, "HOME="+t.TempDir(), "GORACE=atexit_sleep_ms=0"), env...)
}

// adminEnv connects as admin through the environment.
func (s *server) adminEnv(t *testing.T) []string {
	return ctlEnv(t, "AGENTPLANE_SERVER="+s.grpcAddr, "AGENTPLANE_CA_FILE="+s.caFile,
		"AGENTPLANE_USER="+admin.user, "AGENTPLANE_PASSWORD="+admin.pass)
}

// runCtl runs the CLI with env and args, stdin from stdin, and waits up to
// 2 minutes for it. No output may contain the admin's password.
func runCtl(t *testing.T, env []string, stdin string, args ...string) ctlResult {
	t.Helper()
	p := startCtl(t, env, stdin, args...)
	return p.wait(t)
}

// ctlProc is a running CLI whose output a test reads while it runs.
type ctlProc struct {
	cmd            *exec.Cmd
	cancel         context.CancelFunc
	mu             sync.Mutex
	stdout, stderr bytes.Buffer
	done           chan struct{}
	err            error
}

type lockedWriter struct {
	mu *sync.Mutex
	b  *bytes.Buffer
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func startCtl(t *testing.T, env []string, stdin string, args ...string) *ctlProc {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	p := &ctlProc{cmd: exec.CommandContext(ctx, ctl(t), args...), cancel: cancel, done: make(chan struct{})}
	p.cmd.Env = env
	p.cmd.Stdin = strings.NewReader(stdin)
	p.cmd.Stdout, p.cmd.Stderr = lockedWriter{&p.mu, &p.stdout}, lockedWriter{&p.mu, &p.stderr}
	if err := p.cmd.Start(); err != nil {
		cancel()
		t.Fatalf("starting agentplanectl: %v", err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() { cancel(); <-p.done })
	return p
}

func (p *ctlProc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stdout.String()
}

func (p *ctlProc) wait(t *testing.T) ctlResult {
	t.Helper()
	<-p.done
	p.cancel()
	r := ctlResult{stdout: p.output()}
	p.mu.Lock()
	r.stderr = p.stderr.String()
	p.mu.Unlock()
	var ee *exec.ExitError
	switch {
	case p.err == nil:
	case errors.As(p.err, &ee) && ee.ExitCode() >= 0:
		r.code = ee.ExitCode()
	default:
		t.Fatalf("agentplanectl %v: %v\n%s", p.cmd.Args[1:], p.err, r)
	}
	if strings.Contains(r.stdout+r.stderr, adminPassword) {
		t.Errorf("agentplanectl %v printed the admin's password", p.cmd.Args[1:])
	}
	if strings.Contains(r.stderr, "WARNING: DATA RACE") {
		t.Errorf("agentplanectl %v reported a data race:\n%s", p.cmd.Args[1:], r.stderr)
	}
	return r
}

// want checks the exit status and that stderr (or stdout) contains each
// of wantText.
func (r ctlResult) want(t *testing.T, code int, wantText ...string) {
	t.Helper()
	if r.code != code {
		t.Errorf("exit status %d, want %d\n%s", r.code, code, r)
		return
	}
	for _, w := range wantText {
		if !strings.Contains(r.stdout+r.stderr, w) {
			t.Errorf("output lacks %q\n%s", w, r)
		}
	}
}

// parse decodes the CLI's -o json output (protojson) into m.
func (r ctlResult) parse(t *testing.T, m proto.Message) {
	t.Helper()
	if err := protojson.Unmarshal([]byte(r.stdout), m); err != nil {
		t.Fatalf("-o json output does not parse as %T: %v\n%s", m, err, r)
	}
}

func TestCLI(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	env := s.adminEnv(t)
	homeA := newHome(t)
	startFake(t, homeA)
	a := s.startAgentd(t, homeA, 2*time.Second)
	off := s.startAgentd(t, newHome(t), time.Second)
	off.proc.stop(t, 10*time.Second)
	s.waitHost(t, off.name, 30*time.Second, "OFFLINE", func(h hostJSON) bool { return h.Status == "OFFLINE" })

	t.Run("stop --wait by name", func(t *testing.T) {
		r := runCtl(t, env, "", "agent", "stop", a.name, "--wait")
		r.want(t, 0, "Stop all OCP agent processes: SUCCESSFUL", "SUCCESSFUL in")
		waitFor(t, 10*time.Second, "the fake agent to be gone", func() bool { return len(procsUnder(homeA)) == 0 })
		// The agent view and the task, as scripts read them.
		var ag hostv1.HostAgent
		runCtl(t, env, "", "agent", "get", a.name, "-o", "json").parse(t, &ag)
		if ag.GetStatus() != hostv1.AgentStatus_AGENT_STATUS_STOPPED {
			t.Errorf("agent get -o json: status %s, want STOPPED", ag.GetStatus())
		}
		var list taskv1.ListTasksResponse
		runCtl(t, env, "", "task", "list", "--host", a.name, "-o", "json").parse(t, &list)
		if len(list.GetTasks()) != 1 || list.GetTasks()[0].GetStatus() != taskv1.TaskStatus_TASK_STATUS_SUCCESSFUL {
			t.Fatalf("task list -o json: %v", &list)
		}
		id := fmt.Sprint(list.GetTasks()[0].GetId())
		var tk taskv1.Task
		runCtl(t, env, "", "task", "get", id, "-o", "json").parse(t, &tk)
		if len(tk.GetSubtasks()) != 3 || tk.GetEndTime() == nil {
			t.Errorf("task get -o json: %v", &tk)
		}
		runCtl(t, env, "", "task", "log", id).want(t, 0, "==> subtask", "{EXECUTE}")
		// Start it again, following it silently: -o json prints the final task.
		var started taskv1.Task
		r = runCtl(t, env, "", "agent", "start", fmt.Sprint(a.hostID), "--wait", "-o", "json")
		r.want(t, 0)
		r.parse(t, &started)
		if started.GetStatus() != taskv1.TaskStatus_TASK_STATUS_SUCCESSFUL {
			t.Errorf("start --wait -o json: %v", &started)
		}
		waitFakeReady(t, homeA, baseNames...)
	})

	t.Run("FAILED task exits 1 with the subtask's message", func(t *testing.T) {
		r := runCtl(t, env, "", "agent", "stop", off.name, "--wait")
		r.want(t, 1, "FAILED", "Prepare stop OCP agent", "agentd not connected")
	})

	t.Run("batch with an offline host", func(t *testing.T) {
		r := runCtl(t, env, "", "agent", "restart", a.name, off.name, "--wait")
		r.want(t, 1, "Batch restart OCP agent FAILED on 1 of 2 hosts ("+off.name+")", "agentd not connected")
		// The online host's branch ran to its end.
		var tk taskv1.ListTasksResponse
		runCtl(t, env, "", "task", "list", "--name", "batch", "-o", "json").parse(t, &tk)
		if len(tk.GetTasks()) != 1 {
			t.Fatalf("batch tasks: %v", &tk)
		}
		r = runCtl(t, env, "", "task", "get", fmt.Sprint(tk.GetTasks()[0].GetId()))
		r.want(t, 0, "1/2 done, 1 failed", "Failed on:  "+off.name)
		waitFakeReady(t, homeA, baseNames...)
	})

	t.Run("batch start of two hosts", func(t *testing.T) {
		homeB := newHome(t)
		startFake(t, homeB)
		b := s.startAgentd(t, homeB, 2*time.Second)
		runCtl(t, env, "", "agent", "stop", a.name, b.name, "--wait").want(t, 0, "Batch stop OCP agent SUCCESSFUL in")
		waitFor(t, 10*time.Second, "both fake agents to be gone", func() bool {
			return len(procsUnder(homeA)) == 0 && len(procsUnder(homeB)) == 0
		})
		// Several hosts, by name and by id: one batch task, a branch per host.
		var tk taskv1.Task
		r := runCtl(t, env, "", "agent", "start", a.name, fmt.Sprint(b.hostID), "--wait", "-o", "json")
		r.want(t, 0)
		r.parse(t, &tk)
		if tk.GetName() != "Batch start OCP agent" || tk.GetStatus() != taskv1.TaskStatus_TASK_STATUS_SUCCESSFUL || len(tk.GetSubtasks()) != 6 {
			t.Fatalf("agent start of two hosts --wait -o json: %v", &tk)
		}
		branches := map[int32][]string{}
		for _, st := range tk.GetSubtasks() {
			branches[st.GetParallelIdx()] = append(branches[st.GetParallelIdx()], st.GetName())
		}
		for idx := range int32(2) {
			if got := strings.Join(branches[idx], ","); got != "Prepare start OCP agent,Start all OCP agent processes,Finish OCP agent operation" {
				t.Errorf("branch %d: %s", idx, got)
			}
		}
		waitFakeReady(t, homeA, baseNames...)
		waitFakeReady(t, homeB, baseNames...)
		for _, h := range []string{a.name, b.name} {
			var ag hostv1.HostAgent
			runCtl(t, env, "", "agent", "get", h, "-o", "json").parse(t, &ag)
			if ag.GetStatus() != hostv1.AgentStatus_AGENT_STATUS_STARTED {
				t.Errorf("agent get %s -o json: status %s, want STARTED", h, ag.GetStatus())
			}
		}
	})

	t.Run("bad input", func(t *testing.T) {
		runCtl(t, env, "", "agent", "stop", "no-such-host").want(t, 4, `no host named "no-such-host"`)
		runCtl(t, env, "", "task", "get", "987654").want(t, 4, "task 987654", "NOT_FOUND")
		runCtl(t, env, "", "task", "watch", "987654").want(t, 4, "NOT_FOUND")
		runCtl(t, env, "", "task", "get", "x").want(t, 2, `task id "x"`)
		runCtl(t, env, "", "agent", "stop").want(t, 2, "usage")
		runCtl(t, env, "", "hosts", "list", "-o", "xml").want(t, 2, "xml")
		unreachable := append(append([]string{}, env...), "AGENTPLANE_SERVER="+freeAddr(t))
		runCtl(t, unreachable, "", "hosts", "list").want(t, 3, "cannot reach the server at 127.0.0.1:")
		wrong := append(append([]string{}, env...), "AGENTPLANE_PASSWORD=wrong-password")
		runCtl(t, wrong, "", "hosts", "list").want(t, 3, "UNAUTHENTICATED")
		noCreds := ctlEnv(t, "AGENTPLANE_SERVER="+s.grpcAddr, "AGENTPLANE_CA_FILE="+s.caFile)
		runCtl(t, noCreds, "", "hosts", "list").want(t, 2, "no credentials")
	})

	t.Run("user create, and a viewer refused", func(t *testing.T) {
		r := runCtl(t, env, "viewer-password-9\n", "user", "create", "cliviewer", "--role", "HOST_VIEWER,TASK_VIEWER", "--password-stdin")
		r.want(t, 0, "user cliviewer created")
		viewer := ctlEnv(t, "AGENTPLANE_SERVER="+s.grpcAddr, "AGENTPLANE_CA_FILE="+s.caFile,
			"AGENTPLANE_USER=cliviewer", "AGENTPLANE_PASSWORD=viewer-password-9")
		runCtl(t, viewer, "", "hosts", "get", a.name).want(t, 0, a.name)
		runCtl(t, viewer, "", "agent", "stop", a.name).want(t, 4, "PERMISSION_DENIED")
		runCtl(t, viewer, "", "user", "create", "x", "--role", "ADMIN", "--password-stdin").want(t, 2)
	})

	t.Run("context file with an access key", func(t *testing.T) {
		var key iamv1.CreateAccessKeyResponse
		runCtl(t, env, "", "accesskey", "create", "-o", "json").parse(t, &key)
		addSecret(key.GetSecret())
		dir := t.TempDir()
		cfg := filepath.Join(dir, "config.yaml")
		body := fmt.Sprintf("current-context: it\ncontexts:\n- name: other\n  server: 127.0.0.1:1\n  user: admin\n  password: unused-password\n- name: it\n  server: %s\n  ca-file: %s\n  access-key: %s\n  secret-key: %s\n",
			s.grpcAddr, s.caFile, key.GetAccessKey().GetAccessKeyId(), key.GetSecret())
		if err := os.WriteFile(cfg, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		clean := ctlEnv(t)
		// Signed calls: a list, and a restart followed to its end (the watch is signed too).
		runCtl(t, clean, "", "--config", cfg, "hosts", "list").want(t, 0, a.name)
		r := runCtl(t, clean, "", "--config", cfg, "agent", "restart", a.name, "--wait")
		r.want(t, 0, "Restart OCP agent SUCCESSFUL")
		waitFakeReady(t, homeA, baseNames...)
		runCtl(t, append(clean, "AGENTPLANE_CONFIG="+cfg), "", "accesskey", "list").want(t, 0, key.GetAccessKey().GetAccessKeyId())
		// The context named on the command line wins over current-context.
		runCtl(t, clean, "", "--config", cfg, "--context", "other", "hosts", "list").want(t, 3, "127.0.0.1:1")
		// A flag wins over the context.
		runCtl(t, clean, "", "--config", cfg, "--server", "127.0.0.1:1", "hosts", "list").want(t, 3, "127.0.0.1:1")
		// A file others can read is refused.
		if err := os.Chmod(cfg, 0o644); err != nil {
			t.Fatal(err)
		}
		r = runCtl(t, clean, "", "--config", cfg, "hosts", "list")
		r.want(t, 2, "chmod 600 "+cfg)
		if strings.Contains(r.stderr, key.GetSecret()) {
			t.Errorf("the refusal printed the secret")
		}
		runCtl(t, env, "", "accesskey", "delete", key.GetAccessKey().GetAccessKeyId()).want(t, 0)
	})

	t.Run("watch resumed after a cut", func(t *testing.T) {
		home := newHome(t)
		startFake(t, home, "FAKE_OCP_MODE=slow", "FAKE_OCP_SLOW=4s")
		slow := s.startAgentd(t, home, 20*time.Second)
		px := startProxy(t, s.grpcAddr)
		viaProxy := append(append([]string{}, env...), "AGENTPLANE_SERVER="+px.addr())
		p := startCtl(t, viaProxy, "", "agent", "stop", slow.name, "--wait")
		waitFor(t, 30*time.Second, "the stop to run", func() bool {
			return strings.Contains(p.output(), "Stop all OCP agent processes: RUNNING")
		})
		if px.cut() == 0 {
			t.Fatal("no connection through the proxy to cut")
		}
		r := p.wait(t)
		r.want(t, 0, "watch lost, resuming", "Stop OCP agent SUCCESSFUL in")
	})

	t.Run("Ctrl-C stops watching, not the task", func(t *testing.T) {
		home := newHome(t)
		startFake(t, home, "FAKE_OCP_MODE=slow", "FAKE_OCP_SLOW=3s")
		slow := s.startAgentd(t, home, 20*time.Second)
		p := startCtl(t, env, "", "agent", "stop", slow.name, "--wait")
		waitFor(t, 30*time.Second, "the stop to run", func() bool {
			return strings.Contains(p.output(), "Stop all OCP agent processes: RUNNING")
		})
		if err := p.cmd.Process.Signal(os.Interrupt); err != nil {
			t.Fatal(err)
		}
		r := p.wait(t)
		r.want(t, 130, "stopped watching task")
		h := s.getHost(t, slow.hostID)
		if h.OperationTaskID == 0 {
			t.Fatalf("the host holds no task after Ctrl-C: %+v", h)
		}
		if tk := s.waitFinal(t, h.OperationTaskID); tk.Status != "SUCCESSFUL" {
			t.Errorf("the task ended %s after the watch was interrupted, want SUCCESSFUL", tk.Status)
		}
	})
}
