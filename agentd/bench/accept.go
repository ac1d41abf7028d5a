package bench

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	hostv1 "agentplane/gen/agentplane/host/v1"
)

// stop-accepted: how fast StopAgent answers with the created task, through
// REST and gRPC, one request at a time and 64 at once, on the SQLite store.
// Every request stops a distinct host that runs no agent operation (a host
// with a stop in flight answers 409): the simulator brings up a fleet of
// connected hosts, each phase uses every host at most once, and the next
// phase starts when every stop of the last is final (the simulator answers
// stops at once), so one phase's work does not load the next.
//
// The baseline is a bare grpc-go unary call (the standard health Check, whose
// handler does nothing) on a grpc-go server in this process, measured in the
// same run at the same concurrency before, between and after the stops; each
// API is compared with the echo runs just around it. It runs over TLS like
// agentplane's listeners, with the same Basic authorization metadata (which
// it ignores), over one connection like the gRPC stops.
//
// Each API row also gives the server's CPU time per stop, over the phase and
// until its last stop is final (accepting and running a stop), and the
// simulator's; per-request samples go to <work>/{rest,grpc}-c{1,64}.csv.
func init() {
	register(Scenario{Order: 10, Name: "stop-accepted", Run: runStopAccepted})
}

// acceptPlan sizes a run.
type acceptPlan struct {
	hosts  int           // simulated hosts; each c=64 phase stops all of them once
	serial int           // requests of each c=1 phase
	echo   time.Duration // length of each echo measurement
}

const acceptPrefix = "acc" // the simulated hosts' name prefix

