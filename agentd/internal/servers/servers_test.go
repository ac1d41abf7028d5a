package servers

import (
	"context"
	"crypto/tls"
	"errors"
	"math/rand/v2"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"agentplane/agentd/internal/testsrv"
	agentv1 "agentplane/gen/agentplane/agent/v1"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestParse(t *testing.T) {
	got, err := Parse(" a.example:7070, 10.0.0.2:7071,[::1]:7072 ")
	want := []Entry{{"a.example", "7070"}, {"10.0.0.2", "7071"}, {"::1", "7072"}}
	if err != nil || !slices.Equal(got, want) {
		t.Fatalf("Parse = %v, %v; want %v", got, err, want)
	}
	if got[2].String() != "[::1]:7072" {
		t.Fatalf("String = %q", got[2].String())
	}
	for _, tc := range []struct{ list, want string }{
		{"", "no server"},
		{"  ", "no server"},
		{"a:1,,b:2", "entry 2 of 3 is empty"},
		{"a:1,", "entry 2 of 2 is empty"},
		{"nowhere", `"nowhere": want host:port`},
		{"a:1,b", `"b": want host:port`},
		{"a:", `"a:": want host:port`},
		{":7070", `":7070": want host:port`},
		{"a:http", `port "http" is not a number`},
		{"a:0", `port "0" is not a number`},
		{"a:70000", `port "70000" is not a number`},
		{"a:1,b:2,a:1", `"a:1" is listed twice (entries 1 and 3)`},
		{"A.example:1,a.EXAMPLE:1", "listed twice"},
		{"[::1]:1,[0:0::1]:1", "listed twice"},
	} {
		if _, err := Parse(tc.list); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Parse(%q) = %v; want an error with %q", tc.list, err, tc.want)
		}
	}
	if _, err := Parse("a:1,a:2"); err != nil {
		t.Fatalf("one host on two ports: %v", err)
	}
}

// fakeResolver answers from a map, which a test may change; a host mapped
// to nil blocks until the lookup's ctx is done.
type fakeResolver struct {
	mu      sync.Mutex
	answers map[string][]string
	lookups int
}

func (r *fakeResolver) set(host string, addrs ...string) {
	r.mu.Lock()
	r.answers[host] = addrs
	r.mu.Unlock()
}

func (r *fakeResolver) LookupHost(ctx context.Context, host string) ([]string, error) {
	r.mu.Lock()
	addrs, ok := r.answers[host]
	r.lookups++
	r.mu.Unlock()
	switch {
	case !ok:
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	case addrs == nil:
		<-ctx.Done()
		return nil, ctx.Err()
	}
	return addrs, nil
}

func newPool(t *testing.T, list string, r Resolver, seed uint64) *Pool {
	t.Helper()
	entries, err := Parse(list)
	if err != nil {
		t.Fatal(err)
	}
	p := NewPool(Config{Entries: entries, Creds: insecure.NewCredentials(), Resolver: r,
		ResolveTimeout: 50 * time.Millisecond, Rand: rand.New(rand.NewPCG(seed, 0))})
	t.Cleanup(func() { p.Close() })
	return p
}

// round returns the endpoints of the next n attempts.
func round(t *testing.T, p *Pool, n int) []string {
	t.Helper()
	var got []string
	for range n {
		sc, err := p.Next(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, sc.Endpoint.String())
	}
	return got
}

func TestNameWithSeveralAddressesIsSeveralServers(t *testing.T) {
	r := &fakeResolver{answers: map[string][]string{"replicas.test": {"10.0.0.1", "10.0.0.2", "10.0.0.3"}}}
	p := newPool(t, "replicas.test:7070,10.0.0.9:7070", r, 1)
	all := []string{"replicas.test:7070 (10.0.0.1:7070)", "replicas.test:7070 (10.0.0.2:7070)",
		"replicas.test:7070 (10.0.0.3:7070)", "10.0.0.9:7070"}
	first := round(t, p, 4)
	if !slices.Equal(slices.Sorted(slices.Values(first)), slices.Sorted(slices.Values(all))) {
		t.Fatalf("a round = %v; want each of %v once", first, all)
	}
	// The same order round after round, each server once.
	if again := round(t, p, 8); !slices.Equal(again[:4], first) || !slices.Equal(again[4:], first) {
		t.Fatalf("next rounds %v; want %v twice", again, first)
	}
	if sc, _ := p.Next(t.Context()); sc.Servers != 4 {
		t.Fatalf("Servers = %d, want 4", sc.Servers)
	}

	// Resolved at each attempt: a changed answer is seen at the next one.
	before := r.lookups
	r.set("replicas.test", "10.0.0.4")
	got := round(t, p, 4)
	if r.lookups-before != 4 {
		t.Fatalf("%d lookups in 4 attempts", r.lookups-before)
	}
	for _, want := range []string{"replicas.test:7070 (10.0.0.4:7070)", "10.0.0.9:7070"} {
		if !slices.Contains(got, want) {
			t.Fatalf("after the DNS change: %v, want %s", got, want)
		}
	}
	for _, ep := range got {
		if strings.Contains(ep, "10.0.0.1") {
			t.Fatalf("after the DNS change: %v still has 10.0.0.1", got)
		}
	}
}

