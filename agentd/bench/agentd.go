package bench

import (
	"bytes"
	"context"
	"debug/buildinfo"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"agentplane/agentd/internal/proc"
)

func init() { register(Scenario{Order: 40, Name: "agentd", Run: agentdBench}) }

// Targets of issue 5 for agentd.
const (
	agentdIdleRSSTarget = 15 << 20 // bytes
	agentdIdleCPUTarget = 0.1      // percent of one core
	agentdScanTarget    = 2.0      // scan / raw /proc/*/comm read, p50
	agentdUnrelated     = 2000     // unrelated processes running during the scan
)

// agentdBench measures the real agentd idle (RSS and CPU, next to an idle Go
// process), then, with 2,000 unrelated processes running, agentd's idle CPU
// again and its discovery scan, next to a raw read of /proc/*/comm.
func agentdBench(ctx context.Context, env *Env) (rows []Row, err error) {
	home := filepath.Join(env.Work, "ocp_agent")
	if err := agentdInstallFake(env, home); err != nil {
		return nil, err
	}
	if _, err := env.Start(ctx, "fake-ocp_agentd", []string{"FAKE_OCP_MODE=graceful"}, filepath.Join(home, "bin", proc.Supervisor)); err != nil {
		return nil, err
	}
	fake, err := agentdWaitFake(ctx, home)
	if err != nil {
		return nil, err
	}
	srv, a, err := agentdStart(ctx, env, home)
	if err != nil {
		return nil, err
	}
	idle, err := agentdIdle(ctx, env, srv, a, fake["ocp_mgragent"], 0)
	rows = append(rows, idle...)
	if err != nil {
		return rows, err
	}

	sleeps, err := agentdStartSleeps(ctx, agentdUnrelated)
	defer func() { // reaped even when the run fails
		if kerr := sleeps.kill(); kerr != nil && err == nil {
			err = kerr
		}
	}()
	if err != nil {
		return rows, err
	}
	env.Logf("agentd: %d unrelated processes running", len(sleeps.cmds))
	busy, err := agentdIdle(ctx, env, srv, a, fake["ocp_mgragent"], len(sleeps.cmds))
	rows = append(rows, busy...)
	if err != nil {
		return rows, err
	}
	scan, err := agentdScan(ctx, env, home)
	rows = append(rows, scan...)
	if err != nil {
		return rows, err
	}
	return rows, errors.Join(a.Stop(10*time.Second), srv.Stop())
}

// agentdInstallFake installs the fake OCP Agent as home/bin/<base name>.
func agentdInstallFake(env *Env, home string) error {
	bin := filepath.Join(home, "bin")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		return err
	}
	src := env.Binary("fakeocpagent")
	b, err := os.ReadFile(src)
	if err != nil {
		return fmt.Errorf("the fake OCP Agent (make build-bench builds it): %w", err)
	}
	for _, name := range proc.BaseNames {
		if err := os.WriteFile(filepath.Join(bin, name), b, 0o755); err != nil {
			return err
		}
	}
	return nil
}

// agentdWaitFake waits until every fake base process under home has written
// its pid file and runs from home/bin, and returns their pids by name.
func agentdWaitFake(ctx context.Context, home string) (map[string]int, error) {
	var pids map[string]int
	err := Poll(ctx, 15*time.Second, 20*time.Millisecond, "fake OCP Agent ready", func() (bool, error) {
		var ok bool
		pids, ok = fakeReady(home)
		return ok, nil
	})
	return pids, err
}

// agentdStart starts a TLS server and an enrolled agentd watching the fake
// OCP Agent under home, and waits until its host is ONLINE.
func agentdStart(ctx context.Context, env *Env, home string) (*Server, *Process, error) {
	srv, err := env.StartServer(ctx, "server")
	if err != nil {
		return nil, nil, err
	}
	const hostName = "bench-agentd"
	token, err := agentdJoinToken(ctx, srv, hostName)
	if err != nil {
		return nil, nil, err
	}
	a, err := env.Start(ctx, "agentd", []string{"AGENTPLANE_JOIN_TOKEN=" + token}, env.Binary("agentplane-agentd"),
		"--server", srv.GRPCAddr, "--ca-file", srv.CAFile, "--state-dir", filepath.Join(env.Work, "agentd-state"),
		"--host-name", hostName, "--install-home", home, "--log-format", "json", "--log-level", "info")
	if err != nil {
		return nil, nil, err
	}
	err = Poll(ctx, 30*time.Second, 50*time.Millisecond, "agentd's host ONLINE", func() (bool, error) {
		if a.Exited() {
			return false, fmt.Errorf("agentd exited: %s", a.Tail(20))
		}
		return agentdHostOnline(ctx, srv, hostName)
	})
	return srv, a, err
}

