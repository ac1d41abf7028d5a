package store_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"agentplane/server/internal/audit"
)

func TestAuditRoundTripAndDurability(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	s := open(t, dir)
	at := time.Date(2026, 11, 27, 4, 10, 0, 123_000_000, time.UTC)
	want := audit.Event{
		Time: at, Username: "ops", AccessKeyID: "AK1", SourceAddr: "10.0.0.1:4000",
		Operation: "POST /compute/hosts/{hostId}/agent/stop", HostID: 2, TaskID: 30443, Target: "t",
		Outcome: "CONFLICT", Message: "host 2: agent operation in progress (task 7): conflict",
	}
	id, err := s.AddAuditEvent(ctx, want)
	if err != nil || id <= 0 {
		t.Fatalf("id %d, %v", id, err)
	}
	s.Close()

	s2 := open(t, dir)
	p, err := s2.ListAuditEvents(ctx, audit.Query{Page: 1, Size: 20})
	if err != nil || p.Total != 1 || len(p.Events) != 1 {
		t.Fatalf("page %+v %v", p, err)
	}
	got := p.Events[0]
	want.ID = id
	if !got.Time.Equal(at) {
		t.Errorf("time %v, want %v", got.Time, at)
	}
	got.Time = want.Time
	if got != want {
		t.Errorf("got  %+v\nwant %+v", got, want)
	}
}

func TestAuditClipsToColumns(t *testing.T) {
	s := open(t, t.TempDir())
	ctx := context.Background()
	long := strings.Repeat("x", 300)
	if _, err := s.AddAuditEvent(ctx, audit.Event{Time: time.Now(), Username: "agent:" + long, Operation: long,
		SourceAddr: long, AccessKeyID: long, Target: long, Outcome: long}); err != nil {
		t.Fatal(err)
	}
	p, err := s.ListAuditEvents(ctx, audit.Query{Page: 1, Size: 1})
	if err != nil {
		t.Fatal(err)
	}
	e := p.Events[0]
	got := []int{len(e.Username), len(e.AccessKeyID), len(e.SourceAddr), len(e.Operation), len(e.Target), len(e.Outcome)}
	if want := []int{64, 64, 128, 128, 255, 32}; !slices.Equal(got, want) {
		t.Errorf("lengths %v, want %v", got, want)
	}
}

func TestAuditFiltersAndPaging(t *testing.T) {
	s := open(t, t.TempDir())
	ctx := context.Background()
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	// Event i happens at t0 + i minutes; the ids follow.
	events := []audit.Event{
		{Username: "ops", Operation: "POST /compute/hosts/{hostId}/agent/stop", HostID: 2, TaskID: 10, Outcome: "OK"},
		{Username: "ops", Operation: "POST /compute/hosts/{hostId}/agent/start", HostID: 3, TaskID: 11, Outcome: "OK"},
		{Username: "viewer", Operation: "POST /compute/hosts/{hostId}/agent/stop", HostID: 2, Outcome: "PERMISSION_DENIED"},
		{Username: "", Operation: "POST /compute/hosts/{hostId}/agent/stop", HostID: 2, Outcome: "UNAUTHENTICATED"},
		{Username: "admin", Operation: "/agentplane.task.v1.TaskService/RetryTask", HostID: 2, TaskID: 10, Outcome: "OK"},
		{Username: "admin", Operation: "POST /tasks/instances/{taskInstanceId}/retry", TaskID: 11, Outcome: "FAILED_PRECONDITION"},
		{Username: "agent:db_1", Operation: "/agentplane.agent.v1.AgentService/Enroll", HostID: 4, Outcome: "OK"},
	}
	for i, e := range events {
		e.Time = t0.Add(time.Duration(i) * time.Minute)
		if _, err := s.AddAuditEvent(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	// An event recorded later but for an earlier time sorts by its time.
	if _, err := s.AddAuditEvent(ctx, audit.Event{Time: t0.Add(-time.Minute), Username: "late", Operation: "DELETE /x", Outcome: "OK"}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		q     audit.Query
		want  []string // usernames, in order
		total int64
	}{
		{"all, newest first", audit.Query{}, []string{"agent:db_1", "admin", "admin", "", "viewer", "ops", "ops", "late"}, 8},
		{"page 2 of 3", audit.Query{Page: 2, Size: 3}, []string{"", "viewer", "ops"}, 8},
		{"last page short", audit.Query{Page: 3, Size: 3}, []string{"ops", "late"}, 8},
		{"past the end", audit.Query{Page: 9, Size: 3}, []string{}, 8},
		{"username", audit.Query{Username: "ops"}, []string{"ops", "ops"}, 2},
		{"username exact", audit.Query{Username: "op"}, []string{}, 0},
		{"operation part, any case", audit.Query{Operation: "AGENT/STOP"}, []string{"", "viewer", "ops"}, 3},
		{"operation wildcard is literal", audit.Query{Operation: "db_1"}, []string{}, 0},
		{"operation underscore is literal", audit.Query{Operation: "v1.A_entService"}, []string{}, 0},
		{"host", audit.Query{HostID: 2}, []string{"admin", "", "viewer", "ops"}, 4},
		{"task", audit.Query{TaskID: 11}, []string{"admin", "ops"}, 2},
		{"outcome", audit.Query{Outcome: "OK"}, []string{"agent:db_1", "admin", "ops", "ops", "late"}, 5},
		{"host and outcome", audit.Query{HostID: 2, Outcome: "OK"}, []string{"admin", "ops"}, 2},
		{"start inclusive", audit.Query{Start: t0.Add(5 * time.Minute)}, []string{"agent:db_1", "admin"}, 2},
		{"end exclusive", audit.Query{End: t0.Add(time.Minute)}, []string{"ops", "late"}, 2},
		{"window", audit.Query{Start: t0.Add(2 * time.Minute), End: t0.Add(4 * time.Minute)}, []string{"", "viewer"}, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := s.ListAuditEvents(ctx, tt.q)
			if err != nil {
				t.Fatal(err)
			}
			got := []string{}
			for _, e := range p.Events {
				got = append(got, e.Username)
			}
			if !slices.Equal(got, tt.want) || p.Total != tt.total {
				t.Errorf("got %q total %d, want %q total %d", got, p.Total, tt.want, tt.total)
			}
		})
	}
}

func TestAuditConcurrentWrites(t *testing.T) {
	s := open(t, t.TempDir())
	ctx := context.Background()
	errc := make(chan error, 50)
	for i := range 50 {
		go func() {
			_, err := s.AddAuditEvent(ctx, audit.Event{Time: time.Now(), Username: fmt.Sprint("u", i), Operation: "POST /x", Outcome: "OK"})
			errc <- err
		}()
	}
	for range 50 {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	p, err := s.ListAuditEvents(ctx, audit.Query{Page: 1, Size: 2000})
	if err != nil || p.Total != 50 || len(p.Events) != 50 {
		t.Fatalf("total %d, %d events, %v", p.Total, len(p.Events), err)
	}
}
