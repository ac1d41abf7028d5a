package state

import (
	"os"
	"path/filepath"
	"testing"
)

// The newest epoch only grows, is refused older, survives a reopen, and a
// corrupt file is set aside without stopping Open.
func TestSeeEpoch(t *testing.T) {
	dir := t.TempDir()
	s := mustOpen(t, dir)
	if e := s.Epoch(); e != 0 {
		t.Fatalf("epoch of a new dir %d", e)
	}
	for _, c := range []struct {
		see, newest int64
		stale       bool
	}{{0, 0, false}, {3, 3, false}, {3, 3, false}, {2, 3, true}, {0, 3, false}, {9, 9, false}, {8, 9, true}} {
		stale, newest, err := s.SeeEpoch(c.see)
		if err != nil || stale != c.stale || newest != c.newest {
			t.Fatalf("SeeEpoch(%d) = %v, %d, %v; want %v, %d", c.see, stale, newest, err, c.stale, c.newest)
		}
	}
	s.Close()
	s = mustOpen(t, dir)
	if stale, newest, _ := s.SeeEpoch(8); s.Epoch() != 9 || !stale || newest != 9 {
		t.Fatalf("after a reopen: epoch %d, SeeEpoch(8) stale %v newest %d", s.Epoch(), stale, newest)
	}
	s.Close()

	if err := os.WriteFile(filepath.Join(dir, "epoch"), []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	s = mustOpen(t, dir)
	defer s.Close()
	if e := s.Epoch(); e != 0 {
		t.Fatalf("epoch from a corrupt file %d, want 0", e)
	}
	if aside, _ := filepath.Glob(filepath.Join(dir, "epoch.corrupt-*")); len(aside) != 1 {
		t.Fatalf("corrupt epoch file not set aside: %v", aside)
	}
}
