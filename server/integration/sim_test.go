package integration_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"agentplane/internal/simplan"
)

var (
	simOnce sync.Once
	simBin  string
	simErr  error
)

// simBinary builds agentplane-sim (with -race, as the other binaries), once.
func simBinary(t *testing.T) string {
	t.Helper()
	simOnce.Do(func() {
		bin := filepath.Join(binDir, "agentplane-sim")
		cmd := exec.Command("go", "build", "-race", "-o", bin, "./agentd/cmd/agentplane-sim")
		cmd.Dir = moduleRoot
		if out, err := cmd.CombinedOutput(); err != nil {
			simErr = fmt.Errorf("building agentplane-sim: %w\n%s", err, out)
			return
		}
		simBin = bin
	})
	if simErr != nil {
		t.Fatal(simErr)
	}
	return simBin
}

// simStats is one stats line of agentplane-sim.
type simStats struct {
	Event       string    `json:"event"`
	T           time.Time `json:"t"`
	Enrolled    *int64    `json:"enrolled"`
	Connected   int64     `json:"connected"`
	Welcomes    int64     `json:"welcomes"`
	Disconnects int64     `json:"disconnects"`
	Commands    int64     `json:"commands"`
	Results     int64     `json:"results"`
	Failed      int64     `json:"failed"`
}

// simLines returns the stats lines in the simulator's output (which also
// holds its JSON log lines), failing the test on a line that starts like
// a stats line and does not parse as one.
func simLines(t *testing.T, p *process) []simStats {
	t.Helper()
	f, err := os.Open(p.logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []simStats
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, `{"t":`) && !strings.HasPrefix(line, `{"event":`) {
			continue
		}
		var s simStats
		if err := json.Unmarshal([]byte(line), &s); err != nil || s.T.IsZero() || s.Enrolled == nil {
			t.Fatalf("malformed stats line %q: %v", line, err)
		}
		out = append(out, s)
	}
	return out
}

// lastSim returns the last stats line with the given event ("" for the
// periodic ones), and whether there is one.
func lastSim(t *testing.T, p *process, event string) (simStats, bool) {
	t.Helper()
	lines := simLines(t, p)
	for i := len(lines) - 1; i >= 0; i-- {
		if lines[i].Event == event {
			return lines[i], true
		}
	}
	return simStats{}, false
}

// simHosts lists the hosts whose name starts with prefix, by name.
func (s *server) simHosts(t *testing.T, prefix string) map[string]hostJSON {
	t.Helper()
	r := s.call(t, http.MethodGet, "/api/v2/compute/hosts?size=2000", admin, nil)
	if r.status != http.StatusOK {
		t.Fatalf("GET hosts: status %d: %s", r.status, r.body)
	}
	var page struct {
		Contents []hostJSON `json:"contents"`
	}
	r.decode(t, &page)
	out := map[string]hostJSON{}
	for _, h := range page.Contents {
		if strings.HasPrefix(h.Name, prefix+"-") {
			out[h.Name] = h
		}
	}
	return out
}

// waitSimOnline waits until the simulator p's n hosts (prefix-00000, ...)
// are ONLINE, and returns their ids by index.
func (s *server) waitSimOnline(t *testing.T, p *process, prefix string, n int, timeout time.Duration) []int64 {
	t.Helper()
	var online map[string]hostJSON
	waitFor(t, timeout, fmt.Sprintf("%d simulated hosts ONLINE", n), func() bool {
		if p.exited() {
			t.Fatalf("agentplane-sim exited: %v\n%s", p.err, tail(p.logPath, 30))
		}
		online = s.simHosts(t, prefix)
		up := 0
		for _, h := range online {
			if h.Status == "ONLINE" {
				up++
			}
		}
		return up == n
	})
	ids := make([]int64, n)
	for i := range n {
		h, ok := online[simplan.HostName(prefix, i)]
		if !ok {
			t.Fatalf("no host %s among %d", simplan.HostName(prefix, i), len(online))
		}
		ids[i] = h.ID
	}
	return ids
}

