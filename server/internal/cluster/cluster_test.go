package cluster_test

import (
	"context"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"agentplane/server/internal/cluster"
	"agentplane/server/internal/fleet"
	"agentplane/server/internal/host"
	"agentplane/server/internal/pki"
	"agentplane/server/internal/replica"
	"agentplane/server/internal/rpc"
	"agentplane/server/internal/store"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// directory is the store for where hosts are, and a registry the test
// controls (the store's own keeps one replica per SQLite process).
type directory struct {
	*store.Store
	mu       sync.Mutex
	replicas map[string]replica.Info
}

func (d *directory) ListReplicas(context.Context, time.Duration) ([]replica.Info, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]replica.Info, 0, len(d.replicas))
	for _, r := range d.replicas {
		out = append(out, r)
	}
	return out, nil
}

func (d *directory) set(id, addr string, live bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.replicas[id] = replica.Info{ID: id, Addr: addr, Live: live}
}

// node is one in-process replica: a fleet, a router, peers, and a gRPC
// server over TLS on loopback with the agent and replica services.
type node struct {
	id     string
	addr   string
	fleet  *fleet.Fleet
	router *cluster.Router
	peers  *cluster.Peers
	gs     *grpc.Server
	once   sync.Once

	mu       sync.Mutex
	notified []int64 // ids received by Notify
	calls    int     // Notify calls received
	gone     []string
}

const lostAfter = 3 * time.Second

type cluster3 struct {
	t     *testing.T
	st    *store.Store
	ca    *pki.Authority
	dir   *directory
	nodes map[string]*node
}

func newCluster(t *testing.T, ids ...string) *cluster3 {
	t.Helper()
	st, err := store.Open(context.Background(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	ca, err := pki.Load(pki.Config{Dir: t.TempDir(), Hosts: []string{"127.0.0.1"}, Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	c := &cluster3{t: t, st: st, ca: ca, dir: &directory{Store: st, replicas: map[string]replica.Info{}}, nodes: map[string]*node{}}
	for _, id := range ids {
		c.start(id)
	}
	return c
}

func (c *cluster3) start(id string) *node {
	t := c.t
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	n := &node{id: id, addr: lis.Addr().String()}
	log := zerolog.Nop()
	if os.Getenv("AGENTPLANE_TEST_LOG") != "" {
		log = zerolog.New(zerolog.ConsoleWriter{Out: os.Stderr}).With().Timestamp().Str("replica", id).Logger()
	}
	n.fleet = fleet.New(fleet.Config{Registry: c.st, Logs: c.st, ReplicaID: id, LostAfter: lostAfter, HeartbeatInterval: time.Second,
		CancelWait: time.Second, QueryWait: 2 * time.Second, Log: log})
	n.fleet.Serving()
	n.peers = cluster.NewPeers(cluster.PeersConfig{Self: id, Dir: c.dir, ListEvery: 20 * time.Millisecond, DialTimeout: time.Second,
		TLS: c.ca.PeerTLSConfig(cluster.SelfCertificate(c.ca, id)),
		OnGone: func(peer string) {
			n.mu.Lock()
			n.gone = append(n.gone, peer)
			n.mu.Unlock()
		},
		Log: log})
	n.router = cluster.NewRouter(cluster.RouterConfig{Self: id, Fleet: n.fleet, Dir: c.dir, Peers: n.peers, LostAfter: lostAfter,
		Poll: 50 * time.Millisecond, CancelWait: 2 * time.Second, Log: log})
	n.gs = rpc.NewServer(rpc.Config{Fleet: n.fleet, Log: log}, grpc.Creds(credentials.NewTLS(c.ca.MutualTLSConfig())))
	cluster.Register(n.gs, cluster.ServerConfig{Router: n.router, Log: log, OnNotify: func(ids []int64) {
		n.mu.Lock()
		n.notified = append(n.notified, ids...)
		n.calls++
		n.mu.Unlock()
	}})
	go func() { _ = n.gs.Serve(lis) }()
	c.dir.set(id, n.addr, true)
	c.nodes[id] = n
	t.Cleanup(n.kill)
	return n
}

// kill stops the node as a dead process would: its listener and
// connections close at once.
func (n *node) kill() {
	n.once.Do(func() {
		n.gs.Stop()
		n.router.Close()
		n.peers.Close()
		n.fleet.Close()
	})
}

// host registers a host (as an enrollment would) and returns its agent.
func (c *cluster3) host(name string, runFor time.Duration) *agent {
	c.t.Helper()
	h, err := c.st.RegisterHost(context.Background(), host.Host{Name: name}, time.Now())
	if err != nil {
		c.t.Fatal(err)
	}
	if err := c.st.SetHostStatus(context.Background(), h.ID, host.StatusOffline); err != nil {
		c.t.Fatal(err)
	}
	a := newAgent(c.t, c.ca, h.ID, name, runFor)
	c.t.Cleanup(a.close)
	return a
}

// eventually polls cond every 10ms until it holds, failing after 10s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
