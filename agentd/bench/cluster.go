package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"

	hostv1 "agentplane/gen/agentplane/host/v1"
	taskv1 "agentplane/gen/agentplane/task/v1"
	"agentplane/internal/mariadbtest"
)

// cluster: three agentplane-server replicas on one private MariaDB (from
// internal/mariadbtest), sharing r1's CA and access-key sealing key as
// `make demo-cluster` does, and real agentds (each with the fake OCP Agent)
// given all three with --server. It measures, in this order:
//
//  1. idle database queries per replica per second (before any agentd);
//  2. stop end to end (StopAgent → SUCCESSFUL seen by WatchTask on the
//     replica that took the request) with the request on the replica holding
//     the host's stream, and on another, interleaved;
//  3. failover: a slow stop in flight, then SIGKILL of the replica holding
//     the stream or of the one owning the task; the time from the kill to
//     the task SUCCESSFUL seen by WatchTask on the third replica;
//  4. churn: stops through every replica while one is SIGKILLed every 10 s
//     (cluster_churn.go): tasks lost, doubled or failed;
//  5. a batch stop of N simulated hosts (agentplane-sim, given every
//     replica) with a replica SIGKILLed mid-batch (cluster_batch.go): the
//     batch's status and the time to all N connected again.
//
// Without mariadbd it fails (-skip cluster leaves it out).
func init() {
	register(Scenario{Order: 35, Name: "cluster", Run: runCluster})
}

const clusterReplicas = 3

// clusterRun is the running cluster.
type clusterRun struct {
	env      *Env
	db       *mariadbtest.Server
	replicas []*Server
	conns    []*grpc.ClientConn
	hosts    []hostv1.HostServiceClient
	tasks    []taskv1.TaskServiceClient
	agents   []*e2eHost
	homes    []string
	turn     atomic.Int64 // the churn's request replicas in turn
	prof     *e2eProf     // the replicas' CPU profiles (AGENTPLANE_BENCH_PPROF)
}

func runCluster(ctx context.Context, env *Env) (rows []Row, err error) {
	if reason, _ := mariadbtest.Missing(); reason != "" {
		return nil, fmt.Errorf("the cluster scenario needs MariaDB: %s; -skip cluster runs the others", reason)
	}
	// The fake ocp_agentd's children outlive it: reap them (as stop-e2e).
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return nil, fmt.Errorf("PR_SET_CHILD_SUBREAPER: %w", err)
	}
	c := &clusterRun{env: env, prof: newE2EProf()}
	defer func() {
		err = errors.Join(err, c.close())
		_ = unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
	}()
	began := time.Now()
	if err := c.start(ctx); err != nil {
		return nil, err
	}
	env.Logf("cluster: mariadbd and %d replicas up in %s", clusterReplicas, time.Since(began).Round(time.Millisecond))
	if n := env.ClusterBatch; n > 0 {
		var b Row
		if env.ClusterNoKill {
			b, err = c.batchAlone(ctx, n)
		} else {
			b, err = c.batchFailover(ctx, n)
		}
		if err != nil {
			return nil, err
		}
		return []Row{b}, nil
	}

	window := 30 * time.Second
	stops, kills, churn, batch := 100, 10, 1000, fleetTargetN
	if env.Short {
		// 500 simulated hosts: enrolled, stopped and re-homed in well
		// under a minute on a loaded two-core CI machine.
		window, stops, kills, churn, batch = 10*time.Second, 20, 4, 100, 500
	}
	idle, err := c.idleQueries(ctx, window)
	if err != nil {
		return nil, err
	}
	rows = append(rows, idle)

	if err := c.addAgents(ctx, 3); err != nil {
		return nil, err
	}
	stopRows, err := c.stopSameCross(ctx, stops)
	rows = append(rows, stopRows...)
	if err != nil {
		return rows, err
	}
	fo, err := c.failover(ctx, kills)
	rows = append(rows, fo...)
	if err != nil {
		return rows, err
	}
	ch, err := c.churn(ctx, churn)
	if err != nil {
		return rows, err
	}
	rows = append(rows, ch)
	b, err := c.batchFailover(ctx, batch)
	if err != nil {
		return rows, err
	}
	return append(rows, b), nil
}