// agentdIdle lets agentd settle, then samples its RSS (every second) and
// CPU time over the window, and the same of the baseline process: the fake
// ocp_mgragent, a Go program that only waits for a signal (the Go runtime's
// idle floor). unrelated is how many unrelated processes run meanwhile: 0
// for the RSS and CPU rows, else a CPU row of its own, since agentd scans
// /proc on every heartbeat.
func agentdIdle(ctx context.Context, env *Env, srv *Server, a *Process, base, unrelated int) ([]Row, error) {
	window, settle := 60*time.Second, 5*time.Second
	if env.Short {
		window = 20 * time.Second
	}
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-time.After(settle):
	}
	env.Logf("agentd idle: sampling agentd (pid %d) and the fake ocp_mgragent (pid %d) for %s, %d unrelated processes",
		a.PID(), base, window, unrelated)
	as, bs := newAgentdSampler(a.PID()), newAgentdSampler(base)
	if err := errors.Join(as.start(), bs.start()); err != nil {
		return nil, err
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	end := time.Now().Add(window)
	for time.Now().Before(end) {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-tick.C:
		}
		if a.Exited() {
			return nil, fmt.Errorf("agentd exited while idle: %s", a.Tail(20))
		}
		if err := errors.Join(as.sample(), bs.sample()); err != nil {
			return nil, err
		}
	}
	if err := errors.Join(as.stop(), bs.stop()); err != nil {
		return nil, err
	}
	online, err := agentdHostOnline(ctx, srv, "bench-agentd")
	if err != nil {
		return nil, err
	}
	if !online {
		return nil, errors.New("agentd's host went OFFLINE during the idle window")
	}

	note := fmt.Sprintf("over %s after %s settled; server heartbeat 10s (default); %s; baseline: the fake ocp_mgragent, an idle Go program that waits for a signal",
		window, settle, agentdBuild(env.Binary("agentplane-agentd")))
	if env.Short {
		note += "; short mode: 20s window instead of 60s"
	}
	pct, basePct := as.cpuPercent(), bs.cpuPercent()
	cpu := Row{Bench: "agentd", Case: "idle CPU", N: as.n,
		Note: note + "; CPU time from /proc/pid/task/*/schedstat (ns), the 10 ms stat ticks beside it",
		Extra: map[string]float64{
			"cpu_pct_of_core": pct, "cpu_ms": Ms(as.cpu), "cpu_ms_stat_ticks": Ms(as.ticks),
			"baseline_cpu_pct_of_core": basePct, "baseline_cpu_ms": Ms(bs.cpu),
		}}
	if basePct > 0 { // an idle Go process often uses no CPU at all in a minute: no ratio then
		cpu.Baseline, cpu.Ratio = "idle Go process CPU", pct/basePct
	}
	cpu.Check(fmt.Sprintf("CPU < 0.1%% of a core (here %.4f%%)", pct), pct < agentdIdleCPUTarget)
	env.Logf("agentd idle: RSS peak %.1f MB (baseline %.1f MB), CPU %.4f%% of a core (%s; baseline %.4f%%)",
		float64(as.maxRSS)/(1<<20), float64(bs.maxRSS)/(1<<20), pct, as.cpu, basePct)
	if unrelated > 0 {
		cpu.Case = fmt.Sprintf("idle CPU, %d procs", unrelated)
		cpu.Extra["rss_peak_mb"] = float64(as.maxRSS) / (1 << 20)
		return []Row{cpu}, nil
	}
	rss := Row{Bench: "agentd", Case: "idle RSS", N: as.n, MemBytes: as.maxRSS, MemWhat: "agentd RSS, peak",
		Baseline: "idle Go process RSS", Ratio: float64(as.maxRSS) / float64(bs.maxRSS), Note: note,
		Extra: map[string]float64{
			"rss_mean_mb": as.meanRSS() / (1 << 20), "rss_first_mb": float64(as.firstRSS) / (1 << 20),
			"rss_last_mb": float64(as.lastRSS) / (1 << 20), "baseline_rss_peak_mb": float64(bs.maxRSS) / (1 << 20),
		}}
	rss.Check("RSS ≤ 15 MB", as.maxRSS <= agentdIdleRSSTarget)
	return []Row{rss, cpu}, nil
}

// agentdBuild says how the binary at path was built (cgo, build tags), which
// moves its RSS by megabytes: its text is mapped in whole.
func agentdBuild(path string) string {
	bi, err := buildinfo.ReadFile(path)
	if err != nil {
		return "build settings unknown: " + err.Error()
	}
	cgo, tags := "?", ""
	for _, s := range bi.Settings {
		switch s.Key {
		case "CGO_ENABLED":
			cgo = s.Value
		case "-tags":
			tags = s.Value
		}
	}
	return fmt.Sprintf("agentd built with CGO_ENABLED=%s tags=%q", cgo, tags)
}

// agentdJoinToken creates a join token bound to hostName over REST, as the
// admin.
func agentdJoinToken(ctx context.Context, srv *Server, hostName string) (string, error) {
	body, _ := json.Marshal(map[string]any{"hostName": hostName, "ttlSeconds": 600})
	var out struct {
		Token string `json:"token"`
	}
	if err := agentdREST(ctx, srv, http.MethodPost, "/api/v2/agent/joinTokens", body, &out); err != nil {
		return "", fmt.Errorf("creating a join token: %w", err)
	}
	if out.Token == "" {
		return "", errors.New("creating a join token: no token in the answer")
	}
	return out.Token, nil
}

// agentdHostOnline reports whether the host named name is ONLINE.
func agentdHostOnline(ctx context.Context, srv *Server, name string) (bool, error) {
	var page struct {
		Contents []struct {
			Name   string `json:"name"`
			Status string `json:"status"`
		} `json:"contents"`
	}
	if err := agentdREST(ctx, srv, http.MethodGet, "/api/v2/compute/hosts?size=100", nil, &page); err != nil {
		return false, err
	}
	for _, h := range page.Contents {
		if h.Name == name {
			return h.Status == "ONLINE", nil
		}
	}
	return false, nil
}

// agentdREST calls the REST API as the admin and decodes the envelope's
// data into out.
func agentdREST(ctx context.Context, srv *Server, method, path string, body []byte, out any) error {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, srv.URL(path), rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.SetBasicAuth(AdminUser, AdminPassword)
	resp, err := srv.HTTP.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s %s: %d %s", method, path, resp.StatusCode, b)
	}
	var env struct {
		Data json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(b, &env); err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	return json.Unmarshal(env.Data, out)
}
