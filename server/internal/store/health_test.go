package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"agentplane/server/internal/audit"
	"agentplane/server/internal/errs"
)

func TestClassify(t *testing.T) {
	plain := errors.New("UNIQUE constraint failed: users.username")
	tests := []struct {
		err        error
		store      bool
		full       bool
		wantSameIf bool
	}{
		{plain, false, false, true},
		{fmt.Errorf("writing: %w", &fs.PathError{Op: "write", Path: "x", Err: syscall.ENOSPC}), true, true, false},
		{fmt.Errorf("writing: %w", syscall.EDQUOT), true, true, false},
		{fmt.Errorf("opening: %w", syscall.EROFS), true, false, false},
		{fmt.Errorf("reading: %w", syscall.EIO), true, false, false},
		{fmt.Errorf("first %w, then %w", plain, syscall.ENOSPC), true, true, false},
	}
	for _, tt := range tests {
		got := classify(tt.err)
		var se *errs.StoreError
		if errors.As(got, &se) != tt.store || errors.Is(got, errs.ErrStoreUnavailable) != tt.store {
			t.Errorf("classify(%v) = %v; want a store error: %v", tt.err, got, tt.store)
			continue
		}
		if tt.store && se.Full != tt.full {
			t.Errorf("classify(%v): full %v, want %v", tt.err, se.Full, tt.full)
		}
		if tt.wantSameIf && got != tt.err { //nolint:errorlint // identity: classify must return the very error it was given
			t.Errorf("classify(%v) changed it to %v", tt.err, got)
		}
	}
	if classify(nil) != nil {
		t.Error("classify(nil) is not nil")
	}
}

// mountTmpfs mounts a tmpfs of size on a new directory, unmounted on
// cleanup; it skips the test where mounting is not permitted.
func mountTmpfs(t *testing.T, size string) string {
	t.Helper()
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size="+size); err != nil {
		t.Skipf("mounting a tmpfs: %v (needs root)", err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, syscall.MNT_DETACH); err != nil {
			t.Errorf("unmounting %s: %v", dir, err)
		}
	})
	return dir
}

// fill writes a file in dir until the file system is full, and returns its
// path.
func fill(t *testing.T, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "filler")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	for {
		if _, err := f.Write(buf); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("filling %s: %v", dir, err)
			}
			break
		}
	}
	for n := 4096; n > 0; n /= 2 { // the last pages
		for {
			if _, err := f.Write(buf[:n]); err != nil {
				break
			}
		}
	}
	return path
}

// holdSnapshot opens a read transaction on the database in dir, as a backup
// does: the WAL cannot start over while it lasts, so every write needs new
// space. The returned func ends it.
func holdSnapshot(t *testing.T, dir string) func() {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+filepath.Join(dir, FileName))
	if err != nil {
		t.Fatal(err)
	}
	tx, err := db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	var n int
	if err := tx.QueryRow(`SELECT COUNT(*) FROM hosts`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	done := false
	end := func() {
		if !done {
			done = true
			tx.Rollback()
			db.Close()
		}
	}
	t.Cleanup(end)
	return end
}

// TestFullDiskUnwritableThenRecovers fills the store's file system while a
// reader holds a snapshot: a write fails as "the data store is full", the
// store says it is unwritable (and tells its watchers); once space is back
// the probe finds it writable again with no write from outside.
func TestFullDiskUnwritableThenRecovers(t *testing.T) {
	SkipOnMySQL(t, "a full tmpfs under the SQLite file")
	dir := mountTmpfs(t, "4m")
	ctx := context.Background()
	s, err := Open(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	changes := make(chan error, 16)
	s.OnWritable(func(err error) { changes <- err })

	endSnapshot := holdSnapshot(t, dir)
	filler := fill(t, dir)
	var werr error
	for i := 0; i < 10000 && werr == nil; i++ {
		_, werr = s.AddAuditEvent(ctx, audit.Event{Operation: "test", Outcome: "OK", Message: fmt.Sprintf("event %d %0512d", i, i)})
	}
	if !errors.Is(werr, errs.ErrStoreUnavailable) || errs.StoreMessage(werr) != "the data store is full" {
		t.Fatalf("write on a full disk: %v; want the data store is full", werr)
	}
	if err := s.Writable(); !errors.Is(err, errs.ErrStoreUnavailable) {
		t.Fatalf("Writable() = %v on a full disk", err)
	}
	select {
	case err := <-changes:
		if err == nil {
			t.Fatal("watcher told writable on a full disk")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("watcher not told the store is unwritable")
	}

	endSnapshot()
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-changes:
		if err != nil {
			t.Fatalf("watcher told %v once space is back", err)
		}
	case <-time.After(3 * probeRetry):
		t.Fatalf("store still unwritable %s after space is back: %v", 3*probeRetry, s.Writable())
	}
	if err := s.Writable(); err != nil {
		t.Fatalf("Writable() = %v once space is back", err)
	}
	if _, err := s.AddAuditEvent(ctx, audit.Event{Operation: "test", Outcome: "OK"}); err != nil {
		t.Fatalf("write once space is back: %v", err)
	}
}
