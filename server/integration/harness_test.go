package integration_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
)

// Binaries built once by TestMain.
var (
	moduleRoot string
	serverBin  string
	agentdBin  string
	fakeBin    string
	binDir     string
)

// baseNames are the OCP Agent's base processes, as the fake is installed.
var baseNames = []string{"ocp_agentd", "ocp_mgragent", "ocp_monagent"}

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	addSecret(adminPassword)
	// The fake ocp_agentd's children outlive it when agentd kills it first;
	// as a subreaper this process inherits them and can reap them.
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		fmt.Fprintln(os.Stderr, "PR_SET_CHILD_SUBREAPER:", err)
		return 1
	}
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		fmt.Fprintln(os.Stderr, "go env GOMOD:", err)
		return 1
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		fmt.Fprintln(os.Stderr, "not inside the agentplane module")
		return 1
	}
	moduleRoot = filepath.Dir(gomod)
	binDir, err = os.MkdirTemp("", "agentplane-integration")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(binDir)
	serverBin = filepath.Join(binDir, "agentplane-server")
	agentdBin = filepath.Join(binDir, "agentplane-agentd")
	fakeBin = filepath.Join(binDir, "fakeocpagent")
	for _, args := range [][]string{
		{"build", "-race", "-o", serverBin, "./server/cmd/agentplane-server"},
		{"build", "-race", "-o", agentdBin, "./agentd/cmd/agentplane-agentd"},
		{"build", "-o", fakeBin, "./testdata/fakeocpagent"},
	} {
		cmd := exec.Command("go", args...)
		cmd.Dir = moduleRoot
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Fprintf(os.Stderr, "go %s: %v\n", strings.Join(args, " "), err)
			return 1
		}
	}
	code := m.Run()
	reapOrphans()
	return code
}

// lazyBin is a binary the tests that need it build once, with go build's
// args (the output path is added).
type lazyBin struct {
	name string
	args []string
	once sync.Once
	path string
	err  error
}

// get builds the binary on first use and returns its path.
func (b *lazyBin) get(t *testing.T) string {
	t.Helper()
	b.once.Do(func() {
		bin := filepath.Join(binDir, b.name)
		cmd := exec.Command("go", append([]string{"build", "-o", bin}, b.args...)...)
		cmd.Dir = moduleRoot
		if out, err := cmd.CombinedOutput(); err != nil {
			b.err = fmt.Errorf("building %s: %w\n%s", b.name, err, out)
			return
		}
		b.path = bin
	})
	if b.err != nil {
		t.Fatal(b.err)
	}
	return b.path
}

var grpcurlBin = &lazyBin{name: "grpcurl", args: []string{"-modfile=.ci/tools/go.mod", "github.com/fullstorydev/grpcurl/cmd/grpcurl"}}

// grpcurl builds grpcurl from the pinned tools module, once.
func grpcurl(t *testing.T) string {
	t.Helper()
	return grpcurlBin.get(t)
}

// ---- processes ----

// procMu serializes starting children with reapOrphans, so that a child an
// exec.Cmd owns is always in started before reapOrphans can see it.
var (
	procMu  sync.Mutex
	started = map[int]bool{}
)

// process is a child started by a test; a goroutine reaps it.
type process struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{} // closed once reaped
	err     error         // Wait's result, set before done is closed
}

// startProcess runs argv with extra environment, its stdout and stderr in a
// log file under t.TempDir(). On cleanup it is stopped (SIGTERM, then
// SIGKILL), its log tail is dumped if the test failed, and a data race
// reported in the log fails the test.
func startProcess(t *testing.T, name string, env []string, argv ...string) *process {
	t.Helper()
	logPath := filepath.Join(t.TempDir(), name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var cmd *exec.Cmd
	for try := 0; ; try++ {
		cmd = exec.Command(argv[0], argv[1:]...)
		// The race runtime sleeps 1s at exit by default; the suite starts
		// and stops dozens of race-built processes.
		cmd.Env = append(append(os.Environ(), "GORACE=atexit_sleep_ms=0"), env...)
		cmd.Stdout, cmd.Stderr = f, f
		// Killed with the test binary, should it die before its cleanups
		// (a panic on -timeout runs none of them).
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		procMu.Lock()
		err = cmd.Start()
		if err == nil {
			started[cmd.Process.Pid] = true
		}
		procMu.Unlock()
		// ETXTBSY: a concurrent fork may briefly hold a copied binary open.
		if err == nil || !errors.Is(err, syscall.ETXTBSY) || try == 20 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("starting %s: %v", name, err)
	}
	p := &process{name: name, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		procMu.Lock()
		delete(started, cmd.Process.Pid)
		procMu.Unlock()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.stop(t, 5*time.Second)
		checkNoSecrets(t, name, logPath)
		if b, _ := os.ReadFile(logPath); bytes.Contains(b, []byte("WARNING: DATA RACE")) {
			t.Errorf("%s reported a data race; log:\n%s", name, tail(logPath, 200))
		} else if t.Failed() {
			t.Logf("%s (pid %d, %v) log tail:\n%s", name, cmd.Process.Pid, p.err, tail(logPath, 60))
		}
	})
	return p
}

