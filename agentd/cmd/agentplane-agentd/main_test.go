package main

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/types/known/durationpb"

	"agentplane/agentd/internal/identity"
	"agentplane/agentd/internal/testsrv"
	agentv1 "agentplane/gen/agentplane/agent/v1"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const joinToken = "jt-5ecret-join-token"

// running is an agentd run in this process.
type running struct {
	t      *testing.T
	cancel context.CancelFunc
	done   chan error
	logs   *testsrv.Logs
}

// launch runs agentd with args (plus a test install home, host name and
// JSON logs); tweak may set the test-only options.
func launch(t *testing.T, tweak func(*options), args ...string) *running {
	t.Helper()
	args = append([]string{"--host-name", "h1", "--install-home", t.TempDir(), "--log-format", "json", "--log-level", "debug"}, args...)
	o, err := parseFlags(args, os.Stderr)
	if err != nil {
		t.Fatal(err)
	}
	if tweak != nil {
		tweak(&o)
	}
	logs := &testsrv.Logs{}
	log := zerolog.New(zerolog.MultiLevelWriter(logs, zerolog.NewTestWriter(t))).Level(zerolog.DebugLevel)
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{t: t, cancel: cancel, done: make(chan error, 1), logs: logs}
	go func() { r.done <- agent(ctx, o, log) }()
	t.Cleanup(func() { r.stop() })
	return r
}

// wait returns agentd's error once it ended by itself.
func (r *running) wait() error {
	r.t.Helper()
	select {
	case err := <-r.done:
		r.done <- err
		return err
	case <-time.After(testsrv.Wait):
		r.t.Fatal("agentd did not end")
		return nil
	}
}

// stop ends agentd (as SIGTERM does) and returns its error.
func (r *running) stop() error {
	r.cancel()
	return r.wait()
}

func newServer(t *testing.T, o testsrv.Options) (*testsrv.Server, string) {
	t.Helper()
	if o.CA == nil {
		o.CA = testsrv.NewCA(t, "test ca")
	}
	if o.Token == "" {
		o.Token = joinToken
	}
	return testsrv.Start(t, o), o.CA.WriteFile(t, t.TempDir())
}

func fileCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatalf("%s: no PEM", path)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// checkNoSecrets fails when the join token or the key is in the logs.
func checkNoSecrets(t *testing.T, logs, stateDir string) {
	t.Helper()
	if strings.Contains(logs, joinToken) {
		t.Error("the join token was logged")
	}
	b, err := os.ReadFile(filepath.Join(stateDir, identity.KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	for _, line := range strings.Split(string(pem.EncodeToMemory(blk)), "\n") {
		if len(line) > 20 && !strings.HasPrefix(line, "-----") && strings.Contains(logs, line) {
			t.Error("the private key was logged")
		}
	}
}

func TestFlagErrors(t *testing.T) {
	ca := testsrv.NewCA(t, "test ca").WriteFile(t, t.TempDir())
	junk := filepath.Join(t.TempDir(), "junk.pem")
	os.WriteFile(junk, []byte("not pem"), 0o600)
	tokenFile := filepath.Join(t.TempDir(), "agent-token")
	os.WriteFile(tokenFile, []byte("tok\n"), 0o600)
	t.Setenv(tokenEnv, "")
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no ca file", nil, "--ca-file is required"},
		{"ca file without pem", []string{"--ca-file", junk}, "no PEM certificate"},
		{"ca file missing", []string{"--ca-file", junk + ".missing"}, "--ca-file"},
		{"token file with tls", []string{"--ca-file", ca, "--token-file", tokenFile}, "--token-file is the bootstrap token of --insecure"},
		{"insecure without token", []string{"--insecure"}, "--token-file is required"},
		{"insecure with ca file", []string{"--insecure", "--token-file", tokenFile, "--ca-file", ca}, "--insecure uses plaintext"},
		{"insecure with join token", []string{"--insecure", "--token-file", tokenFile, "--join-token", "x"}, "--insecure uses plaintext"},
		{"bad server", []string{"--ca-file", ca, "--server", "nowhere"}, "want host:port"},
		{"pprof on every interface", []string{"--ca-file", ca, "--pprof-addr", ":6061"}, "--pprof-addr: \":6061\" is not a loopback address"},
		{"pprof on a routable address", []string{"--ca-file", ca, "--pprof-addr", "0.0.0.0:0"}, "not a loopback address"},
		{"metrics on a bad address", []string{"--ca-file", ca, "--metrics-addr", "127.0.0.1:99999"}, "--metrics-addr"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := launch(t, nil, append([]string{"--state-dir", t.TempDir()}, tc.args...)...)
			if err := r.wait(); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("agentd = %v, want an error with %q", err, tc.want)
			}
		})
	}
}