func TestUnresolvedEntryIsSkippedAndLookupsTimeOut(t *testing.T) {
	r := &fakeResolver{answers: map[string][]string{"slow.test": nil, "ok.test": {"10.0.0.1"}}}
	p := newPool(t, "slow.test:1,gone.test:1,ok.test:1", r, 2)
	start := time.Now()
	for range 3 {
		sc, err := p.Next(t.Context())
		if err != nil || sc.Endpoint.Addr != "10.0.0.1:1" || sc.Servers != 1 {
			t.Fatalf("Next = %v, %v; want the one that resolves", sc, err)
		}
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("three attempts took %s; a lookup is bounded by 50ms", d)
	}

	// None resolves: an error naming them.
	p = newPool(t, "slow.test:1,gone.test:1", r, 3)
	_, err := p.Next(t.Context())
	var dns *net.DNSError
	if !errors.Is(err, context.DeadlineExceeded) || !errors.As(err, &dns) || !strings.Contains(err.Error(), "resolving gone.test:1") {
		t.Fatalf("Next = %v; want both lookups' errors", err)
	}
}

// TestOrdersSpreadAFleet: agents that lose the same server move to the
// others evenly, and start evenly over the servers.
func TestOrdersSpreadAFleet(t *testing.T) {
	const agents = 3000
	firsts, afterA := map[string]int{}, map[string]int{}
	entries, err := Parse("10.0.0.1:1,10.0.0.2:1,10.0.0.3:1")
	if err != nil {
		t.Fatal(err)
	}
	for seed := range uint64(agents) {
		r := newRotation(Config{Entries: entries, Rand: rand.New(rand.NewPCG(seed, 0))})
		var eps []string
		for range 3 {
			ep, _, err := r.next(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			eps = append(eps, ep.String())
		}
		firsts[eps[0]]++
		i := slices.Index(eps, "10.0.0.1:1")
		afterA[eps[(i+1)%3]]++
	}
	for ep, n := range firsts {
		if n < agents/3*8/10 {
			t.Errorf("%d of %d agents start at %s", n, agents, ep)
		}
	}
	for _, ep := range []string{"10.0.0.2:1", "10.0.0.3:1"} {
		if n := afterA[ep]; n < agents/2*8/10 {
			t.Errorf("%d of %d agents go from 10.0.0.1 to %s", n, agents, ep)
		}
	}
}

func TestLocalhostResolvesForReal(t *testing.T) {
	p := newPool(t, "localhost:7070", nil, 1)
	p.cfg.ResolveTimeout = DefaultResolveTimeout
	seen := map[string]bool{}
	for _, ep := range round(t, p, 4) {
		seen[ep] = true
	}
	if !seen["localhost:7070 (127.0.0.1:7070)"] {
		t.Fatalf("localhost: %v; want 127.0.0.1 among them", seen)
	}
	for ep := range seen {
		if ep != "localhost:7070 (127.0.0.1:7070)" && ep != "localhost:7070 ([::1]:7070)" {
			t.Fatalf("localhost resolved to %s", ep)
		}
	}
}

func TestOneServerKeepsItsConnection(t *testing.T) {
	p := newPool(t, "127.0.0.1:1", nil, 1)
	a, err := p.Next(t.Context())
	if err != nil || !a.Fresh || a.Servers != 1 {
		t.Fatalf("first Next = %+v, %v", a, err)
	}
	b, err := p.Next(t.Context())
	if err != nil || b.CC != a.CC || b.Fresh {
		t.Fatalf("second Next = %+v, %v; want the same connection", b, err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Next(t.Context()); err == nil {
		t.Fatal("Next after Close")
	}
	if _, err := agentv1.NewAgentServiceClient(p).RenewCertificate(t.Context(), &agentv1.RenewCertificateRequest{}); status.Code(err) != codes.Unavailable {
		t.Fatalf("a call on a closed pool: %v", err)
	}
}

// TestServerNameIsTheNameDialled: with TLS, each server's certificate must
// be valid for its entry's host, whatever address it resolved to; a server
// name fixed in the credentials is checked for every entry instead.
func TestServerNameIsTheNameDialled(t *testing.T) {
	ca := testsrv.NewCA(t, "test ca") // the server's certificate: 127.0.0.1 and localhost
	srv := testsrv.Start(t, testsrv.Options{CA: ca, Token: "jt"})
	_, port, _ := net.SplitHostPort(srv.Addr)
	r := &fakeResolver{answers: map[string][]string{"localhost": {"127.0.0.1"}, "impostor.test": {"127.0.0.1"}}}
	enroll := func(serverName, host string) error {
		entries, err := Parse(net.JoinHostPort(host, port))
		if err != nil {
			t.Fatal(err)
		}
		creds := credentials.NewTLS(&tls.Config{RootCAs: ca.Pool(), ServerName: serverName, MinVersion: tls.VersionTLS12})
		p := NewPool(Config{Entries: entries, Creds: creds, ServerName: serverName, Resolver: r})
		defer p.Close()
		sc, err := p.Next(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(t.Context(), testsrv.Wait)
		defer cancel()
		_, err = agentv1.NewAgentServiceClient(sc.CC).Enroll(ctx, &agentv1.EnrollRequest{JoinToken: "wrong", HostName: "h"})
		return err
	}
	for _, tc := range []struct {
		serverName, host string
		ok               bool
	}{
		{"", "localhost", true},
		{"", "127.0.0.1", true},
		{"", "impostor.test", false},
		{"localhost", "impostor.test", true}, // the fixed name, as before for every entry
		{"impostor.test", "localhost", false},
	} {
		err := enroll(tc.serverName, tc.host)
		// The server answers (refusing the token) only over a verified connection.
		answered := status.Code(err) == codes.Unauthenticated
		if answered != tc.ok {
			t.Errorf("server name %q, entry %s: %v; want answered %v", tc.serverName, tc.host, err, tc.ok)
		}
		if !tc.ok && !strings.Contains(err.Error(), "certificate is valid for") {
			t.Errorf("server name %q, entry %s: %v; want a certificate name error", tc.serverName, tc.host, err)
		}
	}
}