// TestSimFleetBatchStop runs agentplane-sim with 30 hosts against a real
// server: they enroll and come ONLINE, a batch stop fails exactly on the
// hosts whose simulated stop fails, the stats lines count it, and SIGTERM
// takes every host OFFLINE.
func TestSimFleetBatchStop(t *testing.T) {
	const (
		hosts    = 30
		failRate = 0.2
		prefix   = "simit"
	)
	// The hosts whose first stop fails, by index (= parallel branch).
	failing := map[int]bool{}
	for i := range hosts {
		if simplan.Fails(i, 1, failRate) {
			failing[i] = true
		}
	}
	if len(failing) == 0 || len(failing) == hosts {
		t.Fatalf("%d of %d hosts fail at rate %v: pick another rate", len(failing), hosts, failRate)
	}

	bin := simBinary(t)
	s := startServer(t)
	p := startProcess(t, "agentplane-sim", []string{"SIM_ADMIN_PASSWORD=" + adminPassword}, bin,
		"--server", s.grpcAddr, "--ca-file", s.caFile, "--hosts", fmt.Sprint(hosts),
		"--state-dir", tempDir(t), "--name-prefix", prefix, "--fail-rate", fmt.Sprint(failRate),
		"--enroll-user", admin.user, "--enroll-password-env", "SIM_ADMIN_PASSWORD", "--enroll-concurrency", "8",
		"--stats-interval", "100ms", "--log-level", "info")

	waitFor(t, 60*time.Second, "the simulator's ready line", func() bool {
		if p.exited() {
			t.Fatalf("agentplane-sim exited: %v\n%s", p.err, tail(p.logPath, 30))
		}
		_, ok := lastSim(t, p, "ready")
		return ok
	})
	ids := s.waitSimOnline(t, p, prefix, hosts, 30*time.Second)
	waitFor(t, 10*time.Second, "the simulator to count every host connected", func() bool {
		st, ok := lastSim(t, p, "")
		return ok && st.Connected == hosts && *st.Enrolled == hosts && st.Welcomes >= hosts
	})

	began := time.Now()
	created := s.opPost(t, "/compute/hosts/batchStopAgents", map[string]any{"hostIds": ids})
	tk := s.opWaitFinal(t, created.ID)
	t.Logf("batch stop of %d simulated hosts (%d failing) ended %s after %s", hosts, len(failing), tk.Status,
		time.Since(began).Round(time.Millisecond))
	if tk.Status != "FAILED" {
		t.Fatalf("batch ended %s, want FAILED", tk.Status)
	}
	for i := range hosts {
		want := map[string]string{prepareStopName: "SUCCESSFUL", stopAllName: "SUCCESSFUL", finishName: "SUCCESSFUL"}
		if failing[i] {
			want[stopAllName], want[finishName] = "FAILED", "PENDING"
		}
		for name, status := range want {
			if st := tk.branchSub(t, i, name); st.Status != status {
				t.Errorf("branch %d (%s) %q: %s (%q), want %s", i, simplan.HostName(prefix, i), name, st.Status, st.Message, status)
			}
		}
		if msg := tk.branchSub(t, i, stopAllName).Message; failing[i] && !strings.Contains(msg, "still running") {
			t.Errorf("branch %d failed with %q, want it to name the process still running", i, msg)
		}
	}

	// The stats count every stop once, and the simulated failures.
	waitFor(t, 10*time.Second, "the stats to count the stops", func() bool {
		st, _ := lastSim(t, p, "")
		return st.Results == hosts
	})
	st, _ := lastSim(t, p, "")
	if st.Commands != hosts || st.Failed != int64(len(failing)) || st.Connected != hosts || st.Disconnects != 0 {
		t.Errorf("stats after the batch = %+v, want %d commands and results, %d failed, %d connected, no disconnect",
			st, hosts, len(failing), hosts)
	}
	lines := simLines(t, p)
	for i := 1; i < len(lines); i++ {
		if lines[i].T.Before(lines[i-1].T) || lines[i].Welcomes < lines[i-1].Welcomes || lines[i].Results < lines[i-1].Results {
			t.Fatalf("stats line %d goes backwards: %+v after %+v", i, lines[i], lines[i-1])
		}
	}

	// SIGTERM: the simulator exits 0 within a few seconds, every host OFFLINE.
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		t.Fatalf("agentplane-sim did not exit within 10s of SIGTERM:\n%s", tail(p.logPath, 30))
	}
	if p.err != nil {
		t.Fatalf("agentplane-sim exited with %v:\n%s", p.err, tail(p.logPath, 30))
	}
	if last, ok := lastSim(t, p, "stopped"); !ok || last.Connected != 0 || last.Disconnects != hosts {
		t.Errorf("stopped line = %+v (found %v), want 0 connected and %d disconnects", last, ok, hosts)
	}
	waitFor(t, 15*time.Second, "every simulated host OFFLINE", func() bool {
		for _, h := range s.simHosts(t, prefix) {
			if h.Status != "OFFLINE" {
				return false
			}
		}
		return true
	})
}