func runStopAccepted(ctx context.Context, env *Env) ([]Row, error) {
	plan := acceptPlan{hosts: 5000, serial: 2000, echo: 3 * time.Second}
	if env.Short {
		plan = acceptPlan{hosts: 2000, serial: 500, echo: time.Second}
	}
	prof := newE2EProf()
	srv, err := env.StartServer(ctx, "server", prof.args(ctx, "server")...)
	if err != nil {
		return nil, err
	}
	conn, err := srv.Dial()
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	hosts := hostv1.NewHostServiceClient(conn)

	began := time.Now()
	sim, stopSim, err := acceptStartSim(ctx, env, srv, plan.hosts)
	if err != nil {
		return nil, err
	}
	defer stopSim()
	ids, err := acceptHostIDs(ctx, hosts, plan.hosts)
	if err != nil {
		return nil, err
	}
	env.Logf("stop-accepted: %d simulated hosts connected in %s", len(ids), time.Since(began).Round(time.Second))

	echo, err := acceptStartEcho(ctx)
	if err != nil {
		return nil, err
	}
	defer echo.stop()

	restStop := func(ctx context.Context, id int64) error { return acceptREST(ctx, srv, id) }
	grpcStop := func(ctx context.Context, id int64) error {
		resp, err := hosts.StopAgent(ctx, &hostv1.StopAgentRequest{HostId: id})
		if err != nil {
			return fmt.Errorf("StopAgent host %d: %w", id, err)
		}
		if resp.GetTask().GetId() <= 0 {
			return fmt.Errorf("StopAgent host %d: no task in the answer", id)
		}
		return nil
	}
	if err := acceptWarm(ctx, srv, hosts, echo); err != nil {
		return nil, err
	}

	var rows []Row
	echoRun := func(c int) (*acceptResult, error) {
		r, err := acceptRun(ctx, c, 0, plan.echo, func(ctx context.Context, _ int) error { return echo.call(ctx) })
		if err != nil {
			return nil, fmt.Errorf("grpc echo c=%d: %w", c, err)
		}
		return r, nil
	}
	for _, c := range []int{1, 64} {
		n := plan.serial
		if c > 1 {
			n = len(ids)
		}
		// The echo runs before, between and after the stops: each API is
		// compared with the echo just before and just after it, which
		// bounds the machine's drift (others may load it meanwhile).
		before, err := echoRun(c)
		if err != nil {
			return rows, err
		}
		echoes := []*acceptResult{before}
		var apiRows []Row
		for _, api := range []struct {
			name string
			stop func(context.Context, int64) error
		}{{"REST", restStop}, {"gRPC", grpcStop}} {
			if err := acceptWaitIdle(ctx, hosts, len(ids)); err != nil {
				return rows, err
			}
			prof.start(ctx, fmt.Sprintf("stop-accepted-%s-c%d", strings.ToLower(api.name), c), time.Second)
			cpu0, simCPU0 := acceptCPU(srv.Proc), acceptCPU(sim)
			off := 0
			if api.name == "gRPC" && c == 1 {
				off = n // c=1 phases use disjoint hosts, for no reason but tidiness
			}
			r, err := acceptRun(ctx, c, n, 0, func(ctx context.Context, i int) error {
				return api.stop(ctx, ids[(off+i)%len(ids)])
			})
			if err != nil {
				return rows, fmt.Errorf("%s c=%d: %w (simulator log tail:\n%s)", api.name, c, err, sim.Tail(5))
			}
			if err := prof.wait(); err != nil {
				env.Logf("stop-accepted: profiles: %v", err)
			}
			if err := r.save(filepath.Join(env.Work, fmt.Sprintf("%s-c%d.csv", strings.ToLower(api.name), c))); err != nil {
				return rows, err
			}
			// Let this phase's stops finish before the echo after it.
			if err := acceptWaitIdle(ctx, hosts, len(ids)); err != nil {
				return rows, err
			}
			// What a stop costs in all, accepted and run: CPU time over the
			// phase and until its last stop was final, per stop.
			cpu, simCPU := acceptCPU(srv.Proc)-cpu0, acceptCPU(sim)-simCPU0
			after, err := echoRun(c)
			if err != nil {
				return rows, err
			}
			echoes = append(echoes, after)
			base := acceptMerge(before, after).row("")

			row := r.row(fmt.Sprintf("%s c=%d", api.name, c))
			row.Extra = map[string]float64{
				"vs_echo_p50": row.P50Ms / base.P50Ms, "vs_echo_p99": row.P99Ms / base.P99Ms,
				"vs_echo_rate": row.PerSec / base.PerSec, "echo_rate": base.PerSec,
				"server_cpu_ms_per_stop": Ms(cpu) / float64(r.n), "sim_cpu_ms_per_stop": Ms(simCPU) / float64(r.n),
			}
			if c == 1 {
				row.Baseline, row.Ratio = "grpc echo c=1 p99", row.Extra["vs_echo_p99"]
				row.Check("p99 ≤ 5 ms", row.P99Ms <= 5)
			} else {
				row.Baseline, row.Ratio = fmt.Sprintf("grpc echo c=%d rate", c), row.Extra["vs_echo_rate"]
				if api.name == "REST" {
					row.Check("≥ 2,000/s", row.PerSec >= 2000)
				} else {
					row.Check("≥ 25% of the echo's rate", row.PerSec >= 0.25*base.PerSec)
				}
			}
			row.Note = fmt.Sprintf("StopAgent → the created task, each to a distinct connected host of %d simulated, SQLite store, TLS, Basic auth; "+
				"vs the echo runs just before and after it", len(ids))
			apiRows = append(apiRows, row)
			before = after
		}
		base := acceptMerge(echoes...).row(fmt.Sprintf("baseline: grpc echo c=%d", c))
		base.Note = fmt.Sprintf("grpc-go health Check on an in-process grpc-go server, TLS, one connection, same metadata; %d runs of %s around the stops",
			len(echoes), plan.echo)
		rows = append(append(rows, base), apiRows...)
	}
	return rows, acceptWaitIdle(ctx, hosts, len(ids))
}

// acceptResult is one measured phase.
type acceptResult struct {
	lat     Latencies
	n       int
	elapsed time.Duration
	samples [][2]time.Duration // start since the phase began, latency; by start
}

// acceptCPU is the CPU time p has used so far (0 when unknown).
func acceptCPU(p *Process) time.Duration {
	d, err := CPUTime(p.PID())
	if err != nil {
		return 0
	}
	return d
}

// acceptMerge pools runs: all their samples, their summed calls and time.
func acceptMerge(rs ...*acceptResult) *acceptResult {
	out := &acceptResult{}
	for _, r := range rs {
		r.lat.mu.Lock()
		for _, d := range r.lat.d {
			out.lat.Add(d)
		}
		r.lat.mu.Unlock()
		out.n += r.n
		out.elapsed += r.elapsed
	}
	return out
}

