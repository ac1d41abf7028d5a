package integration_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// requirePromtoolEnv set to 1 makes TestMetrics fail, not skip, without
// promtool (CI installs it: Debian's prometheus package).
const requirePromtoolEnv = "AGENTPLANE_REQUIRE_PROMTOOL"

// scrape is one /metrics answer: its text and its parsed families.
type scrape struct {
	text []byte
	fams map[string]*dto.MetricFamily
}

// scrapeMetrics GETs http://addr/metrics, with a deadline.
func scrapeMetrics(t *testing.T, addr string) scrape {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	req.Header.Set("Accept", "text/plain") // the text format promtool reads
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("scraping %s: %v", addr, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("scraping %s: %d %v", addr, resp.StatusCode, err)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("scrape of %s does not parse: %v", addr, err)
	}
	return scrape{text: b, fams: fams}
}

// value is the value of the series name{labels} (a superset of labels
// matches): a counter's or gauge's value; for name_count, a histogram's
// count. ok is false when there is no such series.
func (s scrape) value(name string, labels map[string]string) (v float64, ok bool) {
	fam, hist := s.fams[name], false
	if fam == nil {
		if base, cut := strings.CutSuffix(name, "_count"); cut {
			fam, hist = s.fams[base], true
		}
	}
	if fam == nil {
		return 0, false
	}
next:
	for _, m := range fam.GetMetric() {
		have := map[string]string{}
		for _, l := range m.GetLabel() {
			have[l.GetName()] = l.GetValue()
		}
		for k, want := range labels {
			if have[k] != want {
				continue next
			}
		}
		switch {
		case hist:
			return float64(m.GetHistogram().GetSampleCount()), true
		case m.Counter != nil:
			return m.GetCounter().GetValue(), true
		case m.Gauge != nil:
			return m.GetGauge().GetValue(), true
		}
		return m.GetUntyped().GetValue(), true
	}
	return 0, false
}

// names are the sample names a scrape holds: each family's, and a
// histogram's _bucket, _sum and _count.
func (s scrape) names() map[string]bool {
	out := map[string]bool{}
	for name, f := range s.fams {
		out[name] = true
		if f.GetType() == dto.MetricType_HISTOGRAM || f.GetType() == dto.MetricType_SUMMARY {
			out[name+"_bucket"], out[name+"_sum"], out[name+"_count"] = true, true, true
		}
	}
	return out
}

// promtoolCheck runs `promtool check metrics` on a scrape.
func promtoolCheck(t *testing.T, promtool, what string, s scrape) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, promtool, "check", "metrics")
	cmd.Stdin = bytes.NewReader(s.text)
	out, err := cmd.CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) != 0 {
		t.Errorf("promtool check metrics on the %s's scrape: %v\n%s", what, err, out)
	}
}

