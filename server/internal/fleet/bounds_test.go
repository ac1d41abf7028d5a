package fleet

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"agentplane/server/internal/errs"
	"agentplane/server/internal/host"
)

func TestConcurrentStreamsPerHostAreBounded(t *testing.T) {
	for _, mode := range []string{"certificate", "bootstrap token"} {
		t.Run(mode, func(t *testing.T) {
			reg := newRegistry()
			f := New(Config{Registry: reg, Logs: reg, Token: "tok", Log: zerolog.Nop(), MaxStreamsPerHost: 2})
			defer f.Close()
			hello := Hello{Token: "tok", HostName: "a"}
			if mode == "certificate" {
				if _, err := reg.RegisterHost(context.Background(), host.Host{Name: "a"}, f.cfg.Now()); err != nil {
					t.Fatal(err)
				}
				hello = Hello{Identity: &Identity{HostID: 1, HostName: "a"}, HostName: "a"}
			}
			other := connect(t, f, "b")
			s1, _, err := f.Connect(context.Background(), hello)
			if err != nil {
				t.Fatal(err)
			}
			// s2 replaces s1, whose stream has not ended yet: two streams.
			s2, _, err := f.Connect(context.Background(), hello)
			if err != nil {
				t.Fatal(err)
			}
			if !errors.Is(s1.Err(), ErrReplaced) {
				t.Fatalf("replaced session: %v", s1.Err())
			}
			_, _, err = f.Connect(context.Background(), hello)
			if !errors.Is(err, ErrTooManyStreams) || !errors.Is(err, errs.ErrTooManyRequests) || !strings.Contains(err.Error(), "at most 2") {
				t.Fatalf("third stream: %v, want ErrTooManyStreams naming the bound", err)
			}
			if s2.Err() != nil || reg.statusOf(s2.HostID) != host.StatusOnline {
				t.Fatalf("the current stream suffered from the refusal: %v, %s", s2.Err(), reg.statusOf(s2.HostID))
			}
			// The replaced stream ends: there is room again.
			f.Disconnect(s1)
			f.Disconnect(s1) // a second Disconnect frees nothing more
			s3, _, err := f.Connect(context.Background(), hello)
			if err != nil {
				t.Fatalf("after the replaced stream ended: %v", err)
			}
			if _, _, err := f.Connect(context.Background(), hello); !errors.Is(err, ErrTooManyStreams) {
				t.Fatalf("s2 not ended, s3 current: %v, want ErrTooManyStreams", err)
			}
			f.Disconnect(s2)
			f.Disconnect(s3)
			if other.Err() != nil || reg.statusOf(other.HostID) != host.StatusOnline {
				t.Fatalf("the other host suffered: %v, %s", other.Err(), reg.statusOf(other.HostID))
			}
		})
	}
}

func TestStreamReplacementsPerHostAreBounded(t *testing.T) {
	reg := newRegistry()
	f := New(Config{Registry: reg, Logs: reg, Token: "tok", Log: zerolog.Nop(), MaxReplacementsPerMin: 3})
	defer f.Close()
	other := connect(t, f, "b")
	cur := connect(t, f, "a")
	for i := range 3 {
		s, _, err := f.Connect(context.Background(), Hello{Token: "tok", HostName: "a"})
		if err != nil {
			t.Fatalf("replacement %d: %v", i+1, err)
		}
		f.Disconnect(cur) // the replaced stream ends
		cur = s
	}
	_, _, err := f.Connect(context.Background(), Hello{Token: "tok", HostName: "a"})
	if !errors.Is(err, ErrTooManyReplacements) || !errors.Is(err, errs.ErrTooManyRequests) || !strings.Contains(err.Error(), "at most 3") {
		t.Fatalf("fourth replacement within a minute: %v, want ErrTooManyReplacements", err)
	}
	// The current stream stays, its host ONLINE; another host is untouched.
	if cur.Err() != nil || reg.statusOf(cur.HostID) != host.StatusOnline {
		t.Fatalf("the current stream after a refused replacement: %v, %s", cur.Err(), reg.statusOf(cur.HostID))
	}
	if other.Err() != nil {
		t.Fatalf("the other host's stream: %v", other.Err())
	}
	if s, _, err := f.Connect(context.Background(), Hello{Token: "tok", HostName: "b"}); err != nil {
		t.Fatalf("the other host replacing its stream once: %v", err)
	} else {
		f.Disconnect(other)
		f.Disconnect(s)
	}
	// A reconnect after the stream ended is no replacement.
	f.Disconnect(cur)
	s, _, err := f.Connect(context.Background(), Hello{Token: "tok", HostName: "a"})
	if err != nil {
		t.Fatalf("reconnecting after the stream ended: %v", err)
	}
	f.Disconnect(s)
}

