package replica

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"agentplane/server/internal/auth"
	"agentplane/server/internal/errs"
)

// fakeStore is a registry in memory whose calls can be made to fail.
type fakeStore struct {
	mu           sync.Mutex
	rows         map[string]string // id -> incarnation
	beats        int
	registers    int
	heartbeatErr error         // returned by HeartbeatReplica while set
	block        chan struct{} // DeregisterReplica waits on it (or ctx) when set
	deregistered []string
}

func newFakeStore() *fakeStore { return &fakeStore{rows: map[string]string{}} }

func (f *fakeStore) RegisterReplica(_ context.Context, r Registration, _ time.Duration) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for id := range f.rows {
		if id != r.ID {
			return nil, fmt.Errorf("replica %q is live: %w", id, errs.ErrConflict)
		}
	}
	f.rows[r.ID] = r.Incarnation
	f.registers++
	return nil, nil
}

func (f *fakeStore) HeartbeatReplica(_ context.Context, id, inc string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.heartbeatErr != nil {
		return f.heartbeatErr
	}
	switch got, ok := f.rows[id]; {
	case !ok:
		return errs.ErrNotFound
	case got != inc:
		return errs.ErrConflict
	}
	f.beats++
	return nil
}

func (f *fakeStore) DeregisterReplica(ctx context.Context, id, inc string) error {
	f.mu.Lock()
	block := f.block
	f.mu.Unlock()
	if block != nil {
		select {
		case <-block:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.rows[id] == inc {
		delete(f.rows, id)
	}
	f.deregistered = append(f.deregistered, id)
	return nil
}

func (f *fakeStore) ListReplicas(context.Context, time.Duration) ([]Info, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []Info
	for id := range f.rows {
		out = append(out, Info{ID: id, Live: true})
	}
	return out, nil
}

func (f *fakeStore) set(fn func(f *fakeStore)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

func (f *fakeStore) get(fn func(f *fakeStore) bool) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return fn(f)
}

// waitFor polls cond until it holds, failing t past 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond) // polling, with the deadline above
	}
}

// syncBuffer is a log sink safe for concurrent use.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) count(msg string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return strings.Count(b.b.String(), `"message":"`+msg)
}