func TestEnrollThenReuseWithoutToken(t *testing.T) {
	srv, ca := newServer(t, testsrv.Options{})
	dir := t.TempDir()
	t.Setenv(joinTokenEnv, joinToken) // the token from the environment
	r := launch(t, nil, "--server", srv.Addr, "--ca-file", ca, "--state-dir", dir)
	st := srv.NextStream(t)
	issued := srv.Issued()
	if len(issued) != 1 || !st.Peer.Equal(issued[0]) {
		t.Fatalf("stream with %s; issued %d", testsrv.String(st.Peer), len(issued))
	}
	if st.Hello.GetHostId() != 7 || st.Hello.GetToken() != "" || st.Hello.GetHostName() != "h1" {
		t.Fatalf("hello = %v", st.Hello)
	}
	for _, name := range []string{identity.KeyFile, identity.CertFile} {
		info, err := os.Stat(filepath.Join(dir, name))
		if err != nil || info.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v, %v; want mode 0600", name, info, err)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "host_id")); strings.TrimSpace(string(b)) != "7" {
		t.Fatalf("host_id file %q", b)
	}
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	checkNoSecrets(t, r.logs.String(), dir)

	// Restarted without a token: the stored identity, no enrollment.
	t.Setenv(joinTokenEnv, "")
	r = launch(t, nil, "--server", srv.Addr, "--ca-file", ca, "--state-dir", dir)
	st = srv.NextStream(t)
	if !st.Peer.Equal(issued[0]) || srv.Enrolls() != 1 || st.Hello.GetHostId() != 7 {
		t.Fatalf("second run: stream with %s, %d enrollments, hello %v", testsrv.String(st.Peer), srv.Enrolls(), st.Hello)
	}
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
}

func TestBadJoinTokenExits(t *testing.T) {
	srv, ca := newServer(t, testsrv.Options{})
	dir := t.TempDir()
	r := launch(t, nil, "--server", srv.Addr, "--ca-file", ca, "--state-dir", dir, "--join-token", "wrong")
	err := r.wait()
	if !errors.Is(err, identity.ErrRejected) || !strings.Contains(err.Error(), testsrv.RejectMessage) {
		t.Fatalf("agentd = %v, want the server's refusal", err)
	}
	if _, err := os.Stat(filepath.Join(dir, identity.KeyFile)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("agent.key after a refused enrollment: %v", err)
	}
}

func TestNoCertificateNoTokenExits(t *testing.T) {
	srv, ca := newServer(t, testsrv.Options{})
	t.Setenv(joinTokenEnv, "")
	r := launch(t, nil, "--server", srv.Addr, "--ca-file", ca, "--state-dir", t.TempDir())
	if err := r.wait(); !errors.Is(err, identity.ErrNoJoinToken) || !strings.Contains(err.Error(), "--join-token") {
		t.Fatalf("agentd = %v, want a missing join token error", err)
	}
}

