package cluster_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/types/known/timestamppb"

	agentv1 "agentplane/gen/agentplane/agent/v1"
	"agentplane/server/internal/pki"
)

// agent is a scripted agentd, speaking the agent protocol over a real TLS
// stream with a certificate the CA signed for its host: it journals each
// (subtask, attempt), asks for the go-ahead (Begin) before running a
// command once, keeps its result until acknowledged (re-sent on each new
// stream, as agentd's outbox does), answers queries from its journal, and
// refuses commands of an epoch older than the newest it has seen.
type agent struct {
	t      *testing.T
	hostID int64
	name   string
	cert   tls.Certificate
	roots  *x509.CertPool
	runFor time.Duration

	mu      sync.Mutex
	journal map[ak]*entry
	runs    map[ak]int // commands begun, by (subtask, attempt)
	queries map[ak]int // queries received
	acks    map[ak]int
	epoch   int64
	cur     *agentConn
	all     []*agentConn
}

type ak struct {
	subtask int64
	attempt int32
}

type entry struct {
	state  agentv1.CommandState
	result *agentv1.CommandResult
	acked  bool // out of the outbox; the journal still answers with the result
}

type agentConn struct {
	cc     *grpc.ClientConn
	stream agentv1.AgentService_ConnectClient
	cancel context.CancelFunc
	sendMu sync.Mutex
	done   chan struct{}
	epoch  int64
	once   sync.Once
}

func newAgent(t *testing.T, ca *pki.Authority, hostID int64, name string, runFor time.Duration) *agent {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: name}}, key)
	if err != nil {
		t.Fatal(err)
	}
	der, err := ca.SignClient(csr, hostID, name)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(ca.CAPEM())
	return &agent{t: t, hostID: hostID, name: name, cert: tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key},
		roots: roots, runFor: runFor, journal: map[ak]*entry{}, runs: map[ak]int{}, queries: map[ak]int{}, acks: map[ak]int{}}
}

// connect opens a stream to the server at addr and makes it the agent's
// current one; results not acknowledged are sent again on it.
func (a *agent) connect(addr string) error {
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
		MinVersion: tls.VersionTLS12, RootCAs: a.roots, Certificates: []tls.Certificate{a.cert},
	})))
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := agentv1.NewAgentServiceClient(cc).Connect(ctx)
	if err == nil {
		err = stream.Send(&agentv1.ConnectRequest{Kind: &agentv1.ConnectRequest_Hello{Hello: &agentv1.Hello{HostId: a.hostID, HostName: a.name}}})
	}
	var m *agentv1.ConnectResponse
	if err == nil {
		m, err = stream.Recv()
	}
	if err != nil {
		cancel()
		_ = cc.Close()
		return err
	}
	c := &agentConn{cc: cc, stream: stream, cancel: cancel, done: make(chan struct{}), epoch: m.GetWelcome().GetEpoch()}
	a.mu.Lock()
	a.epoch = max(a.epoch, c.epoch)
	a.cur = c
	a.all = append(a.all, c)
	var outbox []*agentv1.CommandResult
	for _, e := range a.journal {
		if e.result != nil && !e.acked {
			outbox = append(outbox, e.result)
		}
	}
	a.mu.Unlock()
	for _, r := range outbox {
		c.send(&agentv1.ConnectRequest{Kind: &agentv1.ConnectRequest_Result{Result: r}})
	}
	go a.read(c)
	return nil
}

// close ends the agent's streams.
func (a *agent) close() {
	a.mu.Lock()
	all := a.all
	a.all, a.cur = nil, nil
	a.mu.Unlock()
	for _, c := range all {
		c.close()
	}
}

func (c *agentConn) close() {
	c.once.Do(func() {
		c.cancel()
		_ = c.cc.Close()
	})
	<-c.done
}

func (c *agentConn) send(m *agentv1.ConnectRequest) {
	c.sendMu.Lock()
	defer c.sendMu.Unlock()
	_ = c.stream.Send(m)
}

