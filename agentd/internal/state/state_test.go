package state

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"agentplane/agentd/internal/proc"
)

func mustOpen(t *testing.T, dir string) *State {
	t.Helper()
	s, err := Open(dir)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return s
}

func TestBeginAtMostOnce(t *testing.T) {
	s := mustOpen(t, t.TempDir())
	defer s.Close()

	const n = 16
	var wg sync.WaitGroup
	var mu sync.Mutex
	fresh := 0
	for range n {
		wg.Go(func() {
			ran, err := s.Begin(7, 1)
			if err != nil {
				t.Errorf("Begin: %v", err)
				return
			}
			if !ran {
				mu.Lock()
				fresh++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if fresh != 1 {
		t.Fatalf("Begin returned alreadyRan=false %d times, want 1", fresh)
	}
	// Another attempt of the same subtask is a different command.
	if ran, err := s.Begin(7, 2); err != nil || ran {
		t.Fatalf("Begin(7, 2) = %v, %v; want false, nil", ran, err)
	}
}

func TestBeginInvalid(t *testing.T) {
	s := mustOpen(t, t.TempDir())
	defer s.Close()
	for _, tc := range []struct {
		subtask int64
		attempt int32
	}{{0, 1}, {1, 0}, {-1, 1}} {
		if _, err := s.Begin(tc.subtask, tc.attempt); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("Begin(%d, %d) err = %v, want ErrInvalidArgument", tc.subtask, tc.attempt, err)
		}
	}
}

func TestOutboxSurvivesRestartAndAck(t *testing.T) {
	dir := t.TempDir()
	s := mustOpen(t, dir)
	if _, err := s.Begin(3, 1); err != nil {
		t.Fatal(err)
	}
	want := Result{SubtaskID: 3, Attempt: 1, Outcome: OutcomeSucceeded, Message: "stopped 3 processes",
		FinishTime: time.Date(2026, 1, 2, 3, 4, 5, 6e6, time.UTC)}
	if err := s.SaveResult(want); err != nil {
		t.Fatal(err)
	}
	s.Close()

	s = mustOpen(t, dir)
	defer s.Close()
	got, err := s.PendingResults()
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || !got[0].FinishTime.Equal(want.FinishTime) || got[0].Message != want.Message || got[0].Outcome != want.Outcome {
		t.Fatalf("PendingResults after restart = %+v, want [%+v]", got, want)
	}
	if ran, err := s.Begin(3, 1); err != nil || !ran {
		t.Fatalf("Begin after restart = %v, %v; want true, nil", ran, err)
	}

	if err := s.Ack(3, 1); err != nil {
		t.Fatal(err)
	}
	if err := s.Ack(3, 1); err != nil {
		t.Fatalf("second Ack: %v", err)
	}
	if got, _ := s.PendingResults(); len(got) != 0 {
		t.Fatalf("PendingResults after Ack = %+v, want none", got)
	}
	// The marker keeps the result, to answer a repeated command.
	r, ok, err := s.Lookup(3, 1)
	if err != nil || !ok || r.Outcome != OutcomeSucceeded {
		t.Fatalf("Lookup after Ack = %+v, %v, %v", r, ok, err)
	}
}

func TestCrashedMidRunIsNotRerun(t *testing.T) {
	dir := t.TempDir()
	s := mustOpen(t, dir)
	if _, err := s.Begin(9, 2); err != nil {
		t.Fatal(err)
	}
	s.Close() // "crash": no result saved

	s = mustOpen(t, dir)
	defer s.Close()
	if ran, err := s.Begin(9, 2); err != nil || !ran {
		t.Fatalf("Begin after crash = %v, %v; want true, nil", ran, err)
	}
	r, ok, err := s.Lookup(9, 2)
	if err != nil || !ok {
		t.Fatalf("Lookup = %v, %v", ok, err)
	}
	if r.Outcome != OutcomeFailed || r.Message != RestartedMessage {
		t.Fatalf("result = %+v, want FAILED %q", r, RestartedMessage)
	}
	pend, err := s.PendingResults()
	if err != nil || len(pend) != 1 || pend[0].Message != RestartedMessage {
		t.Fatalf("PendingResults = %+v, %v", pend, err)
	}
}

func TestCrashBetweenOutboxAndMarker(t *testing.T) {
	dir := t.TempDir()
	s := mustOpen(t, dir)
	if _, err := s.Begin(4, 1); err != nil {
		t.Fatal(err)
	}
	if err := s.SaveResult(Result{SubtaskID: 4, Attempt: 1, Outcome: OutcomeCanceled, Message: "canceled: x"}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	// Simulate a crash after the outbox write, before the marker write.
	if err := os.WriteFile(filepath.Join(dir, "runs", "4-1"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	s = mustOpen(t, dir)
	defer s.Close()
	r, ok, err := s.Lookup(4, 1)
	if err != nil || !ok || r.Outcome != OutcomeCanceled {
		t.Fatalf("Lookup = %+v, %v, %v; want the saved CANCELED result", r, ok, err)
	}
}

func TestMarkerGC(t *testing.T) {
	dir := t.TempDir()
	s := mustOpen(t, dir)
	for _, st := range []int64{1, 2} {
		if _, err := s.Begin(st, 1); err != nil {
			t.Fatal(err)
		}
		if err := s.SaveResult(Result{SubtaskID: st, Attempt: 1, Outcome: OutcomeSucceeded}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Ack(1, 1); err != nil { // 2-1 stays pending
		t.Fatal(err)
	}
	s.Close()

	later := time.Now().Add(MarkerTTL + time.Hour)
	s, err := open(dir, func() time.Time { return later })
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := os.Stat(filepath.Join(dir, "runs", "1-1")); !os.IsNotExist(err) {
		t.Errorf("old acknowledged marker kept (err %v)", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "runs", "2-1")); err != nil {
		t.Errorf("old marker with a pending result removed: %v", err)
	}
}

func TestHostID(t *testing.T) {
	dir := t.TempDir()
	s := mustOpen(t, dir)
	if id, err := s.HostID(); err != nil || id != 0 {
		t.Fatalf("HostID on empty dir = %d, %v; want 0, nil", id, err)
	}
	if err := s.SetHostID(0); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("SetHostID(0) err = %v", err)
	}
	for _, id := range []int64{42, 43} {
		if err := s.SetHostID(id); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	s = mustOpen(t, dir)
	defer s.Close()
	if id, err := s.HostID(); err != nil || id != 43 {
		t.Fatalf("HostID after restart = %d, %v; want 43", id, err)
	}
	// Atomic write leaves no temp files behind.
	if tmps, _ := filepath.Glob(filepath.Join(dir, ".tmp-*")); len(tmps) != 0 {
		t.Fatalf("temp files left: %v", tmps)
	}
}

func TestLocked(t *testing.T) {
	dir := t.TempDir()
	s := mustOpen(t, dir)
	if _, err := Open(dir); !errors.Is(err, ErrLocked) {
		t.Fatalf("second Open err = %v, want ErrLocked", err)
	}
	s.Close()
	s2 := mustOpen(t, dir)
	s2.Close()
}

func TestStartSpecsPersist(t *testing.T) {
	dir := t.TempDir()
	s := mustOpen(t, dir)
	if specs, err := s.StartSpecs(); err != nil || len(specs) != 0 {
		t.Fatalf("StartSpecs on empty dir = %+v, %v; want none", specs, err)
	}
	want := []proc.StartSpec{
		{Name: "ocp_agentd", PID: 10, CreateTime: time.UnixMilli(1700000000123), Exe: "/home/admin/ocp_agent/bin/ocp_agentd",
			Args: []string{"bin/ocp_agentd", "-c", "conf"}, Env: []string{"HOME=/home/admin", "SECRET=x"}, Dir: "/home/admin/ocp_agent",
			UID: 500, GID: 501, Groups: []uint32{501, 10}, User: "admin"},
		{Name: "ocp_monagent", PID: 12, CreateTime: time.UnixMilli(1700000000456), Exe: "/home/admin/ocp_agent/bin/ocp_monagent",
			Args: []string{"/home/admin/ocp_agent/bin/ocp_monagent"}, Env: []string{}, User: "admin"},
	}
	if err := s.SaveStartSpecs(want); err != nil {
		t.Fatal(err)
	}
	s.Close()

	s = mustOpen(t, dir)
	defer s.Close()
	got, err := s.StartSpecs()
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("StartSpecs after reopen = %+v, want %+v", got, want)
	}
	for i := range want {
		g, w := got[i], want[i]
		if !g.CreateTime.Equal(w.CreateTime) {
			t.Errorf("spec %d create time %v, want %v", i, g.CreateTime, w.CreateTime)
		}
		g.CreateTime = w.CreateTime
		if !reflect.DeepEqual(g, w) {
			t.Errorf("spec %d = %+v, want %+v", i, g, w)
		}
	}
	fi, err := os.Stat(filepath.Join(dir, "processes.json"))
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Errorf("processes.json mode %v, want 0600", perm)
	}
}

// TestCorruptJournalQuarantined: a run marker or outbox entry that does not
// decode does not stop Open. It is renamed aside, logged at error level,
// and its command is never run again: answered with the result the other
// file still holds, else FAILED with StateLostMessage, pending for the
// server.
func TestCorruptJournalQuarantined(t *testing.T) {
	good := Result{SubtaskID: 9, Attempt: 1, Outcome: OutcomeSucceeded, Message: "stopped", FinishTime: time.Unix(1700000000, 0).UTC()}
	goodJSON, _ := json.Marshal(good)
	garbage := []byte("{\"subtask_id\": 9, \"outc\x00\xff")
	for _, tt := range []struct {
		name           string
		marker, outbox []byte // nil: no file
		want           Result
		quarantined    []string
	}{
		{"corrupt marker, no outbox", garbage, nil, lost(9, 1), []string{"runs/9-1"}},
		{"corrupt marker, pending result", garbage, goodJSON, good, []string{"runs/9-1"}},
		{"corrupt outbox, marker with result", goodJSON, garbage, good, []string{"outbox/9-1.json"}},
		{"corrupt outbox, marker of a running command", []byte{}, garbage, lost(9, 1), []string{"outbox/9-1.json"}},
		{"corrupt outbox, no marker", nil, garbage, lost(9, 1), []string{"outbox/9-1.json"}},
		{"both corrupt", garbage, garbage, lost(9, 1), []string{"runs/9-1", "outbox/9-1.json"}},
		{"another command's result", []byte(`{"subtask_id":8,"attempt":1,"outcome":"SUCCEEDED"}`), nil, lost(9, 1), []string{"runs/9-1"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			s := mustOpen(t, dir)
			s.Close()
			for path, b := range map[string][]byte{"runs/9-1": tt.marker, "outbox/9-1.json": tt.outbox} {
				if b != nil {
					if err := os.WriteFile(filepath.Join(dir, path), b, 0o600); err != nil {
						t.Fatal(err)
					}
				}
			}
			var logs bytes.Buffer
			s, err := Open(dir, WithLog(zerolog.New(&logs)))
			if err != nil {
				t.Fatalf("Open with a corrupt journal: %v", err)
			}
			defer s.Close()
			for _, q := range tt.quarantined {
				matches, _ := filepath.Glob(filepath.Join(dir, q+".corrupt-*"))
				if len(matches) != 1 {
					t.Fatalf("%s quarantined as %v", q, matches)
				}
				if b, _ := os.ReadFile(matches[0]); !bytes.Equal(b, garbage) && !bytes.Contains(b, []byte(`"subtask_id":8`)) {
					t.Errorf("quarantined %s holds %q", matches[0], b)
				}
				if !strings.Contains(logs.String(), `"level":"error"`) || !strings.Contains(logs.String(), q) {
					t.Errorf("no error logged naming %s: %s", q, logs.String())
				}
			}
			if ran, err := s.Begin(9, 1); err != nil || !ran {
				t.Fatalf("Begin after recovery = %v, %v; want already ran", ran, err)
			}
			got, ok, err := s.Lookup(9, 1)
			if err != nil || !ok || !sameResult(got, tt.want) {
				t.Fatalf("Lookup = %+v %v %v, want %+v", got, ok, err, tt.want)
			}
			pending, err := s.PendingResults()
			if err != nil || len(pending) != 1 || !sameResult(pending[0], tt.want) {
				t.Fatalf("pending %+v %v, want %+v", pending, err, tt.want)
			}
		})
	}
}

func lost(subtask int64, attempt int32) Result {
	return Result{SubtaskID: subtask, Attempt: attempt, Outcome: OutcomeFailed, Message: StateLostMessage}
}

// sameResult compares results, ignoring a lost result's finish time.
func sameResult(a, b Result) bool {
	if b.Message == StateLostMessage {
		a.FinishTime, b.FinishTime = time.Time{}, time.Time{}
	}
	return a.SubtaskID == b.SubtaskID && a.Attempt == b.Attempt && a.Outcome == b.Outcome && a.Message == b.Message &&
		a.FinishTime.Equal(b.FinishTime)
}

// TestOutboxCorruptedWhileOpen: an outbox entry corrupted after Open is
// quarantined by PendingResults and pending again from its marker.
func TestOutboxCorruptedWhileOpen(t *testing.T) {
	dir := t.TempDir()
	s := mustOpen(t, dir)
	defer s.Close()
	r := Result{SubtaskID: 4, Attempt: 2, Outcome: OutcomeSucceeded, Message: "ok", FinishTime: time.Unix(1700000000, 0).UTC()}
	if _, err := s.Begin(4, 2); err != nil {
		t.Fatal(err)
	}
	if err := s.SaveResult(r); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "outbox", "4-2.json"), []byte("\x00\x00"), 0o600); err != nil {
		t.Fatal(err)
	}
	pending, err := s.PendingResults()
	if err != nil || len(pending) != 1 || !sameResult(pending[0], r) {
		t.Fatalf("pending %+v %v, want %+v", pending, err, r)
	}
	if m, _ := filepath.Glob(filepath.Join(dir, "outbox", "4-2.json.corrupt-*")); len(m) != 1 {
		t.Fatalf("quarantined: %v", m)
	}
	if pending, err := s.PendingResults(); err != nil || len(pending) != 1 {
		t.Fatalf("pending again: %+v %v", pending, err)
	}
}

func TestOutboxDepth(t *testing.T) {
	s := mustOpen(t, t.TempDir())
	defer s.Close()
	for i := int64(1); i <= 3; i++ {
		if _, err := s.Begin(i, 1); err != nil {
			t.Fatal(err)
		}
		if err := s.SaveResult(Result{SubtaskID: i, Attempt: 1, Outcome: OutcomeSucceeded, FinishTime: time.Now()}); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := s.Outbox(); err != nil || n != 3 {
		t.Fatalf("Outbox = %d, %v; want 3", n, err)
	}
	if err := s.Ack(2, 1); err != nil {
		t.Fatal(err)
	}
	if n, err := s.Outbox(); err != nil || n != 2 {
		t.Fatalf("Outbox after an Ack = %d, %v; want 2", n, err)
	}
}
