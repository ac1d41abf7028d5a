// Package bench measures agentplane against its performance targets: it
// starts the real binaries (server, agentd, the fleet simulator), drives
// them over loopback, and reports latency percentiles, throughput and memory,
// each beside a baseline measured in the same run, since the machines are
// noisy and only ratios compare across runs.
//
// It lives under agentd/ because it is a client of the server: it drives
// agentplane-server as a black box, through its gRPC and REST APIs and the
// files its data dir documents (ca.crt, server.crt, server.key), and imports
// none of the server's packages. It measures agentd's own code in process
// (proc's discovery scan) and reads an enrolled host's identity by
// identity's file names, so it imports agentd's internal packages.
package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// Row is one measured line of the report.
type Row struct {
	Bench string `json:"bench"` // the scenario, e.g. "stop-accepted"
	Case  string `json:"case"`  // what varies inside it, e.g. "REST c=64"

	N      int     `json:"n,omitempty"`       // samples or hosts
	P50Ms  float64 `json:"p50_ms,omitempty"`  // latency
	P99Ms  float64 `json:"p99_ms,omitempty"`  // latency
	PerSec float64 `json:"per_sec,omitempty"` // throughput

	MemBytes int64  `json:"mem_bytes,omitempty"` // see MemWhat
	MemWhat  string `json:"mem_what,omitempty"`  // e.g. "server RSS per host"

	Baseline string  `json:"baseline,omitempty"` // what the ratio compares with, e.g. "grpc echo c=64"
	Ratio    float64 `json:"ratio,omitempty"`    // this / baseline, of the figure Baseline names

	Target string `json:"target,omitempty"` // the target, as text
	Met    *bool  `json:"met,omitempty"`    // nil: no target on this row

	Extra map[string]float64 `json:"extra,omitempty"` // named figures (breakdowns, histograms)
	Note  string             `json:"note,omitempty"`
}

// Check sets Met and Target.
func (r *Row) Check(target string, met bool) {
	r.Target, r.Met = target, &met
}

// Report is a whole run: the machine and every row.
type Report struct {
	Start   time.Time `json:"start"`
	Short   bool      `json:"short"`
	Machine Machine   `json:"machine"`
	Rows    []Row     `json:"rows"`
	Errors  []string  `json:"errors,omitempty"` // scenarios that could not run
}

// Machine describes where the figures come from.
type Machine struct {
	CPU     string `json:"cpu"`
	Cores   int    `json:"cores"`
	MemGiB  int    `json:"mem_gib"`
	Kernel  string `json:"kernel"`
	Go      string `json:"go"`
	Version string `json:"version"` // git describe of the binaries
}

// Ms turns a duration into float milliseconds for a Row.
func Ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// WriteTable prints the report as an aligned table.
func (rep *Report) WriteTable(w io.Writer) {
	m := rep.Machine
	fmt.Fprintf(w, "machine: %s, %d cores, %d GiB, %s, %s, agentplane %s\n", m.CPU, m.Cores, m.MemGiB, m.Kernel, m.Go, m.Version)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "bench\tcase\tn\tp50\tp99\trate/s\tmemory\tvs baseline\ttarget\tmet")
	for _, r := range rep.Rows {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Bench, r.Case, num(float64(r.N), "%.0f"),
			num(r.P50Ms, "%.2fms"), num(r.P99Ms, "%.2fms"), num(r.PerSec, "%.0f"), mem(r), ratio(r), r.Target, met(r.Met))
	}
	tw.Flush()
	for _, r := range rep.Rows {
		if len(r.Extra) == 0 && r.Note == "" {
			continue
		}
		fmt.Fprintf(w, "%s %s:", r.Bench, r.Case)
		if r.Note != "" {
			fmt.Fprintf(w, " %s", r.Note)
		}
		keys := make([]string, 0, len(r.Extra))
		for k := range r.Extra {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			fmt.Fprintf(w, " %s=%.4g", k, r.Extra[k])
		}
		fmt.Fprintln(w)
	}
	for _, e := range rep.Errors {
		fmt.Fprintf(w, "ERROR: %s\n", e)
	}
}

// WriteJSON writes the report as indented JSON to path.
func (rep *Report) WriteJSON(path string) error {
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

func num(v float64, format string) string {
	if v == 0 {
		return "-"
	}
	return fmt.Sprintf(format, v)
}

func mem(r Row) string {
	if r.MemBytes == 0 {
		return "-"
	}
	v := float64(r.MemBytes)
	s := fmt.Sprintf("%.1fKB", v/1024)
	if v >= 10<<20 {
		s = fmt.Sprintf("%.1fMB", v/(1<<20))
	}
	if r.MemWhat != "" {
		s += " (" + r.MemWhat + ")"
	}
	return s
}

func ratio(r Row) string {
	if r.Baseline == "" {
		return "-"
	}
	return fmt.Sprintf("%.2fx %s", r.Ratio, r.Baseline)
}

func met(m *bool) string {
	switch {
	case m == nil:
		return ""
	case *m:
		return "yes"
	default:
		return "MISSED"
	}
}

// Missed lists the rows whose target was missed.
func (rep *Report) Missed() []string {
	var out []string
	for _, r := range rep.Rows {
		if r.Met != nil && !*r.Met {
			out = append(out, strings.TrimSpace(r.Bench+" "+r.Case))
		}
	}
	return out
}