func TestRefusesServerNotSignedByCAFile(t *testing.T) {
	srv, _ := newServer(t, testsrv.Options{ServerCA: testsrv.NewCA(t, "impostor")})
	ca := testsrv.NewCA(t, "the real ca").WriteFile(t, t.TempDir())
	dir := t.TempDir()
	r := launch(t, nil, "--server", srv.Addr, "--ca-file", ca, "--state-dir", dir, "--join-token", joinToken)
	testsrv.Poll(t, "a handshake error in the log", func() bool {
		return strings.Contains(r.logs.String(), "certificate signed by unknown authority")
	})
	if err := r.stop(); err != nil {
		t.Fatalf("agentd = %v after SIGTERM", err)
	}
	if srv.Enrolls() != 0 {
		t.Fatal("enrolled with a server the CA file does not vouch for")
	}
	if _, err := os.Stat(filepath.Join(dir, identity.CertFile)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("agent.crt: %v", err)
	}
}

func TestRenewalKeepsStreamAndNextConnectionUsesNewCert(t *testing.T) {
	clock := testsrv.NewClock(time.Now())
	srv, ca := newServer(t, testsrv.Options{Clock: clock})
	dir := t.TempDir()
	fast := func(o *options) { o.now, o.renewCheck = clock.Now, 10*time.Millisecond }
	r := launch(t, fast, "--server", srv.Addr, "--ca-file", ca, "--state-dir", dir, "--join-token", joinToken)
	st := srv.NextStream(t)
	first := srv.Issued()[0]
	if !st.Peer.Equal(first) {
		t.Fatalf("stream with %s, want %s", testsrv.String(st.Peer), testsrv.String(first))
	}

	srv.FailRenews.Store(1) // one failure: retried
	clock.Add(41 * time.Minute)
	testsrv.Poll(t, "renewal", func() bool { return srv.Renews() == 1 })
	second := srv.Issued()[1]
	testsrv.Poll(t, "the renewed certificate on disk", func() bool {
		return fileCert(t, filepath.Join(dir, identity.CertFile)).Equal(second)
	})
	if !strings.Contains(r.logs.String(), "cannot renew client certificate") {
		t.Fatal("no warning for the failed renewal")
	}

	// The stream in progress goes on: heartbeats, and a command's result.
	hb := st.Heartbeats.Load()
	testsrv.Poll(t, "heartbeats after the renewal", func() bool { return st.Heartbeats.Load() > hb+2 })
	st.Push(t, &agentv1.ConnectResponse{Kind: &agentv1.ConnectResponse_Command{Command: &agentv1.Command{
		SubtaskId: 5, Attempt: 1, Timeout: durationpb.New(time.Minute),
		Action: &agentv1.Command_StopAgent{StopAgent: &agentv1.StopAgentAction{}},
	}}})
	var res *agentv1.CommandResult
	for res == nil {
		res = st.Next(t).GetResult()
	}
	if res.GetSubtaskId() != 5 || res.GetOutcome() != agentv1.CommandOutcome_COMMAND_OUTCOME_SUCCEEDED {
		t.Fatalf("result = %v", res)
	}
	select {
	case <-st.Done:
		t.Fatal("the stream ended")
	default:
	}

	// The next connection presents the renewed certificate.
	srv.CloseConns()
	st2 := srv.NextStream(t)
	if !st2.Peer.Equal(second) || st2.Hello.GetHostId() != 7 {
		t.Fatalf("next stream with %s (hello %v), want %s", testsrv.String(st2.Peer), st2.Hello, testsrv.String(second))
	}
	if srv.Renews() != 1 || srv.Enrolls() != 1 {
		t.Fatalf("%d renewals, %d enrollments", srv.Renews(), srv.Enrolls())
	}
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	checkNoSecrets(t, r.logs.String(), dir)
}

