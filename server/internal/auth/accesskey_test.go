package auth

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"agentplane/server/internal/errs"
)

func TestAccessKeyPermissions(t *testing.T) {
	env := newKeyEnv(t)
	alice, bob, admin := as("alice", RoleHostManager), as("bob", RoleHostViewer), as("root", RoleAdmin)

	ka, secret, err := env.svc.CreateAccessKey(alice, "")
	if err != nil {
		t.Fatal(err)
	}
	if ka.Username != "alice" || !strings.HasPrefix(ka.ID, "AP") || len(ka.ID) != 22 || ka.SealedSecret != "" || ka.CreateTime.IsZero() {
		t.Errorf("created key = %+v", ka)
	}
	if raw, err := base64.RawURLEncoding.DecodeString(secret); err != nil || len(raw) != AccessKeySecretBytes {
		t.Errorf("secret %d bytes (%v), want %d random bytes in base64url", len(raw), err, AccessKeySecretBytes)
	}
	if _, _, err := env.svc.CreateAccessKey(alice, "alice"); err != nil {
		t.Errorf("own key by name: %v", err)
	}
	kb, _, err := env.svc.CreateAccessKey(admin, "bob")
	if err != nil {
		t.Fatalf("admin creating bob's key: %v", err)
	}

	denied := []struct {
		name string
		err  error
		kind error
	}{
		{"create for another user", second(env.svc.CreateAccessKey(bob, "alice")), errs.ErrPermissionDenied},
		{"create without caller", second(env.svc.CreateAccessKey(context.Background(), "")), errs.ErrUnauthenticated},
		{"create for an unknown user", second(env.svc.CreateAccessKey(admin, "nobody")), errs.ErrNotFound},
		{"create for a malformed name", second(env.svc.CreateAccessKey(admin, "a b")), errs.ErrInvalidArgument},
		{"list another user's", errOf(env.svc.ListAccessKeys(bob, "alice")), errs.ErrPermissionDenied},
		{"list without caller", errOf(env.svc.ListAccessKeys(context.Background(), "")), errs.ErrUnauthenticated},
		{"delete another user's", env.svc.DeleteAccessKey(bob, ka.ID), errs.ErrNotFound},
		{"delete an unknown key", env.svc.DeleteAccessKey(alice, "AP00"), errs.ErrNotFound},
		{"delete a malformed id", env.svc.DeleteAccessKey(alice, "../x"), errs.ErrNotFound},
	}
	for _, tt := range denied {
		if !errors.Is(tt.err, tt.kind) {
			t.Errorf("%s: %v, want %v", tt.name, tt.err, tt.kind)
		}
	}

	ids := func(ks []AccessKey, err error) []string {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, k := range ks {
			if k.SealedSecret != "" {
				t.Errorf("list carries the sealed secret of %s", k.ID)
			}
			out = append(out, k.Username)
		}
		return out
	}
	if got := ids(env.svc.ListAccessKeys(alice, "")); strings.Join(got, ",") != "alice,alice" {
		t.Errorf("alice's list = %v", got)
	}
	if got := ids(env.svc.ListAccessKeys(bob, "bob")); strings.Join(got, ",") != "bob" {
		t.Errorf("bob's list = %v", got)
	}
	if got := ids(env.svc.ListAccessKeys(admin, "")); strings.Join(got, ",") != "alice,alice,bob" {
		t.Errorf("admin's list = %v", got)
	}
	if got := ids(env.svc.ListAccessKeys(admin, "bob")); strings.Join(got, ",") != "bob" {
		t.Errorf("admin's list of bob = %v", got)
	}

	if err := env.svc.DeleteAccessKey(admin, kb.ID); err != nil {
		t.Errorf("admin deleting bob's key: %v", err)
	}
	if err := env.svc.DeleteAccessKey(alice, ka.ID); err != nil {
		t.Errorf("alice deleting her key: %v", err)
	}
	if err := env.svc.DeleteAccessKey(alice, ka.ID); !errors.Is(err, errs.ErrNotFound) {
		t.Errorf("deleting twice: %v", err)
	}
	if strings.Contains(env.logs.String(), secret) || !strings.Contains(env.logs.String(), "access key created") {
		t.Errorf("logs: %s", env.logs.String())
	}
}

func second[A, B any](_ A, _ B, err error) error { return err }

func errOf[A any](_ A, err error) error { return err }

func TestAccessKeyLimitPerUser(t *testing.T) {
	env := newKeyEnv(t)
	for range MaxAccessKeysPerUser {
		env.create(t, "bob")
	}
	if _, _, err := env.svc.CreateAccessKey(as("bob"), ""); !errors.Is(err, errs.ErrFailedPrecondition) {
		t.Fatalf("key %d: %v, want ErrFailedPrecondition", MaxAccessKeysPerUser+1, err)
	}
}