// A bootstrap Hello refused over the bounds after its registration wrote
// ONLINE leaves a host without a live session OFFLINE.
func TestRefusedBootstrapStreamLeavesTheHostOffline(t *testing.T) {
	reg := newRegistry()
	f := New(Config{Registry: reg, Logs: reg, Token: "tok", Log: zerolog.Nop(), MaxStreamsPerHost: 1})
	defer f.Close()
	s1 := connect(t, f, "a")
	// The only stream's handler has not ended yet (no Disconnect), but its
	// session was closed (e.g. lost): the host has no live session.
	s1.close(ErrLost)
	_, _, err := f.Connect(context.Background(), Hello{Token: "tok", HostName: "a"})
	if !errors.Is(err, ErrTooManyStreams) {
		t.Fatalf("second stream: %v", err)
	}
	if st := reg.statusOf(s1.HostID); st != host.StatusOffline {
		t.Fatalf("host is %s after a refused stream, want OFFLINE", st)
	}
	f.Disconnect(s1)
	s2 := connect(t, f, "a")
	f.Disconnect(s2)
}

func TestReportsOverTheBoundsAreRefused(t *testing.T) {
	reg := newRegistry()
	f := newFleet(reg)
	defer f.Close()
	many := make([]host.Process, MaxReportedProcesses+1)
	for i := range many {
		many[i].Name = "ocp_agentd"
	}
	long := strings.Repeat("x", MaxTextBytes+1)
	for name, hello := range map[string]Hello{
		"long host name":      {HostName: strings.Repeat("h", MaxFieldBytes+1)},
		"long install home":   {HostName: "a", InstallHome: long},
		"too many processes":  {HostName: "a", Processes: many},
		"not a base process":  {HostName: "a", Processes: []host.Process{{Name: "sshd"}}},
		"long command line":   {HostName: "a", Processes: []host.Process{{Name: "ocp_agentd", Cmdline: long}}},
		"long process's user": {HostName: "a", Processes: []host.Process{{Name: "ocp_agentd", User: long}}},
	} {
		hello.Token = "tok"
		if _, _, err := f.Connect(context.Background(), hello); !errors.Is(err, errs.ErrInvalidArgument) || !(strings.Contains(err.Error(), "allowed") || strings.Contains(err.Error(), "only the base")) {
			t.Errorf("%s: Connect = %v, want ErrInvalidArgument naming the bound", name, err)
		}
	}
	if len(reg.ids) != 0 {
		t.Fatalf("refused hellos registered hosts: %v", reg.ids)
	}
	s := connect(t, f, "a")
	for name, m := range map[string]Inbound{
		"heartbeat of another process": {Heartbeat: &Heartbeat{Processes: []host.Process{{Name: "bash"}}}},
		"long progress":                {Progress: &Progress{SubtaskID: 1, Attempt: 1, Message: long}},
		"long result":                  {Result: &Result{SubtaskID: 1, Attempt: 1, Outcome: Succeeded, Message: long}},
		"empty":                        {},
	} {
		if err := f.Receive(context.Background(), s, m); !errors.Is(err, errs.ErrInvalidArgument) {
			t.Errorf("%s: Receive = %v, want ErrInvalidArgument", name, err)
		}
	}
	ok := []host.Process{{Name: "ocp_agentd", Cmdline: strings.Repeat("x", MaxTextBytes)}, {Name: "ocp_monagent"}, {Name: "ocp_monagent"}}
	if err := f.Receive(context.Background(), s, Inbound{Heartbeat: &Heartbeat{Processes: ok}}); err != nil {
		t.Errorf("heartbeat within the bounds: %v", err)
	}
	f.Disconnect(s)
}
