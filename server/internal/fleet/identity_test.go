package fleet

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"agentplane/server/internal/errs"
	"agentplane/server/internal/host"
)

// certFleet has no bootstrap token: every stream needs a client certificate.
func certFleet(reg *registry) *Fleet {
	return New(Config{Registry: reg, Logs: reg, Log: zerolog.Nop(), CancelWait: time.Second})
}

func TestConnectWithACertificate(t *testing.T) {
	reg := newRegistry()
	a, _ := reg.RegisterHost(context.Background(), host.Host{Name: "a"}, time.Now())
	b, _ := reg.RegisterHost(context.Background(), host.Host{Name: "b"}, time.Now())
	f := certFleet(reg)
	defer f.Close()
	idA := &Identity{HostID: a.ID, HostName: "a"}

	tests := []struct {
		name  string
		hello Hello
		want  error
	}{
		{"no certificate, no token", Hello{HostName: "a"}, errs.ErrUnauthenticated},
		{"no certificate, a token", Hello{Token: "tok", HostName: "a"}, errs.ErrUnauthenticated},
		{"host id of another host", Hello{Identity: idA, HostID: b.ID, HostName: "a"}, errs.ErrPermissionDenied},
		{"host name of another host", Hello{Identity: idA, HostName: "b"}, errs.ErrPermissionDenied},
		{"host name of no host", Hello{Identity: idA, HostName: "c"}, errs.ErrPermissionDenied},
		{"certificate of a host that does not exist", Hello{Identity: &Identity{HostID: 99, HostName: "z"}, HostName: "z"}, errs.ErrPermissionDenied},
		{"certificate whose name is not its host's", Hello{Identity: &Identity{HostID: a.ID, HostName: "b"}, HostName: "a"}, errs.ErrPermissionDenied},
		{"no host name", Hello{Identity: idA}, errs.ErrInvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, _, err := f.Connect(context.Background(), tt.hello); !errors.Is(err, tt.want) {
				t.Fatalf("Connect = %v, want %v", err, tt.want)
			}
		})
	}
	for _, hello := range []Hello{{Identity: idA, HostName: "a"}, {Identity: idA, HostID: a.ID, HostName: "a", Token: "ignored"}} {
		s, w, err := f.Connect(context.Background(), hello)
		if err != nil {
			t.Fatalf("Connect(%+v) = %v", hello, err)
		}
		if s.HostID != a.ID || w.HostID != a.ID {
			t.Fatalf("session of host %d, welcome %d, want %d", s.HostID, w.HostID, a.ID)
		}
		f.Disconnect(s)
	}
}

func TestRevokeEndsTheSessionAndRefusesTheNext(t *testing.T) {
	for _, mode := range []string{"certificate", "bootstrap token"} {
		t.Run(mode, func(t *testing.T) {
			reg := newRegistry()
			f := New(Config{Registry: reg, Logs: reg, Token: "tok", Log: zerolog.Nop()})
			defer f.Close()
			hello := Hello{Token: "tok", HostName: "a"}
			first := connect(t, f, "a")
			if mode == "certificate" {
				hello = Hello{Identity: &Identity{HostID: first.HostID, HostName: "a"}, HostName: "a"}
			}
			other := connect(t, f, "b")
			reg.revoke(first.HostID)
			f.Revoke(first.HostID)
			waitDone(t, first)
			if err := first.Err(); !errors.Is(err, ErrRevoked) || !errors.Is(err, errs.ErrPermissionDenied) {
				t.Fatalf("session ended with %v, want ErrRevoked", err)
			}
			if other.Err() != nil {
				t.Fatalf("another host's session ended: %v", other.Err())
			}
			if _, _, err := f.Connect(context.Background(), hello); !errors.Is(err, errs.ErrPermissionDenied) {
				t.Fatalf("revoked host connected again: %v", err)
			}
			f.Disconnect(first)
			if st := reg.statusOf(first.HostID); st != host.StatusOffline {
				t.Fatalf("revoked host is %s", st)
			}
		})
	}
}

// certs is a hand-written Certs: the serials revoked.
type certs struct{ revoked map[string]bool }

func (c *certs) UseCertificate(_ context.Context, hostID int64, serial string, _, _, _ time.Time) error {
	if c.revoked[serial] {
		return fmt.Errorf("certificate %s of host %d: %w", serial, hostID, errs.ErrPermissionDenied)
	}
	return nil
}

// TestCertificatesChecked: a stream's certificate is admitted by Certs, and
// RevokeCertificates ends the host's session unless it is the kept
// certificate's.
func TestCertificatesChecked(t *testing.T) {
	reg := newRegistry()
	a, _ := reg.RegisterHost(context.Background(), host.Host{Name: "a"}, time.Now())
	cs := &certs{revoked: map[string]bool{"old": true}}
	f := New(Config{Registry: reg, Logs: reg, Certs: cs, Log: zerolog.Nop(), CancelWait: time.Second})
	defer f.Close()
	hello := func(serial string) Hello {
		return Hello{Identity: &Identity{HostID: a.ID, HostName: "a", Serial: serial}, HostName: "a"}
	}
	if _, _, err := f.Connect(context.Background(), hello("old")); !errors.Is(err, errs.ErrPermissionDenied) {
		t.Fatalf("a revoked certificate: %v", err)
	}
	s, _, err := f.Connect(context.Background(), hello("new"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Disconnect(s)
	f.RevokeCertificates(a.ID, "new")
	select {
	case <-s.Done():
		t.Fatalf("the kept certificate's session ended: %v", s.Err())
	default:
	}
	f.RevokeCertificates(a.ID, "newer")
	waitDone(t, s)
	if err := s.Err(); !errors.Is(err, ErrCertRevoked) || !errors.Is(err, errs.ErrPermissionDenied) {
		t.Fatalf("session ended with %v, want ErrCertRevoked", err)
	}
}