func TestExpiredCertificateWithoutTokenExits(t *testing.T) {
	clock := testsrv.NewClock(time.Now())
	srv, ca := newServer(t, testsrv.Options{Clock: clock})
	dir := t.TempDir()
	r := launch(t, nil, "--server", srv.Addr, "--ca-file", ca, "--state-dir", dir, "--join-token", joinToken)
	srv.NextStream(t)
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}

	t.Setenv(joinTokenEnv, "")
	fast := func(o *options) { o.now, o.renewCheck = clock.Now, 10*time.Millisecond }
	r = launch(t, fast, "--server", srv.Addr, "--ca-file", ca, "--state-dir", dir)
	srv.NextStream(t)
	srv.FailRenews.Store(1 << 30) // renewal never works, until the certificate expires
	clock.Add(2 * time.Hour)
	if err := r.wait(); !errors.Is(err, identity.ErrExpired) || !strings.Contains(err.Error(), "--join-token") {
		t.Fatalf("agentd = %v, want the expired certificate error", err)
	}

	// Started again with the expired certificate and no token: the same error at once.
	r = launch(t, fast, "--server", srv.Addr, "--ca-file", ca, "--state-dir", dir)
	if err := r.wait(); !errors.Is(err, identity.ErrExpired) {
		t.Fatalf("agentd = %v, want the expired certificate error", err)
	}
}

func TestInsecureBootstrapToken(t *testing.T) {
	srv := testsrv.Start(t, testsrv.Options{Plaintext: true, Token: "boot-token"})
	tokenFile := filepath.Join(t.TempDir(), "agent-token")
	if err := os.WriteFile(tokenFile, []byte("boot-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	r := launch(t, nil, "--insecure", "--server", srv.Addr, "--token-file", tokenFile, "--state-dir", dir)
	st := srv.NextStream(t)
	if st.Hello.GetToken() != "boot-token" || st.Peer != nil {
		t.Fatalf("hello = %v, peer %v", st.Hello, st.Peer)
	}
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, identity.KeyFile)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("agent.key in --insecure mode: %v", err)
	}
	if !strings.Contains(r.logs.String(), "plaintext") {
		t.Fatal("no plaintext warning")
	}
}

// logField returns field of the first JSON log line whose message starts
// with msg, and its level.
func logField(logs, msg, field string) (value, level string) {
	for _, line := range strings.Split(logs, "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) != nil {
			continue
		}
		if s, _ := m["message"].(string); strings.HasPrefix(s, msg) {
			v, _ := m[field].(string)
			l, _ := m["level"].(string)
			return v, l
		}
	}
	return "", ""
}

func TestPprofServedWhileRunningOnly(t *testing.T) {
	srv, ca := newServer(t, testsrv.Options{})
	r := launch(t, nil, "--server", srv.Addr, "--ca-file", ca, "--state-dir", t.TempDir(), "--join-token", joinToken,
		"--pprof-addr", "127.0.0.1:0")
	srv.NextStream(t)
	addr, level := logField(r.logs.String(), "pprof enabled", "pprof_addr")
	if addr == "" || level != "warn" {
		t.Fatalf("no WARN line with pprof_addr in the log:\n%s", r.logs.String())
	}
	get := func(path string) (int, string, error) {
		c := &http.Client{Timeout: testsrv.Wait, Transport: &http.Transport{DisableKeepAlives: true}}
		resp, err := c.Get("http://" + addr + path)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), err
	}
	// agentd's own goroutines are in the profile: it is this agentd's.
	code, body, err := get("/debug/pprof/goroutine?debug=1")
	if err != nil || code != http.StatusOK || !strings.Contains(body, "agentplane/agentd/internal/conn.") {
		t.Fatalf("goroutine profile: %d, %v:\n%.2000s", code, err, body)
	}
	if code, body, err := get("/debug/pprof/heap?debug=1"); err != nil || code != http.StatusOK || !strings.Contains(body, "heap profile") {
		t.Fatalf("heap profile: %d, %v: %.200s", code, err, body)
	}
	// The command line, which may hold --join-token, is not served.
	if code, _, err := get("/debug/pprof/cmdline"); err != nil || code != http.StatusNotFound {
		t.Fatalf("cmdline: %d, %v; want 404", code, err)
	}
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := get("/debug/pprof/"); err == nil {
		t.Fatal("pprof still served after agentd stopped")
	}
}

