package store_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"agentplane/server/enroll"
	"agentplane/server/errs"
	"agentplane/server/host"
)

func TestJoinTokenIsUsedOnce(t *testing.T) {
	ctx := context.Background()
	s := open(t, t.TempDir())
	now := time.Now()
	insert := func(hash, name string, expires time.Time) {
		t.Helper()
		if _, err := s.InsertJoinToken(ctx, enroll.JoinToken{TokenHash: hash, HostName: name, Creator: "admin", CreateTime: now, ExpireTime: expires}); err != nil {
			t.Fatal(err)
		}
	}
	insert("h-any", "", now.Add(time.Hour))
	insert("h-bound", "b", now.Add(time.Hour))
	insert("h-expired", "", now.Add(-time.Second))
	if _, err := s.InsertJoinToken(ctx, enroll.JoinToken{TokenHash: "h-any", ExpireTime: now}); !errors.Is(err, errs.ErrConflict) {
		t.Errorf("a second token with one hash: %v", err)
	}

	// Racing enrollments with one token: exactly one wins.
	const n = 8
	var wg sync.WaitGroup
	errc := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			_, err := s.EnrollHost(ctx, "h-any", host.Host{Name: fmt.Sprintf("race-%d", i)}, now)
			errc <- err
		})
	}
	wg.Wait()
	close(errc)
	won := 0
	for err := range errc {
		switch {
		case err == nil:
			won++
		case !errors.Is(err, enroll.ErrInvalidToken):
			t.Errorf("loser: %v", err)
		}
	}
	if won != 1 {
		t.Fatalf("%d enrollments won with one token", won)
	}
	used, err := s.GetJoinToken(ctx, "h-any")
	if err != nil || used.UsedTime.IsZero() || used.UsedHostID == 0 {
		t.Fatalf("used token %+v, %v", used, err)
	}
	p, _ := s.ListHosts(ctx, host.ListQuery{Page: 1, Size: 100})
	if p.Total != 1 || p.Hosts[0].ID != used.UsedHostID || p.Hosts[0].Status != host.StatusNew {
		t.Fatalf("hosts after the race: %+v", p.Hosts)
	}

	if _, err := s.EnrollHost(ctx, "h-expired", host.Host{Name: "x"}, now); !errors.Is(err, enroll.ErrInvalidToken) {
		t.Errorf("expired: %v", err)
	}
	if _, err := s.EnrollHost(ctx, "h-unknown", host.Host{Name: "x"}, now); !errors.Is(err, enroll.ErrInvalidToken) {
		t.Errorf("unknown: %v", err)
	}
	// A token bound to "b" refuses "a", and stays usable for "b".
	if _, err := s.EnrollHost(ctx, "h-bound", host.Host{Name: "a"}, now); !errors.Is(err, errs.ErrPermissionDenied) {
		t.Errorf("bound to another name: %v", err)
	}
	if h, err := s.EnrollHost(ctx, "h-bound", host.Host{Name: "b", InnerIP: "10.0.0.2"}, now); err != nil || h.Name != "b" || h.InnerIP != "10.0.0.2" {
		t.Errorf("bound to its name: %+v, %v", h, err)
	}
}

func TestRevokedHost(t *testing.T) {
	ctx := context.Background()
	s := open(t, t.TempDir())
	now := time.Now()
	h, err := s.RegisterHost(ctx, host.Host{Name: "h1"}, now)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.RevokeHost(ctx, 99, now); !errors.Is(err, errs.ErrNotFound) {
		t.Errorf("revoking a missing host: %v", err)
	}
	first := now.Add(-time.Minute).Truncate(time.Millisecond)
	r, err := s.RevokeHost(ctx, h.ID, first)
	if err != nil || !r.RevokeTime.Equal(first) {
		t.Fatalf("revoked: %v, %v", r, err)
	}
	if r, err = s.RevokeHost(ctx, h.ID, now); err != nil || !r.RevokeTime.Equal(first) {
		t.Fatalf("revoked again: revoke time %v (%v), want the first %v", r.RevokeTime, err, first)
	}
	if got, _ := s.GetHost(ctx, h.ID); !got.RevokeTime.Equal(first) {
		t.Errorf("GetHost revoke time %v", got.RevokeTime)
	}
	if _, err := s.RegisterHost(ctx, host.Host{Name: "h1"}, now); !errors.Is(err, errs.ErrPermissionDenied) {
		t.Errorf("a revoked host registered again: %v", err)
	}
	if _, err := s.InsertJoinToken(ctx, enroll.JoinToken{TokenHash: "t", ExpireTime: now.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.EnrollHost(ctx, "t", host.Host{Name: "h1"}, now); !errors.Is(err, errs.ErrPermissionDenied) {
		t.Errorf("a revoked host enrolled: %v", err)
	}
	if tok, _ := s.GetJoinToken(ctx, "t"); !tok.UsedTime.IsZero() {
		t.Error("a refused enrollment used the token")
	}
}