// start launches mariadbd, a database for the store and the replicas.
func (c *clusterRun) start(ctx context.Context) error {
	db, err := mariadbtest.Launch(filepath.Join(c.env.Work, "mariadb"))
	if err != nil {
		return err
	}
	c.db = db
	if err := db.CreateDatabase(ctx, "agentplane"); err != nil {
		return err
	}
	dsnFile := filepath.Join(c.env.Work, "store.dsn")
	if err := os.WriteFile(dsnFile, []byte(db.URL("agentplane")+"\n"), 0o600); err != nil {
		return err
	}
	for i := range clusterReplicas {
		id := fmt.Sprintf("r%d", i+1)
		args := append([]string{"--store-dsn-file", dsnFile, "--replica-id", id, "--advertise-addr", "127.0.0.1"},
			c.prof.args(ctx, id)...)
		var s *Server
		if i == 0 {
			// r1 makes the CA, the sealing key and the admin user.
			if s, err = c.env.StartServer(ctx, id, args...); err != nil {
				return err
			}
		} else {
			first := c.replicas[0]
			s = &Server{env: c.env, name: id, DataDir: filepath.Join(c.env.Work, id), Args: append(args,
				"--ca-cert", filepath.Join(first.DataDir, "ca.crt"), "--ca-key", filepath.Join(first.DataDir, "ca.key"),
				"--access-key-seal-key-file", filepath.Join(first.DataDir, "access-key.key"))}
			// Given r1's CA by flags, it keeps none in its data dir.
			s.CAFile, s.TLS, s.HTTP = first.CAFile, first.TLS, first.HTTP
			if s.GRPCAddr, err = freeAddr(ctx); err != nil {
				return err
			}
			if s.HTTPAddr, err = freeAddr(ctx); err != nil {
				return err
			}
			if err := s.Launch(ctx); err != nil {
				return err
			}
		}
		conn, err := s.Dial()
		if err != nil {
			return err
		}
		c.replicas = append(c.replicas, s)
		c.conns = append(c.conns, conn)
		c.hosts = append(c.hosts, hostv1.NewHostServiceClient(conn))
		c.tasks = append(c.tasks, taskv1.NewTaskServiceClient(conn))
	}
	return nil
}

// addAgents starts n agentds, each with its own fake OCP Agent and --server
// listing every replica, and waits until all are ONLINE.
func (c *clusterRun) addAgents(ctx context.Context, n int) error {
	work, err := filepath.EvalSymlinks(c.env.Work) // agentd compares resolved executable paths
	if err != nil {
		return err
	}
	for k := range n {
		h := &e2eHost{name: fmt.Sprintf("bench-cluster-%d", k+1), home: filepath.Join(work, fmt.Sprintf("host%d", k+1), "ocp_agent")}
		c.homes = append(c.homes, h.home)
		if err := e2eInstallFake(c.env.Binary("fakeocpagent"), h.home); err != nil {
			return err
		}
		tok, err := c.hosts[0].CreateJoinToken(ctx, &hostv1.CreateJoinTokenRequest{HostName: h.name, Ttl: durationpb.New(time.Hour)})
		if err != nil {
			return fmt.Errorf("creating a join token: %w", err)
		}
		argv := []string{c.env.Binary("agentplane-agentd"),
			"--server", c.serverList(), "--ca-file", c.replicas[0].CAFile,
			"--state-dir", filepath.Join(filepath.Dir(h.home), "agentd-state"),
			"--host-name", h.name, "--install-home", h.home, "--grace", "30s", "--log-format", "json", "--log-level", "info"}
		if h.agentd, err = c.env.Start(ctx, fmt.Sprintf("agentd%d", k+1), []string{"AGENTPLANE_JOIN_TOKEN=" + tok.GetToken()}, argv...); err != nil {
			return err
		}
		c.agents = append(c.agents, h)
	}
	for _, h := range c.agents {
		if h.id, err = e2eWaitOnline(ctx, c.hosts[0], h); err != nil {
			return err
		}
		if _, err := c.waitHolder(ctx, h, func(int) bool { return true }); err != nil {
			return err
		}
	}
	return nil
}

// serverList is every replica's gRPC address, comma-separated (--server).
func (c *clusterRun) serverList() string {
	addrs := make([]string, len(c.replicas))
	for i, r := range c.replicas {
		addrs[i] = r.GRPCAddr
	}
	return strings.Join(addrs, ",")
}

// holder is the replica holding h's stream, from agentd's log: the server
// of its last "connected to server" with no loss after it; -1 for none.
func (c *clusterRun) holder(h *e2eHost) int {
	holder := -1
	eachLogLine(h.agentd.LogPath, func(line []byte) {
		var e struct {
			Msg    string `json:"message"`
			Server string `json:"server"`
		}
		if json.Unmarshal(line, &e) != nil {
			return
		}
		switch e.Msg {
		case "connected to server":
			holder = slices.IndexFunc(c.replicas, func(r *Server) bool { return r.GRPCAddr == e.Server })
		case "connection to server lost", "disconnected from server":
			holder = -1
		}
	})
	return holder
}

// waitHolder waits until h holds a stream on a replica for which cond
// holds, and returns that replica.
func (c *clusterRun) waitHolder(ctx context.Context, h *e2eHost, cond func(int) bool) (int, error) {
	r := -1
	err := Poll(ctx, 30*time.Second, 10*time.Millisecond, h.name+"'s stream", func() (bool, error) {
		r = c.holder(h)
		return r >= 0 && cond(r), nil
	})
	return r, err
}

// close stops the agents, the fakes, the replicas and mariadbd (last).
func (c *clusterRun) close() error {
	var errs []error
	for _, h := range c.agents {
		if h.agentd != nil {
			errs = append(errs, h.agentd.Stop(10*time.Second))
		}
	}
	errs = append(errs, e2eKillUnder(c.env, c.homes...))
	for _, conn := range c.conns {
		_ = conn.Close()
	}
	for _, r := range c.replicas {
		if r.Proc != nil && !r.Proc.Exited() {
			errs = append(errs, r.Stop())
		}
	}
	if c.db != nil {
		errs = append(errs, c.db.Stop())
	}
	return errors.Join(errs...)
}
