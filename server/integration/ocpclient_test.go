package integration_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// OceanBase's own OCP client, unmodified (testdata/ocp_mcp, see its
// README): it signs its calls as OCP's clients do and speaks only http://.

// ocpClientPython returns a python3 that can import httpx, the client's
// one dependency outside the standard library: $AGENTPLANE_PYTHON, else
// python3 on PATH, else /usr/bin/python3 (Debian's, with python3-httpx,
// where PATH leads to another one first). Without one the test is skipped,
// or fails when AGENTPLANE_REQUIRE_PYTHON=1 (CI).
func ocpClientPython(t *testing.T) string {
	t.Helper()
	var cands, tried []string
	if p := os.Getenv("AGENTPLANE_PYTHON"); p != "" {
		cands = append(cands, p)
	}
	cands = append(cands, "python3", "/usr/bin/python3")
	for _, c := range cands {
		path, err := exec.LookPath(c)
		if err != nil {
			tried = append(tried, c+": not found")
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		out, err := exec.CommandContext(ctx, path, "-c", "import httpx").CombinedOutput()
		cancel()
		if err == nil {
			return path
		}
		tried = append(tried, fmt.Sprintf("%s: %v %s", path, err, lastLine(out)))
	}
	msg := "no python3 that imports httpx (Debian: apt-get install python3 python3-httpx): " + strings.Join(tried, "; ")
	if os.Getenv("AGENTPLANE_REQUIRE_PYTHON") == "1" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

func lastLine(b []byte) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return lines[len(lines)-1]
}

// ocpClientStep is a line stop_host.py prints.
type ocpClientStep struct {
	Step       string  `json:"step"`
	Successful bool    `json:"successful"`
	HostIDs    []int64 `json:"hostIds"`
	TaskID     int64   `json:"taskId"`
	Status     any     `json:"status"`
	Creator    string  `json:"creator"`
	Body       string  `json:"body"`
}

// The Done-when of issue 14: the OCPClient, unmodified, with its own
// http:// base URL and an access key, stops a host against a server started
// with --http-plaintext (its query parameters sorted by raw name, an
// X-OCP-Trace header signed as written), while the agent is connected over
// mTLS to the gRPC listener, which still speaks TLS.
func TestOCPClientStopsAHost(t *testing.T) {
	t.Parallel()
	python := ocpClientPython(t)
	s := startServer(t, "--http-plaintext")
	by := startBystanders(t)
	home := newHome(t)
	startFake(t, home)
	a := s.startAgentd(t, home, time.Second)

	// gRPC (and so the agent's stream) is still TLS, with the server's CA.
	d := tls.Dialer{NetDialer: &net.Dialer{Timeout: 10 * time.Second}, Config: &tls.Config{RootCAs: s.caPool, NextProtos: []string{"h2"}, MinVersion: tls.VersionTLS12}}
	if c, err := d.DialContext(context.Background(), "tcp", s.grpcAddr); err != nil {
		t.Errorf("TLS to the gRPC listener: %v", err)
	} else {
		c.Close()
	}

	mcp := &creds{"ocp-mcp", "ocp-mcp-password-1"}
	s.createUser(t, mcp, "HOST_MANAGER", "TASK_VIEWER")
	k := s.createAccessKey(t, mcp.user)

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, python, filepath.Join("testdata", "ocp_mcp", "stop_host.py"))
	cmd.Env = append(os.Environ(), "PYTHONDONTWRITEBYTECODE=1", "OCP_TIMEOUT=120",
		"OCP_BASE_URL=http://"+s.httpAddr, "OCP_ACCESS_KEY_ID="+k.id, "OCP_ACCESS_KEY_SECRET="+k.secret,
		fmt.Sprintf("OCP_HOST_ID=%d", a.hostID))
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("stop_host.py: %v\n%s\nserver log:\n%s", err, out, tail(s.proc.logPath, 20))
	}
	steps := map[string]ocpClientStep{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		var st ocpClientStep
		if json.Unmarshal(sc.Bytes(), &st) == nil && st.Step != "" {
			steps[st.Step] = st
		}
	}
	if l := steps["list"]; !l.Successful || !slices.Contains(l.HostIDs, a.hostID) {
		t.Errorf("list through the client: %+v, want host %d\n%s", l, a.hostID, out)
	}
	stop, done := steps["stop"], steps["task"]
	if !stop.Successful || stop.TaskID == 0 || done.TaskID != stop.TaskID || done.Status != "SUCCESSFUL" || done.Creator != mcp.user {
		t.Fatalf("stop through the client: %+v then %+v, want task SUCCESSFUL created by %s\n%s", stop, done, mcp.user, out)
	}
	tk := s.getTask(t, stop.TaskID)
	if tk.Name != "Stop OCP agent" || tk.HostID != a.hostID {
		t.Errorf("task %+v, want Stop OCP agent of host %d", tk, a.hostID)
	}
	checkStopped(t, s, tk, home, by, a.hostID)
}
