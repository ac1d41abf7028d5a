package identity

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"agentplane/agentd/internal/backoff"
	"agentplane/agentd/internal/testsrv"
	agentv1 "agentplane/gen/agentplane/agent/v1"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// hostIDs is an in-memory HostIDs.
type hostIDs struct {
	mu sync.Mutex
	id int64
}

func (h *hostIDs) HostID() (int64, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.id, nil
}

func (h *hostIDs) SetHostID(id int64) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.id = id
	return nil
}

type fixture struct {
	t     *testing.T
	ca    *testsrv.CA
	srv   *testsrv.Server
	clock *testsrv.Clock
	dir   string
	ids   *hostIDs
	logs  *testsrv.Logs
}

func newFixture(t *testing.T, o testsrv.Options) *fixture {
	f := &fixture{t: t, ca: testsrv.NewCA(t, "test ca"), clock: testsrv.NewClock(time.Now()),
		dir: t.TempDir(), ids: &hostIDs{}, logs: &testsrv.Logs{}}
	if o.CA == nil {
		o.CA = f.ca
	}
	if o.Clock == nil {
		o.Clock = f.clock
	}
	f.srv = testsrv.Start(t, o)
	return f
}

func (f *fixture) config(token string) Config {
	return Config{
		Dir: f.dir, Server: f.srv.Addr, RootCAs: f.ca.Pool(), JoinToken: token,
		HostName: "h1", InnerIP: "10.0.0.1", MachineID: "mid", HostIDs: f.ids,
		Backoff:    backoff.Backoff{Base: 5 * time.Millisecond, Cap: 20 * time.Millisecond},
		CheckEvery: 10 * time.Millisecond, Now: f.clock.Now,
		Log: zerolog.New(zerolog.MultiLevelWriter(f.logs, zerolog.NewTestWriter(f.t))).Level(zerolog.DebugLevel),
	}
}

func (f *fixture) open(token string) *Identity {
	f.t.Helper()
	id, err := Open(f.config(token))
	if err != nil {
		f.t.Fatal(err)
	}
	return id
}

func ensure(t *testing.T, id *Identity) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testsrv.Wait)
	defer cancel()
	return id.Ensure(ctx)
}