// current sends m on the agent's current stream.
func (a *agent) current(m *agentv1.ConnectRequest) {
	a.mu.Lock()
	c := a.cur
	a.mu.Unlock()
	if c != nil {
		c.send(m)
	}
}

func (a *agent) read(c *agentConn) {
	defer close(c.done)
	for {
		m, err := c.stream.Recv()
		if err != nil {
			return
		}
		switch {
		case m.GetCommand() != nil:
			cmd := m.GetCommand()
			k := ak{cmd.GetSubtaskId(), cmd.GetAttempt()}
			a.mu.Lock()
			stale := cmd.GetEpoch() < a.epoch
			e := a.journal[k]
			if e == nil && !stale {
				a.journal[k] = &entry{state: agentv1.CommandState_COMMAND_STATE_WAITING}
			}
			a.mu.Unlock()
			if e == nil && !stale {
				c.send(&agentv1.ConnectRequest{Kind: &agentv1.ConnectRequest_Begin{Begin: &agentv1.CommandBegin{SubtaskId: k.subtask, Attempt: k.attempt}}})
			}
		case m.GetBeginAnswer() != nil:
			b := m.GetBeginAnswer()
			k := ak{b.GetSubtaskId(), b.GetAttempt()}
			a.mu.Lock()
			e := a.journal[k]
			run := e != nil && e.state == agentv1.CommandState_COMMAND_STATE_WAITING && b.GetProceed()
			if run {
				e.state = agentv1.CommandState_COMMAND_STATE_RUNNING
				a.runs[k]++
			}
			a.mu.Unlock()
			if run {
				time.AfterFunc(a.runFor, func() { a.finish(k) })
			}
		case m.GetQuery() != nil:
			q := m.GetQuery()
			k := ak{q.GetSubtaskId(), q.GetAttempt()}
			a.mu.Lock()
			a.queries[k]++
			ans := &agentv1.QueryAnswer{SubtaskId: k.subtask, Attempt: k.attempt, State: agentv1.CommandState_COMMAND_STATE_UNKNOWN}
			waiting := false
			if e := a.journal[k]; e != nil {
				ans.State, ans.Result = e.state, e.result
				waiting = e.state == agentv1.CommandState_COMMAND_STATE_WAITING
			}
			a.mu.Unlock()
			c.send(&agentv1.ConnectRequest{Kind: &agentv1.ConnectRequest_Answer{Answer: ans}})
			if waiting {
				c.send(&agentv1.ConnectRequest{Kind: &agentv1.ConnectRequest_Begin{Begin: &agentv1.CommandBegin{SubtaskId: k.subtask, Attempt: k.attempt}}})
			}
		case m.GetAck() != nil:
			k := ak{m.GetAck().GetSubtaskId(), m.GetAck().GetAttempt()}
			a.mu.Lock()
			a.acks[k]++
			if e := a.journal[k]; e != nil {
				e.acked = true
			}
			a.mu.Unlock()
		}
	}
}

// finish ends a running command with success and sends its result on the
// current stream (kept until acknowledged).
func (a *agent) finish(k ak) {
	r := &agentv1.CommandResult{SubtaskId: k.subtask, Attempt: k.attempt, Outcome: agentv1.CommandOutcome_COMMAND_OUTCOME_SUCCEEDED,
		Message: "stopped", FinishTime: timestamppb.Now()}
	a.mu.Lock()
	if e := a.journal[k]; e != nil {
		e.state, e.result = agentv1.CommandState_COMMAND_STATE_FINISHED, r
	}
	a.mu.Unlock()
	a.current(&agentv1.ConnectRequest{Kind: &agentv1.ConnectRequest_Result{Result: r}})
}

func (a *agent) counts(k ak) (runs, queries, acks int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.runs[k], a.queries[k], a.acks[k]
}