func (r *acceptResult) row(name string) Row {
	row := Row{Bench: "stop-accepted", Case: name}
	r.lat.Fill(&row)
	if r.elapsed > 0 {
		row.PerSec = float64(r.n) / r.elapsed.Seconds()
	}
	return row
}

// acceptRun calls call with i = 0, 1, ... from conc workers until n calls
// were made (n > 0) or, with n = 0, for d. It stops at the first error.
func acceptRun(ctx context.Context, conc, n int, d time.Duration, call func(ctx context.Context, i int) error) (*acceptResult, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var next atomic.Int64
	lats := make([][]time.Duration, conc)
	starts := make([][]time.Duration, conc) // since start, for the samples file
	start := time.Now()
	end := start.Add(d)
	var wg sync.WaitGroup
	for w := range conc {
		wg.Go(func() {
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if n > 0 && i >= n || n == 0 && time.Now().After(end) {
					return
				}
				t0 := time.Now()
				if err := call(ctx, i); err != nil {
					cancel(err)
					return
				}
				lats[w] = append(lats[w], time.Since(t0))
				starts[w] = append(starts[w], t0.Sub(start))
			}
		})
	}
	wg.Wait()
	r := &acceptResult{elapsed: time.Since(start)}
	if err := context.Cause(ctx); err != nil {
		return r, err
	}
	for w, l := range lats {
		for i, d := range l {
			r.lat.Add(d)
			r.samples = append(r.samples, [2]time.Duration{starts[w][i], d})
		}
		r.n += len(l)
	}
	slices.SortFunc(r.samples, func(a, b [2]time.Duration) int { return cmp.Compare(a[0], b[0]) })
	return r, nil
}

// save writes the samples to path as CSV: start (ms since the phase began),
// latency (ms); for a look at the tail's pattern.
func (r *acceptResult) save(path string) error {
	var b strings.Builder
	b.WriteString("start_ms,latency_ms\n")
	for _, s := range r.samples {
		fmt.Fprintf(&b, "%.3f,%.3f\n", Ms(s[0]), Ms(s[1]))
	}
	return os.WriteFile(path, []byte(b.String()), 0o644)
}

// acceptREST posts one stop and checks that the answer is the created task.
func acceptREST(ctx context.Context, srv *Server, id int64) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, srv.URL(fmt.Sprintf("/api/v2/compute/hosts/%d/agent/stop", id)), nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", BasicAuth())
	resp, err := srv.HTTP.Do(req)
	if err != nil {
		return fmt.Errorf("stop host %d: %w", id, err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return fmt.Errorf("stop host %d: reading the answer: %w", id, err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("stop host %d: status %d: %s", id, resp.StatusCode, body)
	}
	var e struct {
		Successful bool `json:"successful"`
		Data       struct {
			ID int64 `json:"id"`
		} `json:"data"`
	}
	if err := json.Unmarshal(body, &e); err != nil {
		return fmt.Errorf("stop host %d: not a task in a success envelope (%w): %s", id, err, body)
	}
	if !e.Successful || e.Data.ID <= 0 {
		return fmt.Errorf("stop host %d: not a task in a success envelope: %s", id, body)
	}
	return nil
}

// acceptWarm opens the connections the phases use (64 keep-alive REST
// connections, the gRPC ones) and lets the server cache the admin's
// password check, with calls that create nothing.
func acceptWarm(ctx context.Context, srv *Server, hosts hostv1.HostServiceClient, echo *acceptEcho) error {
	_, err := acceptRun(ctx, 64, 64*4, 0, func(ctx context.Context, i int) error {
		switch i % 4 {
		case 0, 1:
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL("/api/v2/compute/hosts?size=1"), nil)
			if err != nil {
				return err
			}
			req.Header.Set("Authorization", BasicAuth())
			resp, err := srv.HTTP.Do(req)
			if err != nil {
				return err
			}
			_, _ = io.Copy(io.Discard, resp.Body) // drained for the connection's reuse; the status says the rest
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("GET hosts: status %d", resp.StatusCode)
			}
			return nil
		case 2:
			_, err := hosts.ListHosts(ctx, &hostv1.ListHostsRequest{Size: 1})
			return err
		default:
			return echo.call(ctx)
		}
	})
	if err != nil {
		return fmt.Errorf("warming up: %w", err)
	}
	return nil
}