func TestSecretIsSealed(t *testing.T) {
	env := newKeyEnv(t)
	k, secret := env.create(t, "alice")
	sealed := env.keys.sealed(k.ID)
	if sealed == "" || strings.Contains(sealed, secret) {
		t.Fatalf("stored %q for secret %q", sealed, secret)
	}
	raw, _ := base64.StdEncoding.DecodeString(strings.TrimPrefix(sealed, sealPrefix))
	if bytes.Contains(raw, []byte(secret)) {
		t.Fatal("the secret is in the sealed bytes")
	}
	s := env.svc.seal
	if got, err := s.open(k.ID, sealed); err != nil || got != secret {
		t.Fatalf("open = %q, %v", got, err)
	}
	if _, err := s.open("APOTHER", sealed); err == nil {
		t.Error("a sealed secret opened under another key id")
	}
	tampered := []byte(sealed)
	tampered[len(tampered)-3] ^= 1
	if _, err := s.open(k.ID, string(tampered)); err == nil {
		t.Error("a tampered sealed secret opened")
	}
	other, _ := newSealer(bytes.Repeat([]byte{9}, SealKeyLen))
	if _, err := other.open(k.ID, sealed); err == nil {
		t.Error("opened with another key")
	}
	if s.seal(k.ID, secret) == sealed {
		t.Error("sealing twice gave the same bytes (nonce reused)")
	}
	if _, err := newSealer(make([]byte, 16)); err == nil {
		t.Error("a 16-byte sealing key was accepted")
	}
}

func TestLoadOrCreateAccessKeySealKey(t *testing.T) {
	dir := t.TempDir()
	keys := make([][]byte, 4)
	var wg sync.WaitGroup
	for i := range keys {
		wg.Go(func() {
			k, err := LoadOrCreateAccessKeySealKey(dir)
			if err != nil {
				t.Error(err)
			}
			keys[i] = k
		})
	}
	wg.Wait()
	for _, k := range keys {
		if len(k) != SealKeyLen || !bytes.Equal(k, keys[0]) {
			t.Fatalf("keys differ or have the wrong length: %x", keys)
		}
	}
	path := filepath.Join(dir, AccessKeySealKeyFile)
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v, %v", fi, err)
	}
	again, err := LoadOrCreateAccessKeySealKey(dir)
	if err != nil || !bytes.Equal(again, keys[0]) {
		t.Fatalf("reloaded key differs: %v", err)
	}
	if err := os.WriteFile(path, []byte("too short\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreateAccessKeySealKey(dir); err == nil {
		t.Error("a malformed key file was accepted")
	}
}

func TestLoadAccessKeySealKey(t *testing.T) {
	dir := t.TempDir()
	key := bytes.Repeat([]byte{0xab}, SealKeyLen)
	path := filepath.Join(dir, "seal.key")
	if err := os.WriteFile(path, []byte(hex.EncodeToString(key)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := LoadAccessKeySealKey(path)
	if err != nil || !bytes.Equal(got, key) {
		t.Fatalf("LoadAccessKeySealKey = %x, %v", got, err)
	}
	for _, mode := range []os.FileMode{0o640, 0o604} {
		if err := os.Chmod(path, mode); err != nil {
			t.Fatal(err)
		}
		if _, err := LoadAccessKeySealKey(path); err == nil || !strings.Contains(err.Error(), "readable by others") {
			t.Errorf("mode %v: %v, want a refusal", mode, err)
		}
	}
	short := filepath.Join(dir, "short.key")
	if err := os.WriteFile(short, []byte("abcd"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadAccessKeySealKey(short); err == nil {
		t.Error("a short key was accepted")
	}
	if _, err := LoadAccessKeySealKey(filepath.Join(dir, "missing")); err == nil {
		t.Error("a missing file was accepted")
	}
}

func TestSealKeyCheck(t *testing.T) {
	a, b := bytes.Repeat([]byte{1}, SealKeyLen), bytes.Repeat([]byte{2}, SealKeyLen)
	if SealKeyCheck(a) != SealKeyCheck(bytes.Clone(a)) || SealKeyCheck(a) == SealKeyCheck(b) {
		t.Fatal("the check value does not tell keys apart")
	}
	if strings.Contains(SealKeyCheck(a), hex.EncodeToString(a)) || len(SealKeyCheck(a)) != 64 {
		t.Fatalf("check value %s", SealKeyCheck(a))
	}
}
