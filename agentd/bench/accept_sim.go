package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"time"

	hostv1 "agentplane/gen/agentplane/host/v1"
)

// acceptStartSim starts agentplane-sim with n hosts and waits until every
// one is connected. stop ends it and removes its state.
func acceptStartSim(ctx context.Context, env *Env, srv *Server, n int) (*Process, func(), error) {
	// The simulated hosts journal every command with fsyncs, as agentd does;
	// on tmpfs those cost nothing, so the simulator loads the machine less.
	root := "/dev/shm"
	if st, err := os.Stat(root); err != nil || !st.IsDir() {
		root = env.Work
	}
	state, err := os.MkdirTemp(root, "agentplane-bench-sim-")
	if err != nil {
		return nil, nil, err
	}
	const pwEnv = "AGENTPLANE_BENCH_SIM_PASSWORD"
	p, err := env.Start(ctx, "sim", []string{pwEnv + "=" + AdminPassword}, env.Binary("agentplane-sim"),
		"--server", srv.GRPCAddr, "--ca-file", srv.CAFile, "--hosts", fmt.Sprint(n), "--state-dir", state,
		"--enroll-user", AdminUser, "--enroll-password-env", pwEnv, "--name-prefix", acceptPrefix,
		"--stop-delay", "0s", "--fail-rate", "0", "--stats-interval", "100ms")
	if err != nil {
		os.RemoveAll(state)
		return nil, nil, err
	}
	stop := func() {
		if err := p.Stop(10 * time.Second); err != nil {
			env.Logf("stop-accepted: %v", err)
		}
		os.RemoveAll(state)
	}
	last := time.Now()
	err = Poll(ctx, 10*time.Minute, 200*time.Millisecond, fmt.Sprintf("%d simulated hosts connected", n), func() (bool, error) {
		if p.Exited() {
			return false, fmt.Errorf("agentplane-sim exited: %s", p.Tail(10))
		}
		st := acceptSimStats(p.LogPath)
		if time.Since(last) > 10*time.Second {
			env.Logf("stop-accepted: simulator: %d enrolled, %d connected of %d", st.Enrolled, st.Connected, n)
			last = time.Now()
		}
		return st.Ready && st.Connected >= n, nil
	})
	if err != nil {
		stop()
		return nil, nil, err
	}
	return p, stop, nil
}

// acceptSimStat is what the bench reads of the simulator's stats lines.
type acceptSimStat struct {
	Event     string `json:"event"`
	Enrolled  int    `json:"enrolled"`
	Connected *int   `json:"connected"`
}

type acceptSimState struct {
	Ready               bool
	Enrolled, Connected int
}

// acceptSimStats reads the simulator's latest stats line, and whether it
// printed its "ready" line.
func acceptSimStats(path string) acceptSimState {
	var out acceptSimState
	f, err := os.Open(path)
	if err != nil {
		return out
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var s acceptSimStat
		if json.Unmarshal(sc.Bytes(), &s) != nil || s.Connected == nil {
			continue
		}
		out.Enrolled, out.Connected = s.Enrolled, *s.Connected
		out.Ready = out.Ready || s.Event == "ready"
	}
	return out
}

// acceptHosts pages through the simulated hosts.
func acceptHosts(ctx context.Context, hosts hostv1.HostServiceClient, each func(*hostv1.Host)) error {
	const size = 2000
	for page := int32(1); ; page++ {
		resp, err := hosts.ListHosts(ctx, &hostv1.ListHostsRequest{Page: page, Size: size})
		if err != nil {
			return fmt.Errorf("listing hosts: %w", err)
		}
		for _, h := range resp.GetHosts() {
			if strings.HasPrefix(h.GetName(), acceptPrefix+"-") {
				each(h)
			}
		}
		if len(resp.GetHosts()) < size {
			return nil
		}
	}
}

// acceptHostIDs returns the ids of the n simulated hosts once all are ONLINE.
func acceptHostIDs(ctx context.Context, hosts hostv1.HostServiceClient, n int) ([]int64, error) {
	var ids []int64
	err := Poll(ctx, time.Minute, 100*time.Millisecond, fmt.Sprintf("%d simulated hosts ONLINE", n), func() (bool, error) {
		ids = ids[:0]
		err := acceptHosts(ctx, hosts, func(h *hostv1.Host) {
			if h.GetStatus() == hostv1.HostStatus_HOST_STATUS_ONLINE {
				ids = append(ids, h.GetId())
			}
		})
		return len(ids) >= n, err
	})
	return ids, err
}

// acceptWaitIdle waits until no simulated host runs an agent operation, so
// that every host can be stopped again and no earlier stop loads the server.
func acceptWaitIdle(ctx context.Context, hosts hostv1.HostServiceClient, n int) error {
	return Poll(ctx, 3*time.Minute, 100*time.Millisecond, "every stop final", func() (bool, error) {
		busy, seen := 0, 0
		err := acceptHosts(ctx, hosts, func(h *hostv1.Host) {
			seen++
			if h.GetOperationTaskId() != 0 {
				busy++
			}
		})
		return busy == 0 && seen >= n, err
	})
}
