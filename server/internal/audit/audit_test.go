package audit_test

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

	"agentplane/server/internal/audit"
	"agentplane/server/internal/errs"
)

func TestNoteFill(t *testing.T) {
	tests := []struct {
		name string
		note func(ctx context.Context)
		in   audit.Event // what the adapter knew
		want audit.Event
	}{
		{"nothing noted", func(context.Context) {}, audit.Event{SourceAddr: "10.0.0.9:5000"},
			audit.Event{SourceAddr: "10.0.0.9:5000"}},
		{"domain annotations", func(ctx context.Context) {
			audit.SetHost(ctx, 2)
			audit.SetTask(ctx, 30443)
			audit.SetTarget(ctx, "AK1")
		}, audit.Event{}, audit.Event{HostID: 2, TaskID: 30443, Target: "AK1"}},
		{"principal wins over the adapter's address", func(ctx context.Context) {
			audit.SetPrincipal(ctx, "ops", "AKID", "10.0.0.1:4000")
		}, audit.Event{SourceAddr: "10.0.0.9:5000"},
			audit.Event{Username: "ops", AccessKeyID: "AKID", SourceAddr: "10.0.0.1:4000"}},
		{"address only, for a refused call", func(ctx context.Context) {
			audit.SetPrincipal(ctx, "", "", "10.0.0.1:4000")
		}, audit.Event{SourceAddr: "10.0.0.9:5000"}, audit.Event{SourceAddr: "10.0.0.1:4000"}},
		{"actor without a user", func(ctx context.Context) {
			audit.SetActor(ctx, "agent:db-1")
			audit.SetHost(ctx, 5)
		}, audit.Event{}, audit.Event{Username: "agent:db-1", HostID: 5}},
		{"a user wins over the actor", func(ctx context.Context) {
			audit.SetActor(ctx, "agent:db-1")
			audit.SetPrincipal(ctx, "admin", "", "")
		}, audit.Event{}, audit.Event{Username: "admin"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, n := audit.WithNote(context.Background())
			if audit.From(ctx) != n {
				t.Fatal("From does not return the Note")
			}
			tt.note(ctx)
			got := tt.in
			n.Fill(&got)
			if got != tt.want {
				t.Errorf("got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestNoNoteIsHarmless(t *testing.T) {
	ctx := context.Background()
	audit.SetHost(ctx, 1)
	audit.SetTask(ctx, 1)
	audit.SetTarget(ctx, "x")
	audit.SetActor(ctx, "x")
	audit.SetPrincipal(ctx, "x", "y", "z")
	var n *audit.Note
	e := audit.Event{Username: "u"}
	n.Fill(&e)
	if e != (audit.Event{Username: "u"}) || audit.From(ctx) != nil {
		t.Fatalf("nil Note changed the event: %+v", e)
	}
}

func TestNoteConcurrentUse(t *testing.T) {
	ctx, n := audit.WithNote(context.Background())
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			audit.SetHost(ctx, int64(i+1))
			var e audit.Event
			n.Fill(&e)
		})
	}
	wg.Wait()
}

// memStore is an in-memory audit.Store; fail makes every call fail.
type memStore struct {
	mu     sync.Mutex
	events []audit.Event
	ctxErr error // the write context's error when the last write ran
	last   audit.Query
	fail   bool
	full   bool // fail writes as a store that cannot be written
}

func (m *memStore) AddAuditEvent(ctx context.Context, e audit.Event) (int64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.ctxErr = ctx.Err()
	if m.fail {
		return 0, errors.New("database is locked")
	}
	if m.full {
		return 0, &errs.StoreError{Full: true, Err: errors.New("database or disk is full (13)")}
	}
	e.ID = int64(len(m.events) + 1)
	m.events = append(m.events, e)
	return e.ID, nil
}

func (m *memStore) ListAuditEvents(_ context.Context, q audit.Query) (audit.Page, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.last = q
	if m.fail {
		return audit.Page{}, errors.New("database is locked")
	}
	return audit.Page{Events: append([]audit.Event(nil), m.events...), Total: int64(len(m.events))}, nil
}

var errNotAdmin = fmt.Errorf("not an admin: %w", errs.ErrPermissionDenied)

type adminKey struct{}

// onlyAdmin lets contexts marked with adminKey read.
func onlyAdmin(ctx context.Context) error {
	if ctx.Value(adminKey{}) == nil {
		return errNotAdmin
	}
	return nil
}

var asAdmin = context.WithValue(context.Background(), adminKey{}, true)

func TestRecord(t *testing.T) {
	m := &memStore{}
	s := audit.NewService(m, zerolog.Nop(), onlyAdmin)
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // the client went away: the record is still written
	before := time.Now()
	long := strings.Repeat("é", 1000) // 2000 bytes
	s.Record(ctx, audit.Event{Username: "ops", Operation: "POST /x", Outcome: "CONFLICT", Message: long})
	s.Record(ctx, audit.Event{Operation: "POST /y", Time: time.Unix(100, 0)})
	if len(m.events) != 2 || m.ctxErr != nil {
		t.Fatalf("events %d, write context error %v", len(m.events), m.ctxErr)
	}
	e := m.events[0]
	if e.Time.Before(before) || e.Username != "ops" || e.Outcome != "CONFLICT" {
		t.Errorf("event %+v", e)
	}
	if len(e.Message) != 1024 || !strings.HasPrefix(long, e.Message) {
		t.Errorf("message cut to %d bytes (%q...), want 1024 at a rune boundary", len(e.Message), e.Message[:10])
	}
	if e := m.events[1]; !e.Time.Equal(time.Unix(100, 0)) || e.Outcome != audit.OutcomeOK {
		t.Errorf("event %+v: want its own time kept and outcome OK by default", e)
	}
}

func TestRecordFailureIsLogged(t *testing.T) {
	var logs bytes.Buffer
	s := audit.NewService(&memStore{fail: true}, zerolog.New(&logs), onlyAdmin)
	s.Record(context.Background(), audit.Event{Username: "ops", Operation: "POST /x", HostID: 2})
	if out := logs.String(); !strings.Contains(out, `"level":"error"`) || !strings.Contains(out, "audit event not recorded") ||
		!strings.Contains(out, `"host_id":2`) {
		t.Fatalf("log %s", out)
	}
}

func TestListEvents(t *testing.T) {
	m := &memStore{}
	s := audit.NewService(m, zerolog.Nop(), onlyAdmin)
	s.Record(context.Background(), audit.Event{Operation: "POST /x"})
	if _, err := s.ListEvents(context.Background(), audit.Query{}); !errors.Is(err, errNotAdmin) {
		t.Fatalf("not admin: %v", err)
	}
	p, err := s.ListEvents(asAdmin, audit.Query{Username: "ops"})
	if err != nil || p.Total != 1 || len(p.Events) != 1 {
		t.Fatalf("page %+v %v", p, err)
	}
	if m.last.Page != 1 || m.last.Size != audit.DefaultPageSize || m.last.Username != "ops" {
		t.Errorf("store asked %+v, want page 1 size 20 user ops", m.last)
	}
	now := time.Now()
	for name, q := range map[string]audit.Query{
		"negative page":     {Page: -1},
		"size over 2000":    {Size: 2001},
		"negative size":     {Size: -1},
		"negative host":     {HostID: -1},
		"negative task":     {TaskID: -1},
		"start after end":   {Start: now, End: now.Add(-time.Second)},
		"empty time window": {Start: now, End: now},
	} {
		if _, err := s.ListEvents(asAdmin, q); !errors.Is(err, errs.ErrInvalidArgument) {
			t.Errorf("%s: %v, want ErrInvalidArgument", name, err)
		}
	}
	m.fail = true
	if _, err := s.ListEvents(asAdmin, audit.Query{}); err == nil || errs.Kind(err) != nil {
		t.Errorf("store failure: %v, want an internal error", err)
	}
}

// TestRecordKeptWhileStoreUnwritable: events the store refuses as
// unwritable are logged whole, kept, and written in order with their own
// times once it can be written, with no other call; Close writes what is
// left.
func TestRecordKeptWhileStoreUnwritable(t *testing.T) {
	var logs bytes.Buffer
	var logMu sync.Mutex
	m := &memStore{full: true}
	s := audit.NewService(m, zerolog.New(zerolog.SyncWriter(&lockedWriter{&logMu, &logs})), onlyAdmin)
	defer s.Close()
	s.Record(context.Background(), audit.Event{Username: "ops", Operation: "POST /a", HostID: 7, Outcome: audit.OutcomeUnavailable,
		Message: "the data store is full", Time: time.Unix(100, 0)})
	s.Record(context.Background(), audit.Event{Username: "ops", Operation: "POST /b", Time: time.Unix(101, 0)})
	logMu.Lock()
	out := logs.String()
	logMu.Unlock()
	if !strings.Contains(out, "audit event kept in memory") || !strings.Contains(out, `"operation":"POST /a"`) ||
		!strings.Contains(out, `"host_id":7`) || !strings.Contains(out, `"event_message":"the data store is full"`) {
		t.Fatalf("log %s: want each kept event logged whole", out)
	}
	m.mu.Lock()
	m.full = false
	m.mu.Unlock()
	deadline := time.Now().Add(10 * time.Second)
	for {
		m.mu.Lock()
		n := len(m.events)
		var ops []string
		for _, e := range m.events {
			ops = append(ops, e.Operation)
		}
		m.mu.Unlock()
		if n == 2 {
			if ops[0] != "POST /a" || ops[1] != "POST /b" || !m.events[0].Time.Equal(time.Unix(100, 0)) {
				t.Fatalf("events %v, want POST /a then POST /b with their own times", ops)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d events written 10s after the store came back, want 2", n)
		}
		time.Sleep(20 * time.Millisecond)
	}

	m.mu.Lock()
	m.full = true
	m.mu.Unlock()
	s.Record(context.Background(), audit.Event{Operation: "POST /c"})
	m.mu.Lock()
	m.full = false
	m.mu.Unlock()
	s.Close()
	if len(m.events) != 3 || m.events[2].Operation != "POST /c" {
		t.Fatalf("Close left the kept event unwritten: %d events", len(m.events))
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
