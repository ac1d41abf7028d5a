// Command agentplane-bench runs agentplane's benchmarks against the built
// binaries and prints a table of p50, p99, throughput and memory, each beside
// its baseline and target (make bench; make bench-short).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"agentplane/agentd/bench"
)

var version = "dev"

func main() {
	os.Exit(run())
}

func run() int {
	if len(os.Args) > 1 && os.Args[1] == bench.BareServerCommand {
		if err := bench.RunBareServer(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		return 0
	}
	var (
		bin    = flag.String("bin", "bin", "directory with agentplane-server, agentplane-agentd, agentplane-sim and fakeocpagent")
		out    = flag.String("o", "", "also write the report as JSON to this file")
		short  = flag.Bool("short", false, "short mode: smaller fleets and windows, under 5 minutes")
		only   = flag.String("only", "", "comma-separated scenarios to run (default all): "+names())
		skip   = flag.String("skip", "", "comma-separated scenarios not to run (e.g. cluster, which needs mariadbd)")
		batch  = flag.Int("cluster-batch", 0, "run only the cluster scenario's batch row, with this many simulated hosts (0: all its rows, the batch with 10,000; 500 with -short)")
		nokill = flag.Bool("cluster-no-kill", false, "with -cluster-batch: kill no replica; the row is the batch alone, with MariaDB's statement counts per host")
		work   = flag.String("work", "", "scratch dir (default a new temporary dir, removed afterwards unless a scenario failed)")
	)
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	dir := *work
	if dir == "" {
		d, err := os.MkdirTemp("", "agentplane-bench-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		dir = d
	}
	o := bench.Options{Bin: *bin, Work: dir, Short: *short, Version: version, ClusterBatch: *batch, ClusterNoKill: *nokill,
		Logf: func(format string, args ...any) {
			fmt.Fprintf(os.Stderr, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
		}}
	if *only != "" {
		o.Only = strings.Split(*only, ",")
	}
	if *skip != "" {
		o.Skip = strings.Split(*skip, ",")
	}
	rep, err := bench.Run(ctx, o)
	if rep != nil {
		rep.WriteTable(os.Stdout)
		if *out != "" {
			if err := rep.WriteJSON(*out); err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	if len(rep.Errors) > 0 {
		fmt.Fprintf(os.Stderr, "bench: %d scenarios failed; their logs are in %s\n", len(rep.Errors), dir)
		return 1
	}
	if *work == "" {
		os.RemoveAll(dir)
	}
	if missed := rep.Missed(); len(missed) > 0 {
		fmt.Fprintf(os.Stderr, "bench: targets missed: %s\n", strings.Join(missed, "; "))
	}
	return 0
}

func names() string {
	var n []string
	for _, s := range bench.Scenarios() {
		n = append(n, s.Name)
	}
	return strings.Join(n, ",")
}