func TestTuneMemory(t *testing.T) {
	defer debug.SetMemoryLimit(debug.SetMemoryLimit(-1)) // restore the test binary's own limit
	t.Setenv("GOMEMLIMIT", "")                           // restored after the test
	os.Unsetenv("GOMEMLIMIT")
	debug.SetMemoryLimit(math.MaxInt64)
	if got := tuneMemory(); got != memoryLimit || debug.SetMemoryLimit(-1) != memoryLimit {
		t.Fatalf("without $GOMEMLIMIT: tuneMemory() = %d, limit %d; want %d", got, debug.SetMemoryLimit(-1), memoryLimit)
	}
	t.Setenv("GOMEMLIMIT", "64MiB") // the operator's choice wins (the runtime read it at start)
	debug.SetMemoryLimit(64 << 20)
	if got := tuneMemory(); got != 64<<20 || debug.SetMemoryLimit(-1) != 64<<20 {
		t.Fatalf("with GOMEMLIMIT=64MiB: tuneMemory() = %d, limit %d", got, debug.SetMemoryLimit(-1))
	}
}

func TestServerListErrors(t *testing.T) {
	ca := testsrv.NewCA(t, "test ca").WriteFile(t, t.TempDir())
	for _, tc := range []struct{ list, want string }{
		{"a:7070,,b:7070", `--server "a:7070,,b:7070": entry 2 of 3 is empty`},
		{"a:7070,b", `--server "a:7070,b": "b": want host:port`},
		{"a:7070,b:7070,a:7070", `"a:7070" is listed twice`},
		{"a:seven", `port "seven" is not a number`},
	} {
		t.Run(tc.list, func(t *testing.T) {
			r := launch(t, nil, "--state-dir", t.TempDir(), "--ca-file", ca, "--server", tc.list)
			if err := r.wait(); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("agentd = %v, want an error with %q", err, tc.want)
			}
		})
	}
}

// TestDeadServerThenLiveOne: --server dead:port,localhost:port. Enrollment,
// the stream and renewal all reach the live server, checked for the name
// dialled (localhost).
func TestDeadServerThenLiveOne(t *testing.T) {
	clock := testsrv.NewClock(time.Now())
	srv, ca := newServer(t, testsrv.Options{Clock: clock})
	l, err := new(net.ListenConfig).Listen(t.Context(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := l.Addr().String()
	l.Close()
	_, port, _ := net.SplitHostPort(srv.Addr)
	live := "localhost:" + port
	dir := t.TempDir()
	fast := func(o *options) { o.now, o.renewCheck = clock.Now, 10*time.Millisecond }
	start := time.Now()
	r := launch(t, fast, "--server", dead+","+live, "--ca-file", ca, "--state-dir", dir, "--join-token", joinToken)
	st := srv.NextStream(t)
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("enrolled and connected after %s", d)
	}
	if srv.Enrolls() != 1 || !st.Peer.Equal(srv.Issued()[0]) {
		t.Fatalf("%d enrollments, stream with %s", srv.Enrolls(), testsrv.String(st.Peer))
	}
	testsrv.Poll(t, "the log of connecting to "+live, func() bool {
		s, _ := logField(r.logs.String(), "connected to server", "server")
		return strings.HasPrefix(s, live+" (127.0.0.1:"+port+")")
	})

	// Renewal goes to the server of the stream.
	clock.Add(41 * time.Minute)
	testsrv.Poll(t, "renewal", func() bool { return srv.Renews() == 1 })
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	checkNoSecrets(t, r.logs.String(), dir)
}
