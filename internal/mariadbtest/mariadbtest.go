// Package mariadbtest runs a private MariaDB server for the tests and the
// benchmarks (agentplane-bench's cluster scenario): Debian's mariadbd
// started as a plain process (no systemd) on a data dir of its own,
// listening on a free loopback TCP port (the MariaDB user root, with no
// password), run as the caller's own user (root here, --user=root), and
// stopped and reaped when the test ends (Start), or when its caller says
// (Launch, Stop: a TestMain, the bench). Each test takes a database of its
// own (NewDatabase), dropped when it ends; other callers make one with
// CreateDatabase. Stop or Kill, then Restart, bring the same server back on
// the same data dir and port.
//
// Without mariadbd installed, Start skips the test, or fails it when
// AGENTPLANE_REQUIRE_MARIADB=1 (CI, which installs mariadb-server);
// Launch returns Missing's reason as its error.
package mariadbtest

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
)

// RequireEnv, set to 1, makes a missing mariadbd fail the test.
const RequireEnv = "AGENTPLANE_REQUIRE_MARIADB"

const (
	startTimeout = 60 * time.Second // install-db and the first connection
	stopTimeout  = 30 * time.Second // SIGTERM to exit, before SIGKILL
	startTries   = 3                // a free port may be taken before mariadbd binds it
)

// Server is one running mariadbd.
type Server struct {
	bin, dir, data string // the program, its work dir and its data dir
	port           int
	addr           string       // 127.0.0.1:port
	dbs            atomic.Int64 // databases made, for their names

	mu     sync.Mutex
	cmd    *exec.Cmd
	kill   context.CancelFunc // SIGKILLs cmd
	exited chan struct{}      // closed when cmd has been reaped
	err    error              // cmd.Wait's, once exited is closed
}

// Start starts a MariaDB server for t and stops it when t ends.
func Start(t testing.TB) *Server {
	t.Helper()
	if reason, fail := Missing(); reason != "" {
		if fail {
			t.Fatal(reason)
		}
		t.Skip(reason)
	}
	s, err := Launch(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			t.Errorf("stopping mariadbd: %v", err)
		}
	})
	return s
}

// Missing says why mariadbd cannot run here ("" when it can), and whether
// that is a failure (RequireEnv) rather than a reason to skip.
func Missing() (reason string, fail bool) {
	if lookup("mariadbd") != "" && lookup("mariadb-install-db") != "" {
		return "", false
	}
	if os.Getenv(RequireEnv) == "1" {
		return fmt.Sprintf("mariadbd or mariadb-install-db not found (%s=1): apt-get install -y mariadb-server", RequireEnv), true
	}
	return fmt.Sprintf("mariadbd not installed (apt-get install -y mariadb-server; %s=1 makes this a failure)", RequireEnv), false
}

// Launch makes a data dir in dir and starts mariadbd on it, for a caller
// without a testing.TB (a TestMain, the bench); the caller must Stop it.
func Launch(dir string) (*Server, error) {
	bin, install := lookup("mariadbd"), lookup("mariadb-install-db")
	if bin == "" || install == "" {
		reason, _ := Missing()
		return nil, errors.New(reason)
	}
	data := filepath.Join(dir, "data")
	// A private tmpdir: concurrent servers sharing /tmp have collided on
	// the bootstrap's temporary tables ("Could not remove temporary table").
	tmp := filepath.Join(dir, "tmp")
	if err := os.MkdirAll(tmp, 0o700); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, install, "--no-defaults", "--datadir="+data, "--tmpdir="+tmp, userFlag(),
		"--auth-root-authentication-method=normal", "--skip-test-db", "--innodb-log-file-size=8M").CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("mariadb-install-db: %w\n%s", err, out)
	}
	s := &Server{bin: bin, dir: dir, data: data}
	var lastErr error
	for range startTries {
		port, err := freePort(ctx)
		if err != nil {
			return nil, err
		}
		if lastErr = s.start(ctx, port); lastErr == nil {
			return s, nil
		}
	}
	return nil, fmt.Errorf("starting mariadbd: %w (its log: %s)", lastErr, filepath.Join(dir, "mariadbd.log"))
}

// userFlag runs mariadbd as the test's user: root has to say so (mariadbd
// refuses to run as root otherwise); another user is itself anyway.
func userFlag() string {
	if os.Geteuid() == 0 {
		return "--user=root"
	}
	u := os.Getenv("USER")
	if u == "" {
		u = strconv.Itoa(os.Geteuid())
	}
	return "--user=" + u
}

