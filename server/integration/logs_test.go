package integration_test

import (
	"context"
	"crypto/tls"
	"database/sql"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	_ "modernc.org/sqlite" // reads the server's database beside it

	agentv1 "agentplane/gen/agentplane/agent/v1"
)

// hostileAgent is an agent built from the project's own gRPC code: enrolled
// with a join token, it speaks for its host on one stream and sends what a
// test tells it to.
type hostileAgent struct {
	hostID int64
	stream agentv1.AgentService_ConnectClient
}

// connectHostile enrolls host name and opens its agent stream.
func (s *server) connectHostile(t *testing.T, ctx context.Context, name string) *hostileAgent {
	t.Helper()
	key, csr := newKeyAndCSR(t, name)
	enrolled, err := agentv1.NewAgentServiceClient(s.conn(t)).Enroll(ctx,
		&agentv1.EnrollRequest{JoinToken: s.joinToken(t, name), HostName: name, Csr: csr})
	if err != nil {
		t.Fatal(err)
	}
	mtls := s.tlsConfig()
	mtls.Certificates = []tls.Certificate{{Certificate: [][]byte{enrolled.GetCertificate()}, PrivateKey: key}}
	cc, err := grpc.NewClient(s.grpcAddr, grpc.WithTransportCredentials(credentials.NewTLS(mtls)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	stream, err := agentv1.NewAgentServiceClient(cc).Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	hello := &agentv1.Hello{HostId: enrolled.GetHostId(), HostName: name, InstallHome: "/nonexistent/" + name}
	if err := stream.Send(&agentv1.ConnectRequest{Kind: &agentv1.ConnectRequest_Hello{Hello: hello}}); err != nil {
		t.Fatal(err)
	}
	if m, err := stream.Recv(); err != nil || m.GetWelcome() == nil {
		t.Fatalf("hello: %v %v", m, err)
	}
	return &hostileAgent{hostID: enrolled.GetHostId(), stream: stream}
}

// command waits for the next command sent to the agent.
func (a *hostileAgent) command(t *testing.T) *agentv1.Command {
	t.Helper()
	for {
		m, err := a.stream.Recv()
		if err != nil {
			t.Fatalf("waiting for a command: %v", err)
		}
		if c := m.GetCommand(); c != nil {
			return c
		}
	}
}

// rss returns a process's resident set size now and its peak since the last
// resetPeakRSS, in bytes.
func rss(t *testing.T, pid int) (now, peak int64) {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) == 3 && (f[0] == "VmRSS:" || f[0] == "VmHWM:") {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			if f[0] == "VmRSS:" {
				now = kb << 10
			} else {
				peak = kb << 10
			}
		}
	}
	return now, peak
}

// resetPeakRSS resets a process's VmHWM to its current RSS.
func resetPeakRSS(t *testing.T, pid int) {
	t.Helper()
	if err := os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0); err != nil {
		t.Skipf("cannot reset the peak RSS: %v", err)
	}
}

var droppedMarker = regexp.MustCompile(`\[agentplane\] (\d+) earlier lines \((\d+) bytes\) dropped`)

