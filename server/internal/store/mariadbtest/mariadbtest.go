// Package mariadbtest runs a private MariaDB server for tests: Debian's
// mariadbd started as a plain process (no systemd) on a data dir of its
// own, listening on a free loopback TCP port (the MariaDB user root, with
// no password), run as the test's own user (root here, --user=root), and
// stopped and reaped when the test ends. Each test takes a database of its
// own (NewDatabase).
//
// Without mariadbd installed, Start skips the test, or fails it when
// AGENTPLANE_REQUIRE_MARIADB=1 (CI, which installs mariadb-server).
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
	addr   string // 127.0.0.1:port
	cmd    *exec.Cmd
	kill   context.CancelFunc // SIGKILLs cmd
	exited chan struct{}      // closed when cmd has been reaped
	err    error              // cmd.Wait's, once exited is closed
	dbs    atomic.Int64       // databases made, for their names
}

// Start starts a MariaDB server for t and stops it when t ends.
func Start(t testing.TB) *Server {
	t.Helper()
	bin, install := lookup("mariadbd"), lookup("mariadb-install-db")
	if bin == "" || install == "" {
		if os.Getenv(RequireEnv) == "1" {
			t.Fatalf("mariadbd or mariadb-install-db not found (%s=1): apt-get install -y mariadb-server", RequireEnv)
		}
		t.Skipf("mariadbd not installed (apt-get install -y mariadb-server; %s=1 makes this a failure)", RequireEnv)
	}
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, install, "--no-defaults", "--datadir="+data, userFlag(),
		"--auth-root-authentication-method=normal", "--skip-test-db", "--innodb-log-file-size=8M").CombinedOutput()
	if err != nil {
		t.Fatalf("mariadb-install-db: %v\n%s", err, out)
	}
	var lastErr error
	for range startTries {
		s, err := start(ctx, bin, dir, data)
		if err == nil {
			t.Cleanup(func() {
				if err := s.stop(); err != nil {
					t.Errorf("stopping mariadbd: %v", err)
				}
			})
			return s
		}
		lastErr = err
	}
	t.Fatalf("starting mariadbd: %v (its log: %s)", lastErr, filepath.Join(dir, "mariadbd.log"))
	return nil
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

func start(ctx context.Context, bin, dir, data string) (*Server, error) {
	port, err := freePort(ctx)
	if err != nil {
		return nil, err
	}
	logf, err := os.OpenFile(filepath.Join(dir, "mariadbd.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer logf.Close() // the child has its own descriptor
	// life is the process's: stop ends it with SIGKILL when SIGTERM did not.
	life, kill := context.WithCancel(context.Background())
	cmd := exec.CommandContext(life, bin, "--no-defaults", "--datadir="+data, userFlag(),
		"--bind-address=127.0.0.1", "--port="+strconv.Itoa(port),
		"--socket="+filepath.Join(dir, "mariadbd.sock"), "--pid-file="+filepath.Join(dir, "mariadbd.pid"),
		"--character-set-server=utf8mb4", "--collation-server=utf8mb4_bin",
		"--innodb-log-file-size=8M", "--innodb-buffer-pool-size=32M", "--innodb-flush-log-at-trx-commit=2",
		"--skip-log-bin", "--max-connections=500")
	cmd.Stdout, cmd.Stderr = logf, logf
	// Killed with the test binary, should it die before its cleanups.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		kill()
		return nil, err
	}
	s := &Server{addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), cmd: cmd, kill: kill, exited: make(chan struct{})}
	go func() {
		s.err = cmd.Wait()
		close(s.exited)
	}()
	if err := s.waitReady(ctx); err != nil {
		return nil, errors.Join(err, s.stop())
	}
	return s, nil
}

// waitReady polls until the server answers, it exits, or ctx ends.
func (s *Server) waitReady(ctx context.Context) error {
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
		case <-s.exited:
			t.Stop()
			return fmt.Errorf("mariadbd exited: %w (last connection error: %w)", s.err, err)
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("mariadbd not accepting connections: %w", err)
		case <-t.C:
		}
		wait = min(wait*2, 200*time.Millisecond)
	}
}

// stop sends SIGTERM, waits for the exit (SIGKILL after stopTimeout) and
// reaps the process.
func (s *Server) stop() error {
	defer s.kill()
	select {
	case <-s.exited:
		return nil // already reaped (it died)
	default:
	}
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	t := time.NewTimer(stopTimeout)
	defer t.Stop()
	select {
	case <-s.exited:
		return nil
	case <-t.C:
	}
	s.kill()
	<-s.exited // reaped by the goroutine of start
	return fmt.Errorf("mariadbd ignored SIGTERM for %v: killed", stopTimeout)
}

// Addr is the server's host:port.
func (s *Server) Addr() string { return s.addr }

// DSN is the go-sql-driver/mysql DSN of database db ("" for none) as root.
func (s *Server) DSN(db string) string {
	c := mysql.NewConfig()
	c.User, c.Net, c.Addr, c.DBName = "root", "tcp", s.addr, db
	return c.FormatDSN()
}

// NewDatabase creates an empty database (utf8mb4, binary collation) for t,
// and returns its DSN.
func (s *Server) NewDatabase(t testing.TB) string {
	t.Helper()
	name := fmt.Sprintf("t%d", s.dbs.Add(1))
	db, err := sql.Open("mysql", s.DSN(""))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if _, err := db.ExecContext(ctx, "CREATE DATABASE "+name+" CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"); err != nil {
		t.Fatal(err)
	}
	return s.DSN(name)
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