func (p *process) pid() int { return p.cmd.Process.Pid }

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM, waits up to grace, then SIGKILLs and waits.
func (p *process) stop(t *testing.T, grace time.Duration) {
	t.Helper()
	if p.exited() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return
	case <-time.After(grace):
		t.Logf("%s pid %d ignored SIGTERM for %s; killing it", p.name, p.pid(), grace)
	}
	p.kill(t)
}

// kill SIGKILLs the process and waits until it is reaped.
func (p *process) kill(t *testing.T) {
	t.Helper()
	_ = p.cmd.Process.Kill()
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		t.Errorf("%s pid %d still not reaped 10s after SIGKILL", p.name, p.pid())
	}
}

// alive reports whether the process runs (started, not exited, no zombie).
func (p *process) alive() bool {
	return !p.exited() && running(p.pid())
}

func (p *process) log() string {
	b, _ := os.ReadFile(p.logPath)
	return string(b)
}

// tail returns the last n lines of a file.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// ---- /proc ----

type procStat struct {
	state byte
	ppid  int
}

func readStat(pid int) (procStat, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procStat{}, err
	}
	i := bytes.LastIndexByte(b, ')')
	f := strings.Fields(string(b[i+1:]))
	if i < 0 || len(f) < 2 {
		return procStat{}, fmt.Errorf("pid %d: malformed stat", pid)
	}
	ppid, err := strconv.Atoi(f[1])
	return procStat{state: f[0][0], ppid: ppid}, err
}

// running reports whether pid exists and is not a zombie.
func running(pid int) bool {
	st, err := readStat(pid)
	return err == nil && st.state != 'Z' && st.state != 'X'
}

func eachPID(f func(pid int)) {
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		if pid, err := strconv.Atoi(e.Name()); err == nil {
			f(pid)
		}
	}
}

// exeOf returns the executable of pid, without a " (deleted)" suffix.
func exeOf(pid int) (string, error) {
	exe, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/exe")
	return strings.TrimSuffix(exe, " (deleted)"), err
}

// procsUnder returns the running (non-zombie) processes whose executable
// lies under dir, as "pid exe".
func procsUnder(dir string) map[int]string {
	out := map[int]string{}
	eachPID(func(pid int) {
		exe, err := exeOf(pid)
		if err != nil || !strings.HasPrefix(exe, dir+"/") || !running(pid) {
			return
		}
		out[pid] = exe
	})
	return out
}

// killUnder SIGKILLs every process whose executable lies under dir until
// none is left, then reaps orphans.
func killUnder(t *testing.T, dir string) {
	t.Helper()
	waitFor(t, 10*time.Second, "processes under "+dir+" to die", func() bool {
		left := procsUnder(dir)
		for pid := range left {
			_ = unix.Kill(pid, unix.SIGKILL)
		}
		return len(left) == 0
	})
	reapOrphans()
}

// reapOrphans reaps zombie children of this process that no exec.Cmd owns:
// fake processes reparented here because this process is a subreaper.
func reapOrphans() {
	procMu.Lock()
	defer procMu.Unlock()
	self := os.Getpid()
	eachPID(func(pid int) {
		if started[pid] {
			return
		}
		st, err := readStat(pid)
		if err != nil || st.ppid != self || st.state != 'Z' {
			return
		}
		var ws unix.WaitStatus
		_, _ = unix.Wait4(pid, &ws, unix.WNOHANG, nil)
	})
}

// waitFor polls cond until it holds, failing the test after timeout.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	if !poll(timeout, cond) {
		t.Fatalf("timed out after %s waiting for %s", timeout, what)
	}
}

