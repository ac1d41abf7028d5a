package auth

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/rs/zerolog"
	"golang.org/x/crypto/bcrypt"

	"agentplane/server/internal/errs"
)

func TestBootstrapEnvPassword(t *testing.T) {
	dir := t.TempDir()
	var logs bytes.Buffer
	store := newFakeStore()
	s := newService(store, zerolog.New(&logs), bcrypt.MinCost)
	const pw = "from-the-env-123"

	path, err := s.Bootstrap(context.Background(), dir, pw)
	if err != nil || path != "" {
		t.Fatalf("Bootstrap = %q, %v; want \"\", nil", path, err)
	}
	p, err := s.Authenticate(context.Background(), AdminUsername, pw)
	if err != nil || !p.Has(RoleAdmin) {
		t.Fatalf("admin login: %+v, %v", p, err)
	}
	if _, err := os.Stat(filepath.Join(dir, AdminPasswordFile)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("password file written although the env gave one: %v", err)
	}
	if strings.Contains(logs.String(), pw) {
		t.Errorf("password logged: %s", logs.String())
	}
	if !strings.Contains(logs.String(), "bootstrap admin user created") {
		t.Errorf("no bootstrap log line: %s", logs.String())
	}
}

func TestBootstrapEnvPasswordTooShort(t *testing.T) {
	s, store := newTestService(t)
	if _, err := s.Bootstrap(context.Background(), t.TempDir(), "short"); !errors.Is(err, errs.ErrInvalidArgument) {
		t.Fatalf("Bootstrap = %v, want ErrInvalidArgument", err)
	}
	if len(store.users) != 0 {
		t.Errorf("user created with an invalid password")
	}
}

func TestBootstrapRandomPassword(t *testing.T) {
	dir := t.TempDir()
	var logs bytes.Buffer
	store := newFakeStore()
	s := newService(store, zerolog.New(&logs), bcrypt.MinCost)
	ctx := context.Background()

	path, err := s.Bootstrap(ctx, dir, "")
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(dir, AdminPasswordFile); path != want {
		t.Fatalf("path = %q, want %q", path, want)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("mode = %v, want 0600", fi.Mode().Perm())
	}
	b, _ := os.ReadFile(path)
	pw := strings.TrimSpace(string(b))
	if len(pw) != adminPasswordLen {
		t.Errorf("password length = %d, want %d", len(pw), adminPasswordLen)
	}
	if _, err := s.Authenticate(ctx, AdminUsername, pw); err != nil {
		t.Errorf("admin cannot log in with the file's password: %v", err)
	}
	if strings.Contains(logs.String(), pw) {
		t.Errorf("password logged")
	}

	// Second start on the same store: nothing changes, the file stays.
	path2, err := s.Bootstrap(ctx, dir, "")
	if err != nil || path2 != "" {
		t.Errorf("second Bootstrap = %q, %v; want \"\", nil", path2, err)
	}
	if b2, _ := os.ReadFile(path); !bytes.Equal(b, b2) {
		t.Errorf("password file overwritten")
	}
	if n, _ := store.CountUsers(ctx); n != 1 {
		t.Errorf("users = %d, want 1", n)
	}

	// A fresh store with the file still there reuses the file's password.
	s2 := newService(newFakeStore(), zerolog.Nop(), bcrypt.MinCost)
	if _, err := s2.Bootstrap(ctx, dir, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := s2.Authenticate(ctx, AdminUsername, pw); err != nil {
		t.Errorf("reused password file not honoured: %v", err)
	}
}

func TestRandomPassword(t *testing.T) {
	seen := map[string]bool{}
	for range 50 {
		p := randomPassword(adminPasswordLen)
		if len(p) != adminPasswordLen || strings.Trim(p, passwordAlphabet) != "" {
			t.Fatalf("bad password %q", p)
		}
		if seen[p] {
			t.Fatalf("repeated password %q", p)
		}
		seen[p] = true
	}
}

func TestLoadOrCreateAgentToken(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data") // created on demand
	tok, err := LoadOrCreateAgentToken(dir)
	if err != nil {
		t.Fatal(err)
	}
	if b, err := hex.DecodeString(tok); err != nil || len(b) != 32 {
		t.Errorf("token %q is not 32 bytes of hex", tok)
	}
	fi, err := os.Stat(filepath.Join(dir, AgentTokenFile))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("mode = %v, want 0600", fi.Mode().Perm())
	}
	again, err := LoadOrCreateAgentToken(dir)
	if err != nil || again != tok {
		t.Errorf("second load = %q, %v; want %q", again, err, tok)
	}
	if !CheckAgentToken(tok, again) {
		t.Errorf("CheckAgentToken rejects the stored token")
	}
	// No temp files left behind.
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("data dir holds %d entries, want 1", len(entries))
	}
}

func TestLoadOrCreateAgentTokenConcurrent(t *testing.T) {
	dir := t.TempDir()
	const n = 8
	toks := make([]string, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			tok, err := LoadOrCreateAgentToken(dir)
			if err != nil {
				t.Error(err)
			}
			toks[i] = tok
		})
	}
	wg.Wait()
	for _, tok := range toks {
		if tok != toks[0] {
			t.Fatalf("concurrent callers got different tokens")
		}
	}
}

func TestLoadOrCreateAgentTokenEmptyFile(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, AgentTokenFile), []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreateAgentToken(dir); err == nil {
		t.Errorf("empty token file accepted")
	}
}