// TestSubtaskLogFlood: an agent sending progress lines within the limits
// (the largest a message may hold, as fast as its stream may send them) on
// one open command keeps its subtask's log within the bound: the stored
// log stays under it, its oldest lines give way to a marker counting them,
// the attempt header stays; and reading that log, four readers at once and
// with the default request, grows the server's memory by a bounded amount.
func TestSubtaskLogFlood(t *testing.T) {
	t.Parallel()
	const (
		maxLogBytes = 1 << 20
		lineBytes   = 60 << 10
		lines       = 600 // 36 MB sent
		readers     = 4
		// The server's peak RSS during the reads may exceed its RSS before
		// them by this much: a page is at most 1 MiB of text, so four
		// readers need a few MiB; before the bound, each read of the 36 MB
		// log took hundreds.
		maxReadGrowth = 64 << 20
	)
	// Faster than the default 50 messages a second, so that the test is
	// short: the bound must not depend on the rate.
	s := startServer(t, "--agent-max-msgs-per-sec", "500", "--agent-msg-burst", "500")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	a := s.connectHostile(t, ctx, "it-log-flood")
	created := s.stopOK(t, a.hostID)
	cmd := a.command(t)
	pad := strings.Repeat("x", lineBytes)
	for i := range lines {
		line := fmt.Sprintf("line %06d ", i) + pad[12:]
		if err := a.stream.Send(&agentv1.ConnectRequest{Kind: &agentv1.ConnectRequest_Progress{Progress: &agentv1.CommandProgress{
			SubtaskId: cmd.GetSubtaskId(), Attempt: cmd.GetAttempt(), Message: line}}}); err != nil {
			t.Fatalf("progress %d: %v", i, err)
		}
	}
	// The stream handles messages in order: once the last line is stored,
	// all are.
	last := fmt.Sprintf("line %06d ", lines-1)
	path := fmt.Sprintf("/api/v2/tasks/instances/%d/subtasks/%d/log", created.ID, cmd.GetSubtaskId())
	var log string
	waitFor(t, time.Minute, "the last progress line in the log", func() bool {
		log = s.readLog(t, path)
		return strings.Contains(log, last)
	})

	db, err := sql.Open("sqlite", "file:"+filepath.Join(s.dataDir, "agentplane.db")+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var stored, storedBytes int64
	if err := db.QueryRowContext(ctx, `SELECT COUNT(*), COALESCE(SUM(LENGTH(CAST(line AS BLOB))), 0) FROM subtask_logs WHERE subtask_id = ?`,
		cmd.GetSubtaskId()).Scan(&stored, &storedBytes); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d lines (%d bytes) sent, %d lines (%d bytes) stored", lines, lines*lineBytes, stored, storedBytes)
	if storedBytes > maxLogBytes {
		t.Errorf("the subtask's log holds %d bytes, over the bound of %d", storedBytes, maxLogBytes)
	}
	if !strings.HasPrefix(log, "############{EXECUTE}{") {
		t.Errorf("the attempt header is gone: the log starts %.80q", log)
	}
	if m := droppedMarker.FindStringSubmatch(log); m == nil {
		t.Errorf("no marker of dropped lines in the log")
	} else if n, _ := strconv.Atoi(m[1]); int64(n) != int64(lines)+3-stored {
		// Logged: the header, the server's dispatching line and the
		// progress lines; stored: those not dropped, and the marker.
		t.Errorf("the marker counts %d dropped lines; %d lines were logged and %d are stored", n, lines+2, stored)
	}

	pid := s.proc.pid()
	before, _ := rss(t, pid)
	resetPeakRSS(t, pid)
	for range 3 {
		var wg sync.WaitGroup
		for range readers {
			wg.Go(func() {
				req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.url(path), nil)
				req.SetBasicAuth(admin.user, admin.pass)
				resp, err := s.client.Do(req)
				if err != nil {
					t.Error(err)
					return
				}
				defer resp.Body.Close()
				if _, err := io.Copy(io.Discard, resp.Body); err != nil || resp.StatusCode != http.StatusOK {
					t.Errorf("reading the log: status %d, %v", resp.StatusCode, err)
				}
			})
		}
		wg.Wait()
	}
	_, peak := rss(t, pid)
	t.Logf("server RSS %d MiB before the reads, peak %d MiB during them", before>>20, peak>>20)
	if peak-before > maxReadGrowth {
		t.Errorf("reading the log grew the server's RSS by %d MiB, over %d MiB", (peak-before)>>20, maxReadGrowth>>20)
	}
	a.stream.CloseSend()
}

// readLog returns the whole log at path, page after page.
func (s *server) readLog(t *testing.T, path string) string {
	t.Helper()
	var text strings.Builder
	var offset int64
	for {
		var page struct {
			Log        string `json:"log"`
			NextOffset int64  `json:"nextOffset"`
			More       bool   `json:"more"`
		}
		r := s.call(t, http.MethodGet, fmt.Sprintf("%s?offset=%d", path, offset), admin, nil)
		if r.status != http.StatusOK {
			t.Fatalf("reading the log: %d %s", r.status, r.body)
		}
		r.decode(t, &page)
		text.WriteString(page.Log)
		if !page.More {
			return text.String()
		}
		offset = page.NextOffset
	}
}