// poll calls cond until it holds or timeout passes; it reports whether it held.
func poll(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for interval := 5 * time.Millisecond; ; interval = min(interval*2, 100*time.Millisecond) {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(interval)
	}
}

// tempDir is t.TempDir() with symlinks resolved, so that it compares equal
// to the paths in /proc/<pid>/exe.
func tempDir(t *testing.T) string {
	t.Helper()
	d, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// ---- the fake OCP Agent ----

// newHome returns an install home with the fake installed under the three
// base names in <home>/bin; every process running from it is killed on
// cleanup, after the processes the test started are stopped.
func newHome(t *testing.T) string {
	t.Helper()
	home := filepath.Join(tempDir(t), "ocp_agent")
	installFake(t, home, baseNames...)
	return home
}

func installFake(t *testing.T, home string, names ...string) {
	t.Helper()
	bin := filepath.Join(home, "bin")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, name := range names {
		dst := filepath.Join(bin, name)
		// A hard link leaves no file open for writing, so no ETXTBSY.
		if err := os.Link(fakeBin, dst); err != nil {
			b, err := os.ReadFile(fakeBin)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(dst, b, 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}
	t.Cleanup(func() { killUnder(t, home) })
}

// startFake starts <home>/bin/ocp_agentd with extra environment (FAKE_OCP_*)
// and waits until it and the two children it starts are ready.
func startFake(t *testing.T, home string, env ...string) *process {
	t.Helper()
	p := startProcess(t, "fake-ocp_agentd", env, filepath.Join(home, "bin", "ocp_agentd"))
	waitFakeReady(t, home, baseNames...)
	return p
}

// waitFakeReady waits until each named fake under home has written its pid
// file (so it handles SIGTERM) and runs from home/bin.
func waitFakeReady(t *testing.T, home string, names ...string) map[string]int {
	t.Helper()
	pids := map[string]int{}
	waitFor(t, 15*time.Second, "fake OCP Agent "+strings.Join(names, ",")+" under "+home, func() bool {
		for _, name := range names {
			b, err := os.ReadFile(filepath.Join(home, "run", name+".pid"))
			if err != nil {
				return false
			}
			pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
			if err != nil || !running(pid) {
				return false
			}
			if exe, err := exeOf(pid); err != nil || exe != filepath.Join(home, "bin", name) {
				return false
			}
			pids[name] = pid
		}
		return true
	})
	return pids
}

// bystanders are processes a stop must not touch: an unrelated sleep, and
// an ocp_monagent running from outside the install home.
type bystanders struct {
	sleep      *process
	outside    *process
	outsideDir string
}

func startBystanders(t *testing.T) *bystanders {
	t.Helper()
	b := &bystanders{outsideDir: filepath.Join(tempDir(t), "elsewhere")}
	b.sleep = startProcess(t, "sleep", nil, "sleep", "300")
	installFake(t, b.outsideDir, "ocp_monagent")
	b.outside = startProcess(t, "outside-ocp_monagent", []string{"FAKE_OCP_MODE=graceful"},
		filepath.Join(b.outsideDir, "bin", "ocp_monagent"))
	waitFakeReady(t, b.outsideDir, "ocp_monagent")
	return b
}

// checkAlive fails the test unless both bystanders still run.
func (b *bystanders) checkAlive(t *testing.T) {
	t.Helper()
	if !b.sleep.alive() {
		t.Errorf("unrelated process sleep pid %d was touched: %v", b.sleep.pid(), b.sleep.err)
	}
	if !b.outside.alive() {
		t.Errorf("ocp_monagent outside the install home (pid %d) was touched: %v", b.outside.pid(), b.outside.err)
	}
}

// checkNoneUnder fails the test if a process runs from home.
func checkNoneUnder(t *testing.T, home string) {
	t.Helper()
	if left := procsUnder(home); len(left) > 0 {
		t.Errorf("processes still running under %s: %v", home, left)
	}
}

// ---- the server ----

const adminPassword = "integration-admin-pw"

type creds struct{ user, pass string }

var admin = &creds{"admin", adminPassword}

func (c *creds) basic() string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(c.user+":"+c.pass))
}

type server struct {
	dataDir  string
	grpcAddr string
	httpAddr string
	args     []string // extra flags, kept across restarts
	proc     *process
	client   *http.Client   // trusts the server's CA once it exists
	caFile   string         // <data dir>/ca.crt: the CA clients and agentd trust
	caPool   *x509.CertPool // its certificate
	plain    bool           // REST is plain HTTP (--http-plaintext)
}

// startServer starts agentplane-server on free loopback ports with a fresh
// data dir and the extra flags in args, retrying with other ports when one
// was taken meanwhile.
func startServer(t *testing.T, args ...string) *server {
	t.Helper()
	return startServerIn(t, filepath.Join(tempDir(t), "data"), args...)
}

// startServerIn is startServer on the data dir dataDir.
func startServerIn(t *testing.T, dataDir string, args ...string) *server {
	t.Helper()
	return newServer(dataDir, args...).start(t)
}

// newServer is a server not started yet: its data dir and extra flags.
func newServer(dataDir string, args ...string) *server {
	return &server{dataDir: dataDir, args: args, client: &http.Client{Timeout: 10 * time.Second},
		plain: slices.Contains(args, "--http-plaintext")}
}

// start starts s on free loopback ports (see startServer) and returns it.
func (s *server) start(t *testing.T) *server {
	t.Helper()
	if err := s.tryStart(t); err != nil {
		t.Fatal(err)
	}
	return s
}

// tryStart is start returning its failure, for a goroutine of the test.
func (s *server) tryStart(t *testing.T) error {
	t.Helper()
	for try := 1; ; try++ {
		s.grpcAddr, s.httpAddr = freeAddr(t), freeAddr(t)
		err := s.launch(t)
		if err == nil || !errors.Is(err, errAddrInUse) || try == 5 {
			return err
		}
		t.Logf("retrying on other ports: %v", err)
	}
}

// restart starts the server again on the same data dir and ports, after the
// previous instance has exited.
func (s *server) restart(t *testing.T) {
	t.Helper()
	var err error
	ok := poll(15*time.Second, func() bool {
		err = s.launch(t)
		return !errors.Is(err, errAddrInUse)
	})
	if !ok || err != nil {
		t.Fatalf("restarting the server: %v", err)
	}
}

var errAddrInUse = errors.New("address already in use")

// launch starts the process and waits until REST answers with the admin's
// credentials.
func (s *server) launch(t *testing.T) error {
	t.Helper()
	p := startProcess(t, "agentplane-server", []string{"AGENTPLANE_ADMIN_PASSWORD=" + adminPassword},
		append([]string{serverBin, "--data-dir", s.dataDir, "--grpc-addr", s.grpcAddr, "--http-addr", s.httpAddr,
			"--log-format", "json", "--shutdown-timeout", "2s", "--metrics-addr", "127.0.0.1:0"}, s.args...)...)
	deadline := time.Now().Add(60 * time.Second)
	for interval := 10 * time.Millisecond; ; interval = min(interval*2, 100*time.Millisecond) {
		if p.exited() {
			log := p.log()
			if strings.Contains(log, "address already in use") {
				return fmt.Errorf("%w: %s", errAddrInUse, tail(p.logPath, 5))
			}
			if p.err == nil {
				return fmt.Errorf("server exited before it was ready (status 0):\n%s", tail(p.logPath, 40))
			}
			return fmt.Errorf("server exited before it was ready (%w):\n%s", p.err, tail(p.logPath, 40))
		}
		if s.trustCA() && s.ready() {
			s.proc = p
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("server not ready after 60s:\n%s", tail(p.logPath, 40))
		}
		time.Sleep(interval)
	}
}

// trustCA loads the CA the server created in its data dir (at first
// start) into the REST client; false until the file exists.
func (s *server) trustCA() bool {
	if s.caPool != nil {
		return true
	}
	b, err := os.ReadFile(filepath.Join(s.dataDir, "ca.crt"))
	if err != nil {
		return false
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return false // being written
	}
	s.caFile, s.caPool = filepath.Join(s.dataDir, "ca.crt"), pool
	s.client.Transport = &http.Transport{TLSClientConfig: s.tlsConfig()}
	return true
}

// tlsConfig is a client TLS config that trusts the server's CA.
func (s *server) tlsConfig() *tls.Config {
	return &tls.Config{RootCAs: s.caPool, MinVersion: tls.VersionTLS12}
}

// url is the REST URL of path.
func (s *server) url(path string) string {
	if s.plain {
		return "http://" + s.httpAddr + path
	}
	return "https://" + s.httpAddr + path
}

func (s *server) ready() bool {
	req, _ := http.NewRequest(http.MethodGet, s.url("/api/v2/compute/hosts"), nil)
	req.SetBasicAuth(admin.user, admin.pass)
	resp, err := s.client.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// freeAddr returns a loopback address with a port that was free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// ---- REST ----

// apiResponse is a REST answer: status, headers, raw body, and the body
// decoded as a generic JSON object.
type apiResponse struct {
	status int
	header http.Header
	body   []byte
	obj    map[string]any
}

// call sends a REST request; c nil sends no credentials.
func (s *server) call(t *testing.T, method, path string, c *creds, body any) apiResponse {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, s.url(path), rd)
	if err != nil {
		t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c != nil {
		req.SetBasicAuth(c.user, c.pass)
	}
	resp, err := s.client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading body: %v", method, path, err)
	}
	r := apiResponse{status: resp.StatusCode, header: resp.Header, body: b}
	if err := json.Unmarshal(b, &r.obj); err != nil {
		t.Fatalf("%s %s: status %d, body is not a JSON object: %v\n%s", method, path, resp.StatusCode, err, b)
	}
	return r
}

// decode decodes the response body's data into v.
func (r apiResponse) decode(t *testing.T, v any) {
	t.Helper()
	var env struct {
		Data json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(r.body, &env); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(env.Data, v); err != nil {
		t.Fatalf("decoding data: %v\n%s", err, r.body)
	}
}

// wantError checks an OCP error envelope with the given status and returns
// its error message.
func (r apiResponse) wantError(t *testing.T, status int) string {
	t.Helper()
	if r.status != status {
		t.Fatalf("status %d, want %d; body %s", r.status, status, r.body)
	}
	if r.obj["successful"] != false || r.obj["status"] != float64(status) {
		t.Errorf("error envelope: successful %v status %v, want false %d", r.obj["successful"], r.obj["status"], status)
	}
	e, ok := r.obj["error"].(map[string]any)
	if !ok {
		t.Fatalf("no error object in %s", r.body)
	}
	if code, ok := e["code"].(float64); !ok || code == 0 {
		t.Errorf("error.code missing or zero in %s", r.body)
	}
	msg, _ := e["message"].(string)
	if msg == "" {
		t.Errorf("error.message empty in %s", r.body)
	}
	return msg
}

type taskJSON struct {
	ID       int64         `json:"id"`
	Name     string        `json:"name"`
	Status   string        `json:"status"`
	HostID   int64         `json:"hostId"`
	Subtasks []subtaskJSON `json:"subtasks"`
}

type subtaskJSON struct {
	ID        int64  `json:"id"`
	Name      string `json:"name"`
	ClassName string `json:"className"`
	Status    string `json:"status"`
	Message   string `json:"message"`
	Timeout   int64  `json:"timeout"`
}

func (tk taskJSON) final() bool { return tk.Status == "SUCCESSFUL" || tk.Status == "FAILED" }

func (tk taskJSON) subtask(name string) subtaskJSON {
	for _, s := range tk.Subtasks {
		if s.Name == name {
			return s
		}
	}
	return subtaskJSON{}
}

type hostJSON struct {
	ID              int64  `json:"id"`
	Name            string `json:"name"`
	Status          string `json:"status"`
	AgentStatus     string `json:"agentStatus"`
	OperationTaskID int64  `json:"operationTaskId"`
}

// getTask reads a task over REST as admin.
func (s *server) getTask(t *testing.T, id int64) taskJSON {
	t.Helper()
	r := s.call(t, http.MethodGet, fmt.Sprintf("/api/v2/tasks/instances/%d", id), admin, nil)
	if r.status != http.StatusOK {
		t.Fatalf("GET task %d: status %d: %s", id, r.status, r.body)
	}
	var tk taskJSON
	r.decode(t, &tk)
	return tk
}

// waitTask polls the task until cond holds.
func (s *server) waitTask(t *testing.T, id int64, timeout time.Duration, what string, cond func(taskJSON) bool) taskJSON {
	t.Helper()
	var tk taskJSON
	if !poll(timeout, func() bool {
		tk = s.getTask(t, id)
		return cond(tk)
	}) {
		t.Fatalf("task %d: timed out after %s waiting for %s; last seen %+v", id, timeout, what, tk)
	}
	return tk
}

func (s *server) waitFinal(t *testing.T, id int64) taskJSON {
	t.Helper()
	return s.waitTask(t, id, 90*time.Second, "a final status", taskJSON.final)
}

func (s *server) getHost(t *testing.T, id int64) hostJSON {
	t.Helper()
	r := s.call(t, http.MethodGet, fmt.Sprintf("/api/v2/compute/hosts/%d", id), admin, nil)
	if r.status != http.StatusOK {
		t.Fatalf("GET host %d: status %d: %s", id, r.status, r.body)
	}
	var h hostJSON
	r.decode(t, &h)
	return h
}

// waitHost polls the host list until the host named name satisfies cond,
// and returns it.
func (s *server) waitHost(t *testing.T, name string, timeout time.Duration, what string, cond func(hostJSON) bool) hostJSON {
	t.Helper()
	var found hostJSON
	if !poll(timeout, func() bool {
		r := s.call(t, http.MethodGet, "/api/v2/compute/hosts?size=2000", admin, nil)
		if r.status != http.StatusOK {
			t.Fatalf("GET hosts: status %d: %s", r.status, r.body)
		}
		var page struct {
			Contents []hostJSON `json:"contents"`
		}
		r.decode(t, &page)
		for _, h := range page.Contents {
			if h.Name == name {
				found = h
				return cond(h)
			}
		}
		return false
	}) {
		t.Fatalf("host %q: timed out after %s waiting for %s; last seen %+v", name, timeout, what, found)
	}
	return found
}

// stopREST posts the stop as c and returns the response.
func (s *server) stopREST(t *testing.T, hostID int64, c *creds) apiResponse {
	t.Helper()
	return s.call(t, http.MethodPost, fmt.Sprintf("/compute/hosts/%d/agent/stop", hostID), c, nil)
}

// stopOK posts the stop as admin, expects 200 and returns the created task.
func (s *server) stopOK(t *testing.T, hostID int64) taskJSON {
	t.Helper()
	r := s.stopREST(t, hostID, admin)
	if r.status != http.StatusOK {
		t.Fatalf("stop of host %d: status %d: %s", hostID, r.status, r.body)
	}
	var created taskJSON
	r.decode(t, &created)
	return created
}

// fleetOfOne starts a server, the bystanders, a fake OCP Agent (with
// fakeEnv) and an agentd with the given grace: the stage of a stop test.
func fleetOfOne(t *testing.T, grace time.Duration, fakeEnv ...string) (*server, *bystanders, string, *agentd) {
	t.Helper()
	s := startServer(t)
	by := startBystanders(t)
	home := newHome(t)
	startFake(t, home, fakeEnv...)
	return s, by, home, s.startAgentd(t, home, grace)
}

// ---- agentd ----

type agentd struct {
	proc   *process
	name   string
	hostID int64
	argv   []string   // to start it again with the same state
	env    []string   // its join token; unused once it has enrolled
	logs   []*process // every process run as this agentd, for checkOnce
}

var agentdSeq atomic.Int64

// startAgentd starts an agentd for home with a unique host name and waits
// until its host is ONLINE.
func (s *server) startAgentd(t *testing.T, home string, grace time.Duration) *agentd {
	t.Helper()
	return s.startAgentdVia(t, home, grace, s.grpcAddr)
}

// startAgentdVia is startAgentd connecting to addr (e.g. a proxy).
func (s *server) startAgentdVia(t *testing.T, home string, grace time.Duration, addr string) *agentd {
	t.Helper()
	a := s.launchAgentd(t, home, grace, addr)
	h := s.waitHost(t, a.name, 30*time.Second, "ONLINE", func(h hostJSON) bool { return h.Status == "ONLINE" })
	a.hostID = h.ID
	return a
}

// launchAgentd starts an agentd without waiting for it to connect.
func (s *server) launchAgentd(t *testing.T, home string, grace time.Duration, addr string) *agentd {
	t.Helper()
	name := fmt.Sprintf("it-%s-%d", strings.ReplaceAll(t.Name(), "/", "-"), agentdSeq.Add(1))
	a := &agentd{name: name, env: []string{"AGENTPLANE_JOIN_TOKEN=" + s.joinToken(t, name)}, argv: []string{agentdBin,
		"--server", addr,
		"--ca-file", s.caFile,
		"--state-dir", filepath.Join(tempDir(t), "agentd-state"),
		"--host-name", name,
		"--install-home", home,
		"--grace", grace.String(),
		"--log-format", "json",
		"--log-level", "debug"}}
	a.start(t)
	return a
}

// start runs the agentd process (again, with the same state dir and host
// name).
func (a *agentd) start(t *testing.T) {
	t.Helper()
	a.proc = startProcess(t, fmt.Sprintf("agentd-%s-%d", a.name, len(a.logs)+1), a.env, a.argv...)
	a.logs = append(a.logs, a.proc)
}

// checkOnce fails the test if any (subtask, attempt) was started more than
// once by this agentd, over all its runs.
func (a *agentd) checkOnce(t *testing.T) {
	t.Helper()
	seen := map[string]int{}
	for _, p := range a.logs {
		for _, line := range strings.Split(p.log(), "\n") {
			var e struct {
				Msg     string `json:"message"`
				Subtask int64  `json:"subtask_id"`
				Attempt int    `json:"attempt"`
			}
			if json.Unmarshal([]byte(line), &e) == nil && strings.HasPrefix(e.Msg, "command started") {
				seen[fmt.Sprintf("subtask %d attempt %d", e.Subtask, e.Attempt)]++
			}
		}
	}
	for k, n := range seen {
		if n > 1 {
			t.Errorf("agentd %s executed %s %d times", a.name, k, n)
		}
	}
}

// joinToken creates a single-use join token bound to the host name, as
// admin, and remembers it as a secret no log may contain.
func (s *server) joinToken(t *testing.T, hostName string) string {
	t.Helper()
	r := s.call(t, http.MethodPost, "/api/v2/agent/joinTokens", admin, map[string]any{"hostName": hostName, "ttlSeconds": 600})
	if r.status != http.StatusOK {
		t.Fatalf("creating a join token: %d %s", r.status, r.body)
	}
	var out struct {
		Token string `json:"token"`
	}
	r.decode(t, &out)
	if out.Token == "" {
		t.Fatalf("join token answer without a token: %s", r.body)
	}
	addSecret(out.Token)
	return out.Token
}

// ---- secrets no log may contain ----

var secrets sync.Map // string → struct{}

// addSecret registers a secret (password, token, key) that must not appear
// in any log of any process the suite starts.
func addSecret(v string) {
	if len(v) >= 8 {
		secrets.Store(v, struct{}{})
	}
}

// checkNoSecrets fails the test if the log at path contains a secret.
func checkNoSecrets(t *testing.T, name, path string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		return
	}
	secrets.Range(func(k, _ any) bool {
		if bytes.Contains(b, []byte(k.(string))) {
			t.Errorf("the log of %s contains a secret (%.4s…)", name, k.(string))
		}
		return true
	})
}

// ---- a TCP proxy whose connections a test can cut ----

type proxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	conns  []net.Conn
}