func start(t *testing.T, f *fakeStore, logs *syncBuffer) *Replica {
	t.Helper()
	r, err := Start(t.Context(), Config{Store: f, ID: "a:7070", Addr: "10.0.0.1:7070", Version: "v1",
		Interval: 5 * time.Millisecond, Lease: 50 * time.Millisecond, Log: zerolog.New(logs)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	return r
}

func TestHeartbeatsUntilClose(t *testing.T) {
	f, logs := newFakeStore(), &syncBuffer{}
	r := start(t, f, logs)
	waitFor(t, "three heartbeats", func() bool { return f.get(func(f *fakeStore) bool { return f.beats >= 3 }) })
	r.Close()
	if f.get(func(f *fakeStore) bool { return len(f.rows) != 0 || len(f.deregistered) != 1 }) {
		t.Fatalf("after Close: rows %v, deregistered %v", f.rows, f.deregistered)
	}
	var n int
	f.get(func(f *fakeStore) bool { n = f.beats; return true })
	time.Sleep(30 * time.Millisecond) // six intervals: no heartbeat after Close
	if f.get(func(f *fakeStore) bool { return f.beats != n }) {
		t.Fatal("heartbeats after Close")
	}
	r.Close() // twice: nothing more
	if logs.count("replica deregistered") != 1 {
		t.Fatal("Close twice deregistered twice")
	}
}

func TestFailuresLoggedSparselyThenRecovery(t *testing.T) {
	f, logs := newFakeStore(), &syncBuffer{}
	f.set(func(f *fakeStore) { f.heartbeatErr = errors.New("database down") })
	start(t, f, logs)
	waitFor(t, "40 failed heartbeats", func() bool { return logs.count("replica heartbeat failed") >= 6 })
	// 6 logs are failures 1, 2, 4, 8, 16, 32: not one per failure.
	time.Sleep(20 * time.Millisecond)
	if n := logs.count("replica heartbeat failed"); n > 7 {
		t.Fatalf("%d failure logs in ~40 failures", n)
	}
	f.set(func(f *fakeStore) { f.heartbeatErr = nil })
	waitFor(t, "the recovery log", func() bool { return logs.count("replica heartbeat recovered") == 1 })
	waitFor(t, "heartbeats again", func() bool { return f.get(func(f *fakeStore) bool { return f.beats >= 3 }) })
	if n := logs.count("replica heartbeat recovered"); n != 1 {
		t.Fatalf("%d recovery logs", n)
	}
}

func TestRowGoneRegistersAgain(t *testing.T) {
	f, logs := newFakeStore(), &syncBuffer{}
	start(t, f, logs)
	f.set(func(f *fakeStore) { delete(f.rows, "a:7070") })
	waitFor(t, "a second registration", func() bool {
		return f.get(func(f *fakeStore) bool { return f.registers == 2 && f.rows["a:7070"] != "" })
	})
}

func TestRefusedAtStart(t *testing.T) {
	f := newFakeStore()
	f.rows["b:7070"] = "x"
	_, err := Start(t.Context(), Config{Store: f, ID: "a:7070", Log: zerolog.Nop()})
	if !errors.Is(err, errs.ErrConflict) || !strings.Contains(err.Error(), `"b:7070"`) {
		t.Fatalf("Start beside a live replica: %v", err)
	}
}

func TestCloseBoundedWhenStoreHangs(t *testing.T) {
	f, logs := newFakeStore(), &syncBuffer{}
	r := start(t, f, logs)
	f.set(func(f *fakeStore) { f.block = make(chan struct{}) })
	done := make(chan struct{})
	go func() { r.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(DeregisterTimeout + 5*time.Second):
		t.Fatal("Close did not return")
	}
	if logs.count("deregistering the replica failed") != 1 {
		t.Fatal("no log of the failed deregistration")
	}
}

func TestHeartbeatsOutliveStartCtxUntilClose(t *testing.T) {
	f := newFakeStore()
	ctx, cancel := context.WithCancel(t.Context())
	r, err := Start(ctx, Config{Store: f, ID: "a:7070", Interval: 5 * time.Millisecond, Lease: 50 * time.Millisecond, Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	cancel() // the server's shutdown begins: the replica stays live
	var n int
	f.get(func(f *fakeStore) bool { n = f.beats; return true })
	waitFor(t, "heartbeats after ctx ended", func() bool { return f.get(func(f *fakeStore) bool { return f.beats >= n+2 }) })
	r.Close()
	select {
	case <-r.done:
	default:
		t.Fatal("the loop outlived Close")
	}
}

func TestValidateID(t *testing.T) {
	for _, id := range []string{"a:7070", "db-1.example.com:7070", "ü"} {
		if err := ValidateID(id); err != nil {
			t.Errorf("ValidateID(%q) = %v", id, err)
		}
	}
	for _, id := range []string{"", "a\tb", "a\nb", "\x00", "\xff", strings.Repeat("a", MaxIDLen+1)} {
		if err := ValidateID(id); !errors.Is(err, errs.ErrInvalidArgument) {
			t.Errorf("ValidateID(%q) = %v, want invalid", id, err)
		}
	}
}

func TestListNeedsAViewer(t *testing.T) {
	f := newFakeStore()
	r := start(t, f, &syncBuffer{})
	if _, err := r.List(t.Context()); !errors.Is(err, errs.ErrUnauthenticated) {
		t.Fatalf("List without credentials: %v", err)
	}
	for roles, want := range map[string]error{"": errs.ErrPermissionDenied, "TASK_VIEWER": nil, "HOST_MANAGER": nil, "ADMIN": nil} {
		p := auth.Principal{Username: "u"}
		if roles != "" {
			p.Roles = []auth.Role{auth.Role(roles)}
		}
		l, err := r.List(auth.WithPrincipal(t.Context(), p))
		if !errors.Is(err, want) || (want == nil && (len(l) != 1 || l[0].ID != "a:7070")) {
			t.Errorf("List as %q: %v %v", roles, l, err)
		}
	}
}

func TestStartRefusesALongAddress(t *testing.T) {
	_, err := Start(t.Context(), Config{Store: newFakeStore(), ID: "a:7070", Addr: strings.Repeat("a", 256) + ":7070", Log: zerolog.Nop()})
	if !errors.Is(err, errs.ErrInvalidArgument) {
		t.Fatalf("Start with a 261-byte address: %v", err)
	}
}