func checkFiles(t *testing.T, dir string, want *x509.Certificate) {
	t.Helper()
	for _, name := range []string{KeyFile, CertFile} {
		info, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if info.Mode().Perm() != 0o600 {
			t.Fatalf("%s mode %v, want 0600", name, info.Mode().Perm())
		}
	}
	key, err := readKey(filepath.Join(dir, KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	crt, err := readCert(filepath.Join(dir, CertFile))
	if err != nil {
		t.Fatal(err)
	}
	if !matches(crt, key) {
		t.Fatal("agent.key does not match agent.crt")
	}
	if want != nil && !crt.Equal(want) {
		t.Fatalf("agent.crt is %s, want %s", testsrv.String(crt), testsrv.String(want))
	}
	if matches, _ := filepath.Glob(filepath.Join(dir, "*"+staged)); len(matches) != 0 {
		t.Fatalf("staged files left: %v", matches)
	}
}

func TestEnrollThenReuse(t *testing.T) {
	f := newFixture(t, testsrv.Options{Token: "good"})
	id := f.open("good")
	if id.Certificate() != nil {
		t.Fatal("certificate in an empty dir")
	}
	if err := ensure(t, id); err != nil {
		t.Fatal(err)
	}
	issued := f.srv.Issued()
	if len(issued) != 1 || !id.Certificate().Equal(issued[0]) || id.HostID() != 7 {
		t.Fatalf("certificate %s host %d; issued %v", testsrv.String(id.Certificate()), id.HostID(), issued)
	}
	if got, _ := f.ids.HostID(); got != 7 {
		t.Fatalf("stored host id %d, want 7", got)
	}
	checkFiles(t, f.dir, issued[0])
	if strings.Contains(f.logs.String(), "good") {
		t.Fatal("the join token was logged")
	}

	// Again, without a token: the stored identity, no enrollment; the host
	// id is restored from the certificate.
	f.ids.SetHostID(99)
	id2 := f.open("")
	if err := ensure(t, id2); err != nil {
		t.Fatal(err)
	}
	if !id2.Certificate().Equal(issued[0]) || f.srv.Enrolls() != 1 {
		t.Fatalf("second open: %s, %d enrollments", testsrv.String(id2.Certificate()), f.srv.Enrolls())
	}
	if got, _ := f.ids.HostID(); got != 7 {
		t.Fatalf("stored host id %d after open, want 7", got)
	}
}

func TestEnrollRejected(t *testing.T) {
	f := newFixture(t, testsrv.Options{Token: "good"})
	err := ensure(t, f.open("bad"))
	if !errors.Is(err, ErrRejected) || !strings.Contains(err.Error(), testsrv.RejectMessage) {
		t.Fatalf("Ensure = %v, want ErrRejected with the server's message", err)
	}
	if ents, _ := os.ReadDir(f.dir); len(ents) != 0 {
		t.Fatalf("files after a rejected enrollment: %v", ents)
	}
}

func TestEnrollRetriesUnavailable(t *testing.T) {
	f := newFixture(t, testsrv.Options{Token: "good"})
	f.srv.FailEnrolls.Store(3)
	if err := ensure(t, f.open("good")); err != nil {
		t.Fatal(err)
	}
	if f.srv.Enrolls() != 1 || strings.Count(f.logs.String(), "cannot enroll") != 3 {
		t.Fatalf("%d enrollments; log:\n%s", f.srv.Enrolls(), f.logs)
	}
}

func TestEnsureWithoutToken(t *testing.T) {
	f := newFixture(t, testsrv.Options{Token: "good"})
	if err := ensure(t, f.open("")); !errors.Is(err, ErrNoJoinToken) || !strings.Contains(err.Error(), "--join-token") {
		t.Fatalf("Ensure without certificate and token = %v", err)
	}
	if err := ensure(t, f.open("good")); err != nil {
		t.Fatal(err)
	}
	f.clock.Add(2 * time.Hour) // past NotAfter
	if err := ensure(t, f.open("")); !errors.Is(err, ErrExpired) {
		t.Fatalf("Ensure with an expired certificate = %v, want ErrExpired", err)
	}
	id := f.open("good") // a token: enroll again
	if err := ensure(t, id); err != nil {
		t.Fatal(err)
	}
	if f.srv.Enrolls() != 2 || !id.Certificate().Equal(f.srv.Issued()[1]) {
		t.Fatalf("%d enrollments, certificate %s", f.srv.Enrolls(), testsrv.String(id.Certificate()))
	}
	checkFiles(t, f.dir, f.srv.Issued()[1])
}

func TestRefusesServerOfAnotherCA(t *testing.T) {
	f := newFixture(t, testsrv.Options{Token: "good", ServerCA: testsrv.NewCA(t, "other ca")})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	id := f.open("good")
	done := make(chan error, 1)
	go func() { done <- id.Ensure(ctx) }()
	testsrv.Poll(t, "a handshake error in the log", func() bool {
		return strings.Contains(f.logs.String(), "certificate signed by unknown authority")
	})
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Ensure = %v after cancel", err)
	}
	if f.srv.Enrolls() != 0 || id.Certificate() != nil {
		t.Fatal("enrolled with an untrusted server")
	}

	// The mTLS configuration refuses it too.
	c, err := tls.Dial("tcp", f.srv.Addr, id.ClientTLS())
	var ua x509.UnknownAuthorityError
	if err == nil {
		c.Close()
	}
	if !errors.As(err, &ua) {
		t.Fatalf("tls.Dial = %v, want an unknown authority error", err)
	}
}

// dialMTLS returns an AgentService client over id's mTLS configuration.
func dialMTLS(t *testing.T, f *fixture, id *Identity) agentv1.AgentServiceClient {
	t.Helper()
	cc, err := grpc.NewClient(f.srv.Addr, grpc.WithTransportCredentials(credentials.NewTLS(id.ClientTLS())))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return agentv1.NewAgentServiceClient(cc)
}

// connect opens a Connect stream (retrying until the client reconnects)
// and returns both ends once welcomed.
func connect(t *testing.T, ctx context.Context, f *fixture, svc agentv1.AgentServiceClient) (agentv1.AgentService_ConnectClient, *testsrv.Stream) {
	t.Helper()
	var cs agentv1.AgentService_ConnectClient
	testsrv.Poll(t, "a welcomed stream", func() bool {
		s, err := svc.Connect(ctx)
		if err != nil {
			return false
		}
		if err := s.Send(&agentv1.ConnectRequest{Kind: &agentv1.ConnectRequest_Hello{Hello: &agentv1.Hello{HostName: "h1"}}}); err != nil {
			return false
		}
		if m, err := s.Recv(); err != nil || m.GetWelcome() == nil {
			return false
		}
		cs = s
		return true
	})
	return cs, f.srv.NextStream(t)
}

func TestKeepRenewed(t *testing.T) {
	f := newFixture(t, testsrv.Options{Token: "good"})
	id := f.open("")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := id.Ensure(ctx); !errors.Is(err, ErrNoJoinToken) {
		t.Fatal(err)
	}
	id = f.open("good")
	if err := id.Ensure(ctx); err != nil {
		t.Fatal(err)
	}
	first := id.Certificate()
	svc := dialMTLS(t, f, id)
	cs, ss := connect(t, ctx, f, svc)
	if !ss.Peer.Equal(first) {
		t.Fatalf("stream opened with %s, want %s", testsrv.String(ss.Peer), testsrv.String(first))
	}

	f.srv.FailRenews.Store(2) // the first two renewals fail, then it works
	done := make(chan error, 1)
	go func() { done <- id.KeepRenewed(ctx, svc) }()
	time.Sleep(50 * time.Millisecond) // several checks: not due yet
	if f.srv.Renews() != 0 || f.srv.FailRenews.Load() != 2 {
		t.Fatal("renewed a fresh certificate")
	}
	f.clock.Add(41 * time.Minute) // 19 of 60 minutes left: due
	testsrv.Poll(t, "renewal", func() bool { return f.srv.Renews() == 1 })
	second := f.srv.Issued()[1]
	testsrv.Poll(t, "the new certificate in use", func() bool { return id.Certificate().Equal(second) })
	checkFiles(t, f.dir, second)
	if n := strings.Count(f.logs.String(), "cannot renew client certificate"); n != 2 {
		t.Fatalf("%d renewal warnings, want 2", n)
	}
	time.Sleep(50 * time.Millisecond) // the new one is fresh: no second renewal
	if f.srv.Renews() != 1 {
		t.Fatalf("%d renewals, want 1", f.srv.Renews())
	}

	// The open stream goes on, both ways.
	ss.Push(t, &agentv1.ConnectResponse{Kind: &agentv1.ConnectResponse_Ack{Ack: &agentv1.ResultAck{SubtaskId: 1, Attempt: 1}}})
	if m, err := cs.Recv(); err != nil || m.GetAck().GetSubtaskId() != 1 {
		t.Fatalf("old stream after renewal: %v, %v", m, err)
	}
	if err := cs.Send(&agentv1.ConnectRequest{Kind: &agentv1.ConnectRequest_Result{Result: &agentv1.CommandResult{SubtaskId: 1, Attempt: 1}}}); err != nil {
		t.Fatal(err)
	}
	if m := ss.Next(t); m.GetResult().GetSubtaskId() != 1 {
		t.Fatalf("server got %v", m)
	}

	// The next connection presents the new certificate.
	f.srv.CloseConns()
	_, ss2 := connect(t, ctx, f, svc)
	if !ss2.Peer.Equal(second) {
		t.Fatalf("new connection presented %s, want %s", testsrv.String(ss2.Peer), testsrv.String(second))
	}

	// A reopened Identity loads the renewed pair.
	if got := f.open("").Certificate(); !got.Equal(second) {
		t.Fatalf("reopened: %s", testsrv.String(got))
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("KeepRenewed = %v after cancel", err)
	}
}

func TestKeepRenewedExpired(t *testing.T) {
	for _, tc := range []struct {
		name  string
		token string
	}{{"without token", ""}, {"with token", "good"}} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, testsrv.Options{Token: "good"})
			if err := ensure(t, f.open("good")); err != nil {
				t.Fatal(err)
			}
			id := f.open(tc.token)
			if err := ensure(t, id); err != nil {
				t.Fatal(err)
			}
			f.srv.FailRenews.Store(1 << 30)
			f.clock.Add(2 * time.Hour)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			done := make(chan error, 1)
			go func() { done <- id.KeepRenewed(ctx, dialMTLS(t, f, id)) }()
			if tc.token == "" {
				select {
				case err := <-done:
					if !errors.Is(err, ErrExpired) || !strings.Contains(err.Error(), "--join-token") {
						t.Fatalf("KeepRenewed = %v, want ErrExpired", err)
					}
				case <-time.After(testsrv.Wait):
					t.Fatal("KeepRenewed did not return")
				}
				return
			}
			testsrv.Poll(t, "enrolled again", func() bool { return f.srv.Enrolls() == 2 })
			testsrv.Poll(t, "the new certificate in use", func() bool { return id.Certificate().Equal(f.srv.Issued()[1]) })
			checkFiles(t, f.dir, f.srv.Issued()[1])
			cancel()
			if err := <-done; err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestOpenCompletesOrDiscardsInterruptedInstall(t *testing.T) {
	f := newFixture(t, testsrv.Options{Token: "good"})
	id := f.open("good")
	if err := ensure(t, id); err != nil {
		t.Fatal(err)
	}
	old := id.Certificate()
	oldKey, _ := os.ReadFile(filepath.Join(f.dir, KeyFile))
	oldCrt, _ := os.ReadFile(filepath.Join(f.dir, CertFile))

	// A second pair, staged by hand.
	key, csr, err := newKeyAndCSR("h1")
	if err != nil {
		t.Fatal(err)
	}
	now := f.clock.Now()
	der, err := f.ca.Sign(csr, 7, now, now.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	fresh, _ := x509.ParseCertificate(der)
	other := &Identity{cfg: Config{Dir: t.TempDir()}}
	if err := other.install(key, fresh); err != nil {
		t.Fatal(err)
	}
	newKey, _ := os.ReadFile(filepath.Join(other.cfg.Dir, KeyFile))
	newCrt, _ := os.ReadFile(filepath.Join(other.cfg.Dir, CertFile))

	write := func(name string, b []byte) {
		if err := os.WriteFile(filepath.Join(f.dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name  string
		files map[string][]byte
		want  *x509.Certificate
	}{
		{"key staged only", map[string][]byte{KeyFile: oldKey, CertFile: oldCrt, KeyFile + staged: newKey}, old},
		{"both staged", map[string][]byte{KeyFile: oldKey, CertFile: oldCrt, KeyFile + staged: newKey, CertFile + staged: newCrt}, fresh},
		{"key renamed", map[string][]byte{KeyFile: newKey, CertFile: oldCrt, CertFile + staged: newCrt}, fresh},
		{"staged cert of no key", map[string][]byte{KeyFile: oldKey, CertFile: oldCrt, CertFile + staged: newCrt}, old},
		{"mismatched pair", map[string][]byte{KeyFile: newKey, CertFile: oldCrt}, nil},
		{"key missing", map[string][]byte{CertFile: oldCrt}, nil},
		{"garbage", map[string][]byte{KeyFile: []byte("x"), CertFile: []byte("y")}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, n := range []string{KeyFile, CertFile, KeyFile + staged, CertFile + staged} {
				os.Remove(filepath.Join(f.dir, n))
			}
			for n, b := range tc.files {
				write(n, b)
			}
			got := f.open("").Certificate()
			if tc.want == nil {
				if got != nil {
					t.Fatalf("loaded %s from an unusable pair", testsrv.String(got))
				}
				return
			}
			if !got.Equal(tc.want) {
				t.Fatalf("loaded %s, want %s", testsrv.String(got), testsrv.String(tc.want))
			}
			checkFiles(t, f.dir, tc.want)
		})
	}
}

func TestOpenTightensMode(t *testing.T) {
	f := newFixture(t, testsrv.Options{Token: "good"})
	if err := ensure(t, f.open("good")); err != nil {
		t.Fatal(err)
	}
	os.Chmod(filepath.Join(f.dir, KeyFile), 0o644)
	if f.open("").Certificate() == nil {
		t.Fatal("not loaded")
	}
	checkFiles(t, f.dir, nil)
}

func TestClientTLSPresentsCurrent(t *testing.T) {
	f := newFixture(t, testsrv.Options{Token: "good"})
	id := f.open("good")
	conf := id.ClientTLS()
	if c, err := conf.GetClientCertificate(nil); err != nil || len(c.Certificate) != 0 {
		t.Fatalf("before enrollment: %v, %v", c, err)
	}
	if err := ensure(t, id); err != nil {
		t.Fatal(err)
	}
	if c, _ := conf.GetClientCertificate(nil); !c.Leaf.Equal(id.Certificate()) {
		t.Fatal("not the enrolled certificate")
	}
	if conf.ServerName != "127.0.0.1" || conf.ClientSessionCache != id.sessions {
		t.Fatalf("ServerName %q, session cache %v", conf.ServerName, conf.ClientSessionCache)
	}
}

func TestDueAndCheckEvery(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		life, elapsed time.Duration
		due           bool
		every         time.Duration
	}{
		{time.Hour, 0, false, 6 * time.Minute},
		{time.Hour, 39 * time.Minute, false, 6 * time.Minute},
		{time.Hour, 41 * time.Minute, true, 6 * time.Minute},
		{time.Hour, 2 * time.Hour, true, 6 * time.Minute},
		{90 * 24 * time.Hour, 59 * 24 * time.Hour, false, time.Hour},
		{90 * 24 * time.Hour, 61 * 24 * time.Hour, true, time.Hour},
		{5 * time.Second, 0, false, time.Second},
	} {
		leaf := &x509.Certificate{NotBefore: t0, NotAfter: t0.Add(tc.life)}
		if got := Due(leaf, t0.Add(tc.elapsed)); got != tc.due {
			t.Errorf("Due(life %v, elapsed %v) = %v", tc.life, tc.elapsed, got)
		}
		if got := (&Identity{}).checkEvery(leaf); got != tc.every {
			t.Errorf("checkEvery(life %v) = %v, want %v", tc.life, got, tc.every)
		}
	}
}

func TestHostIDOf(t *testing.T) {
	for _, tc := range []struct {
		uri  string
		want int64
	}{
		{"agentplane://hosts/42", 42},
		{"agentplane://hosts/0", 0},
		{"agentplane://hosts/-1", 0},
		{"agentplane://hosts/42/x", 0},
		{"agentplane://hosts/042", 0},
		{"agentplane://other/42", 0},
		{"https://hosts/42", 0},
	} {
		c := &x509.Certificate{}
		if u, err := url.Parse(tc.uri); err == nil {
			c.URIs = append(c.URIs, u)
		}
		got, err := HostIDOf(c)
		if got != tc.want || (err == nil) != (tc.want > 0) {
			t.Errorf("HostIDOf(%s) = %d, %v", tc.uri, got, err)
		}
	}
	if HostURI(42).String() != "agentplane://hosts/42" {
		t.Fatal(HostURI(42))
	}
}

func TestShortCertificatesDoNotStorm(t *testing.T) {
	// Every certificate is due at once: 1 minute left of 6.
	f := newFixture(t, testsrv.Options{Token: "good", Lifetime: time.Minute, Backdate: 5 * time.Minute})
	id := f.open("good")
	if err := ensure(t, id); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- id.KeepRenewed(ctx, dialMTLS(t, f, id)) }()
	testsrv.Poll(t, "a renewal", func() bool { return f.srv.Renews() >= 1 })
	time.Sleep(100 * time.Millisecond) // CheckEvery is 10ms: about 10 more at most
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if n := f.srv.Renews(); n > 30 {
		t.Fatalf("%d renewals in about 100ms: a renewal storm", n)
	}
	if !strings.Contains(f.logs.String(), "already due for renewal") {
		t.Fatal("no warning about short certificates")
	}
}