// startProxy forwards connections on a free loopback port to target.
func startProxy(t *testing.T, target string) *proxy {
	t.Helper()
	return startForwarder(t, target, func(dst, src net.Conn) { io.Copy(dst, src); dst.Close() })
}

// startForwarder is startProxy with forward copying each direction of each
// connection (src to dst); it must return once src or dst is closed.
func startForwarder(t *testing.T, target string, forward func(dst, src net.Conn)) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln, target: target}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); p.cut(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, u)
			p.mu.Unlock()
			wg.Go(func() { forward(u, c) })
			wg.Go(func() { forward(c, u) })
		}
	})
	return p
}

func (p *proxy) addr() string { return p.ln.Addr().String() }

// cut closes every connection through the proxy; new ones are accepted.
func (p *proxy) cut() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	n := len(p.conns) / 2
	p.conns = nil
	return n
}

// ---- gRPC ----

// conn returns a gRPC client connection to the server, closed on cleanup.
func (s *server) conn(t *testing.T) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient(s.grpcAddr, grpc.WithTransportCredentials(credentials.NewTLS(s.tlsConfig())))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// withCreds returns ctx carrying c as the authorization metadata.
func withCreds(ctx context.Context, c *creds) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "authorization", c.basic())
}

// The messages agentd gives the commands it cannot vouch for, as an operator
// reads them in the task (agentd's state package writes them).
const (
	agentdRestartedMessage = "agentd restarted while the command ran; not re-run"
	agentdStateLostMessage = "state lost: agentd's journal entry for this command was corrupt; not re-run"
)