// dashboardMetrics returns the metric names the Grafana dashboard's
// queries (and template variables) use.
func dashboardMetrics(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(moduleRoot, "docs", "grafana-agentplane.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Title  string `json:"title"`
		Panels []struct {
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
		Templating struct {
			List []struct {
				Definition string `json:"definition"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("docs/grafana-agentplane.json: %v", err)
	}
	var exprs []string
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			exprs = append(exprs, tg.Expr)
		}
	}
	for _, v := range dash.Templating.List {
		exprs = append(exprs, v.Definition)
	}
	re := regexp.MustCompile(`\b(?:agentplane|grpc_server|process|go)_[a-z0-9_]+`)
	seen := map[string]bool{}
	for _, e := range exprs {
		for _, name := range re.FindAllString(e, -1) {
			seen[name] = true
		}
	}
	if len(exprs) < 20 || len(seen) < 20 {
		t.Fatalf("dashboard %q: %d queries over %d metrics; want a dashboard", dash.Title, len(exprs), len(seen))
	}
	out := make([]string, 0, len(seen))
	for n := range seen {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// Both daemons serve /metrics on --metrics-addr; a stop moves the task
// counters, the subtask and dispatch histograms, the REST and gRPC counts
// and agentd's command and signal counters; agents connected is 1; both
// scrapes pass promtool, and every metric the Grafana dashboard queries
// is in them.
func TestMetrics(t *testing.T) {
	t.Parallel()
	promtool, lookErr := exec.LookPath("promtool")
	if lookErr != nil && os.Getenv(requirePromtoolEnv) == "1" {
		t.Fatalf("promtool not found (%v) and %s=1: install Debian's prometheus package", lookErr, requirePromtoolEnv)
	}
	serverMetrics, agentdMetrics := freeAddr(t), freeAddr(t)
	s := startServer(t, "--metrics-addr", serverMetrics)
	home := newHome(t)
	startFake(t, home)
	a := s.startAgentd(t, home, time.Second)
	// Again with its metrics (enrolled by now, same state).
	a.proc.stop(t, 10*time.Second)
	a.argv = append(a.argv, "--metrics-addr", agentdMetrics)
	a.start(t)

	var srv, agt scrape
	waitFor(t, 60*time.Second, "agents_connected 1 and agentd connected", func() bool {
		srv, agt = scrapeMetrics(t, serverMetrics), scrapeMetrics(t, agentdMetrics)
		n, _ := srv.value("agentplane_agents_connected", nil)
		c, _ := agt.value("agentplane_agentd_connected", nil)
		return n == 1 && c == 1
	})
	stopTask := map[string]string{"name": "Stop OCP agent", "type": "MANUAL"}
	ended := map[string]string{"name": "Stop OCP agent", "type": "MANUAL", "status": "SUCCESSFUL"}
	createdBefore, _ := srv.value("agentplane_tasks_created_total", stopTask)
	endedBefore, _ := srv.value("agentplane_tasks_ended_total", ended)

	tk := s.stopOK(t, a.hostID)
	if final := s.waitFinal(t, tk.ID); final.Status != "SUCCESSFUL" {
		t.Fatalf("stop task ended %s: %+v", final.Status, final.Subtasks)
	}
	// The counters move once the outcome is stored: at most a moment
	// after the task reads final.
	waitFor(t, 30*time.Second, "tasks_ended_total to move", func() bool {
		srv = scrapeMetrics(t, serverMetrics)
		v, _ := srv.value("agentplane_tasks_ended_total", ended)
		return v == endedBefore+1
	})
	if v, _ := srv.value("agentplane_tasks_created_total", stopTask); v != createdBefore+1 {
		t.Errorf("agentplane_tasks_created_total{Stop OCP agent} = %v, want %v", v, createdBefore+1)
	}
	waitFor(t, 30*time.Second, "agentd's outbox to empty and its stop counted", func() bool {
		agt = scrapeMetrics(t, agentdMetrics)
		depth, ok := agt.value("agentplane_agentd_outbox_results", nil)
		stops, _ := agt.value("agentplane_agentd_commands_total", map[string]string{"kind": "stop", "outcome": "succeeded"})
		return ok && depth == 0 && stops == 1
	})
	atLeast := func(sc scrape, what string, name string, labels map[string]string, min float64) {
		t.Helper()
		if v, ok := sc.value(name, labels); !ok || v < min {
			t.Errorf("%s: %s%v = %v (present %v), want at least %v", what, name, labels, v, ok, min)
		}
	}
	atLeast(srv, "server", "agentplane_subtask_duration_seconds_count", map[string]string{"name": "Stop all OCP agent processes", "status": "SUCCESSFUL"}, 1)
	atLeast(srv, "server", "agentplane_dispatch_duration_seconds_count", map[string]string{"command": "stop_agent", "outcome": "succeeded"}, 1)
	atLeast(srv, "server", "agentplane_http_requests_total", map[string]string{"method": "POST", "route": "/compute/hosts/{hostId}/agent/stop", "code": "200"}, 1)
	atLeast(srv, "server", "agentplane_agent_stream_messages_total", map[string]string{"kind": "result"}, 1)
	atLeast(srv, "server", "agentplane_store_commit_writes_count", nil, 1)
	atLeast(srv, "server", "grpc_server_started_total", map[string]string{"grpc_service": "agentplane.agent.v1.AgentService", "grpc_method": "Connect"}, 1)
	atLeast(agt, "agentd", "agentplane_agentd_signals_sent_total", map[string]string{"signal": "SIGTERM"}, 1)
	atLeast(agt, "agentd", "agentplane_agentd_process_scan_duration_seconds_count", nil, 1)
	if v, _ := srv.value("agentplane_agents_connected", nil); v != 1 {
		t.Errorf("agentplane_agents_connected = %v after the stop, want 1", v)
	}
	if v, ok := srv.value("agentplane_tasks_running", nil); !ok || v != 0 {
		t.Errorf("agentplane_tasks_running = %v (present %v) after the stop, want 0", v, ok)
	}
	for name := range srv.names() {
		if strings.Contains(name, "host_id") || strings.Contains(name, "task_id") {
			t.Errorf("metric %s names an id", name)
		}
	}
	for _, sc := range []scrape{srv, agt} {
		for _, f := range sc.fams {
			for _, m := range f.GetMetric() {
				for _, l := range m.GetLabel() {
					if n := l.GetName(); n == "host_id" || n == "task_id" || n == "path" || n == "user" || n == "host" {
						t.Errorf("%s has the unbounded label %s", f.GetName(), n)
					}
				}
			}
		}
	}

	have := srv.names()
	for n := range agt.names() {
		have[n] = true
	}
	var missing []string
	for _, name := range dashboardMetrics(t) {
		if !have[name] {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		t.Errorf("the dashboard queries metrics neither daemon serves: %s", strings.Join(missing, ", "))
	}

	if lookErr != nil {
		t.Skipf("promtool not installed (%v): the scrapes were not checked with it (set %s=1 to fail instead)", lookErr, requirePromtoolEnv)
	}
	promtoolCheck(t, promtool, "server", srv)
	promtoolCheck(t, promtool, "agentd", agt)
}