// lookup finds a MariaDB program in PATH or in /usr/sbin, which a user's
// PATH may lack.
func lookup(name string) string {
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, d := range []string{"/usr/sbin", "/usr/bin"} {
		p := filepath.Join(d, name)
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	return ""
}

// start runs mariadbd on s's data dir and port, and waits until it
// answers.
func (s *Server) start(ctx context.Context, port int) error {
	logf, err := os.OpenFile(filepath.Join(s.dir, "mariadbd.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close() // the child has its own descriptor
	// life is the process's: stop ends it with SIGKILL when SIGTERM did not.
	life, kill := context.WithCancel(context.Background())
	cmd := exec.CommandContext(life, s.bin, "--no-defaults", "--datadir="+s.data, "--tmpdir="+filepath.Join(s.dir, "tmp"), userFlag(),
		"--bind-address=127.0.0.1", "--port="+strconv.Itoa(port),
		"--socket="+filepath.Join(s.dir, "mariadbd.sock"), "--pid-file="+filepath.Join(s.dir, "mariadbd.pid"),
		"--character-set-server=utf8mb4", "--collation-server=utf8mb4_bin",
		"--innodb-log-file-size=8M", "--innodb-buffer-pool-size=32M", "--innodb-flush-log-at-trx-commit=2",
		"--skip-log-bin", "--max-connections=500")
	cmd.Stdout, cmd.Stderr = logf, logf
	// Killed with the test binary, should it die before its cleanups.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		kill()
		return err
	}
	exited := make(chan struct{})
	s.mu.Lock()
	s.port, s.addr = port, net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	s.cmd, s.kill, s.exited = cmd, kill, exited
	s.mu.Unlock()
	go func() {
		err := cmd.Wait()
		s.mu.Lock()
		s.err = err
		s.mu.Unlock()
		close(exited)
	}()
	if err := s.waitReady(ctx); err != nil {
		return errors.Join(err, s.Stop())
	}
	return nil
}

// waitReady polls until the server answers, it exits, or ctx ends.
func (s *Server) waitReady(ctx context.Context) error {
	s.mu.Lock()
	exited := s.exited
	s.mu.Unlock()
	db, err := sql.Open("mysql", s.DSN(""))
	if err != nil {
		return err
	}
	defer db.Close()
	wait := 10 * time.Millisecond
	for {
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		err := db.PingContext(pctx)
		cancel()
		if err == nil {
			return nil
		}
		t := time.NewTimer(wait)
		select {
		case <-exited:
			t.Stop()
			return fmt.Errorf("mariadbd exited: %w (last connection error: %w)", s.exitErr(), err)
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("mariadbd not accepting connections: %w", err)
		case <-t.C:
		}
		wait = min(wait*2, 200*time.Millisecond)
	}
}

// exitErr is cmd.Wait's error, once the process has exited.
func (s *Server) exitErr() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// Stop sends SIGTERM, waits for the exit (SIGKILL after stopTimeout) and
// reaps the process. The data dir stays: Restart starts it again.
func (s *Server) Stop() error {
	s.mu.Lock()
	cmd, kill, exited := s.cmd, s.kill, s.exited
	s.mu.Unlock()
	defer kill()
	select {
	case <-exited:
		return nil // already reaped (it died)
	default:
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	t := time.NewTimer(stopTimeout)
	defer t.Stop()
	select {
	case <-exited:
		return nil
	case <-t.C:
	}
	kill()
	<-exited // reaped by the goroutine of start
	return fmt.Errorf("mariadbd ignored SIGTERM for %v: killed", stopTimeout)
}

// Kill ends mariadbd with SIGKILL, as a crash would, and reaps it.
func (s *Server) Kill() {
	s.mu.Lock()
	kill, exited := s.kill, s.exited
	s.mu.Unlock()
	kill()
	<-exited
}

// Signal sends sig to mariadbd: SIGSTOP freezes it (its connections stay
// open, unanswered), SIGCONT thaws it.
func (s *Server) Signal(sig os.Signal) error {
	s.mu.Lock()
	cmd := s.cmd
	s.mu.Unlock()
	return cmd.Process.Signal(sig)
}

// Restart starts mariadbd again, after Stop or Kill, on the same data dir
// and port, and waits until it answers.
func (s *Server) Restart() error {
	s.mu.Lock()
	exited, port := s.exited, s.port
	s.mu.Unlock()
	select {
	case <-exited:
	default:
		return errors.New("mariadbd is still running")
	}
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	return s.start(ctx, port)
}

// Addr is the server's host:port.
func (s *Server) Addr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addr
}

// DSN is the go-sql-driver/mysql DSN of database db ("" for none) as root.
func (s *Server) DSN(db string) string {
	c := mysql.NewConfig()
	c.User, c.Net, c.Addr, c.DBName = "root", "tcp", s.Addr(), db
	return c.FormatDSN()
}

// URL is the agentplane store URL (--store) of database db as root.
func (s *Server) URL(db string) string {
	return "mysql://root@" + s.Addr() + "/" + db
}

// NewDatabase creates an empty database (utf8mb4, binary collation) for t,
// dropped when t ends, and returns its DSN.
func (s *Server) NewDatabase(t testing.TB) string {
	t.Helper()
	return s.DSN(s.NewDatabaseName(t))
}

// NewDatabaseName is NewDatabase, returning the database's name.
func (s *Server) NewDatabaseName(t testing.TB) string {
	t.Helper()
	name := fmt.Sprintf("t%d", s.dbs.Add(1))
	if err := s.CreateDatabase(t.Context(), name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.exec(context.Background(), "DROP DATABASE IF EXISTS "+name); err != nil {
			t.Errorf("dropping database %s: %v", name, err)
		}
	})
	return name
}

// CreateDatabase creates the empty database name (utf8mb4, binary
// collation), which stays until the server's data dir goes.
func (s *Server) CreateDatabase(ctx context.Context, name string) error {
	return s.exec(ctx, "CREATE DATABASE "+name+" CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
}

// exec runs one statement as root, with no database.
func (s *Server) exec(ctx context.Context, query string) error {
	db, err := sql.Open("mysql", s.DSN(""))
	if err != nil {
		return err
	}
	defer db.Close()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	_, err = db.ExecContext(ctx, query)
	return err
}

// freePort is a loopback TCP port that was free a moment ago (start retries
// when mariadbd finds it taken).
func freePort(ctx context.Context) (int, error) {
	var lc net.ListenConfig
	l, err := lc.Listen(ctx, "tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
