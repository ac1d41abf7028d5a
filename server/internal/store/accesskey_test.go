package store_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"agentplane/server/internal/auth"
	"agentplane/server/internal/errs"
	"agentplane/server/internal/store"
)

func TestAccessKeyStore(t *testing.T) {
	ctx := context.Background()
	s := open(t, t.TempDir())
	created := time.UnixMilli(time.Now().UnixMilli())
	k := auth.AccessKey{ID: "AP1", Username: "alice", SealedSecret: "v1.sealed", CreateTime: created}
	if _, err := s.CreateAccessKey(ctx, k, 2); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateAccessKey(ctx, k, 2); !errors.Is(err, errs.ErrConflict) {
		t.Errorf("duplicate id: %v, want ErrConflict", err)
	}
	if _, err := s.CreateAccessKey(ctx, auth.AccessKey{ID: "AP2", Username: "alice", SealedSecret: "v1.x"}, 2); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateAccessKey(ctx, auth.AccessKey{ID: "AP3", Username: "alice", SealedSecret: "v1.x"}, 2); !errors.Is(err, errs.ErrFailedPrecondition) {
		t.Errorf("third key with max 2: %v, want ErrFailedPrecondition", err)
	}
	if _, err := s.CreateAccessKey(ctx, auth.AccessKey{ID: "AP4", Username: "bob", SealedSecret: "v1.x"}, 2); err != nil {
		t.Fatal(err)
	}

	got, err := s.AccessKeyByID(ctx, "AP1")
	if err != nil || got.Username != "alice" || got.SealedSecret != "v1.sealed" || !got.CreateTime.Equal(created) || !got.LastUsedTime.IsZero() {
		t.Fatalf("AccessKeyByID = %+v, %v", got, err)
	}
	if _, err := s.AccessKeyByID(ctx, "AP9"); !errors.Is(err, errs.ErrNotFound) {
		t.Errorf("unknown id: %v", err)
	}
	used := created.Add(time.Minute)
	if err := s.TouchAccessKey(ctx, "AP1", used); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.AccessKeyByID(ctx, "AP1"); !got.LastUsedTime.Equal(used) {
		t.Errorf("last used %v, want %v", got.LastUsedTime, used)
	}

	list := func(user string) string {
		t.Helper()
		ks, err := s.ListAccessKeys(ctx, user)
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, k := range ks {
			if k.SealedSecret != "" {
				t.Errorf("list returned the sealed secret of %s", k.ID)
			}
			ids = append(ids, k.ID)
		}
		return strings.Join(ids, ",")
	}
	if got := list("alice"); got != "AP1,AP2" {
		t.Errorf("alice's keys %q", got)
	}
	if got := list(""); got != "AP1,AP2,AP4" {
		t.Errorf("all keys %q", got)
	}
	if got := list("carol"); got != "" {
		t.Errorf("carol's keys %q", got)
	}
	if err := s.DeleteAccessKey(ctx, "AP1"); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteAccessKey(ctx, "AP1"); !errors.Is(err, errs.ErrNotFound) {
		t.Errorf("deleting twice: %v", err)
	}
	if got := list("alice"); got != "AP2" {
		t.Errorf("alice's keys after delete %q", got)
	}
}

// TestAccessKeySecretSealedInTheDatabase reads the raw column: a copy of
// the database alone does not reveal a secret.
func TestAccessKeySecretSealedInTheDatabase(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s := open(t, dir)
	users := auth.NewService(s, zerolog.Nop())
	if _, err := users.Bootstrap(ctx, dir, "admin-password-123"); err != nil {
		t.Fatal(err)
	}
	sealKey, err := auth.LoadOrCreateAccessKeySealKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := auth.NewAccessKeyService(s, s, sealKey, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	admin := auth.WithPrincipal(ctx, auth.Principal{Username: auth.AdminUsername, Roles: []auth.Role{auth.RoleAdmin}})
	k, secret, err := keys.CreateAccessKey(admin, "")
	if err != nil {
		t.Fatal(err)
	}

	db := store.RawTestDB(t, dir)
	var sealed string
	if err := db.QueryRowContext(ctx, `SELECT sealed_secret FROM access_keys WHERE access_key_id = ?`, k.ID).Scan(&sealed); err != nil {
		t.Fatal(err)
	}
	if sealed == "" || strings.Contains(sealed, secret) || !strings.HasPrefix(sealed, "v1.") {
		t.Fatalf("sealed_secret = %q for secret %q", sealed, secret)
	}
	// Nor do the database's files, WAL included.
	for _, name := range []string{store.FileName, store.FileName + "-wal"} {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
		if bytes.Contains(b, []byte(secret)) {
			t.Fatalf("the secret is in %s", name)
		}
	}
}
