package auth

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"agentplane/server/internal/errs"
)

// Files in the server's data dir, both written with mode 0600.
const (
	// AdminPasswordFile holds the random password of the bootstrap admin.
	AdminPasswordFile = "admin-password"
	// AgentTokenFile holds the token agentd enrolls with.
	AgentTokenFile = "agent-token"
)

// AdminUsername is the user Bootstrap creates.
const AdminUsername = "admin"

const adminPasswordLen = 24

// Bootstrap creates the first user when the store has none: "admin" with
// role ADMIN and password envPassword when it is non-empty (it must be 8..72
// bytes), else a random 24-character password written once to
// <dataDir>/admin-password (0600) and reused from there if that file already
// exists. It returns the path of the password file, or "" when none was
// used (a user existed, or envPassword was given). It never logs a password.
func (s *Service) Bootstrap(ctx context.Context, dataDir, envPassword string) (passwordFile string, err error) {
	n, err := s.store.CountUsers(ctx)
	if err != nil {
		return "", fmt.Errorf("counting users: %w", err)
	}
	if n > 0 {
		return "", nil
	}
	password := envPassword
	if password == "" {
		passwordFile = filepath.Join(dataDir, AdminPasswordFile)
		password, err = writeSecretOnce(passwordFile, func() string { return randomPassword(adminPasswordLen) })
		if err != nil {
			return "", fmt.Errorf("admin password file: %w", err)
		}
	}
	if err := ValidatePassword(password); err != nil {
		if passwordFile != "" {
			return "", fmt.Errorf("admin password in %s: %w", passwordFile, err)
		}
		return "", fmt.Errorf("admin password from the environment: %w", err)
	}
	u, err := s.createUser(ctx, AdminUsername, password, []Role{RoleAdmin})
	if errors.Is(err, errs.ErrConflict) {
		// Another server on the same store bootstrapped first.
		return passwordFile, nil
	}
	if err != nil {
		return "", fmt.Errorf("bootstrapping admin: %w", err)
	}
	ev := s.log.Info().Str("username", u.Username).Int64("user_id", u.ID)
	if passwordFile != "" {
		ev = ev.Str("password_file", passwordFile)
	} else {
		ev = ev.Str("password_source", "environment")
	}
	ev.Msg("bootstrap admin user created")
	return passwordFile, nil
}

// LoadOrCreateAgentToken returns the agent enrollment token kept in
// <dataDir>/agent-token, creating the file (mode 0600, 32 random bytes in
// hex) when it does not exist. Concurrent callers get the same token.
func LoadOrCreateAgentToken(dataDir string) (string, error) {
	path := filepath.Join(dataDir, AgentTokenFile)
	tok, err := writeSecretOnce(path, func() string { return hex.EncodeToString(randomBytes(32)) })
	if err != nil {
		return "", fmt.Errorf("agent token file: %w", err)
	}
	if tok == "" {
		return "", fmt.Errorf("agent token file %s is empty", path)
	}
	return tok, nil
}

// CheckAgentToken reports whether got equals the expected token want, in
// time that depends on neither value. An empty want matches nothing.
func CheckAgentToken(want, got string) bool {
	if want == "" {
		return false
	}
	w, g := sha256.Sum256([]byte(want)), sha256.Sum256([]byte(got))
	return subtle.ConstantTimeCompare(w[:], g[:]) == 1
}

// writeSecretOnce returns the trimmed content of path, first writing gen()
// there (mode 0600) when the file does not exist. The file appears
// atomically and is never overwritten.
func writeSecretOnce(path string, gen func() string) (string, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		return strings.TrimSpace(string(b)), nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return "", err
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	secret := gen()
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*") // mode 0600
	if err != nil {
		return "", err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.WriteString(secret + "\n"); err != nil {
		tmp.Close()
		return "", err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return "", err
	}
	if err := tmp.Close(); err != nil {
		return "", err
	}
	if err := os.Link(tmp.Name(), path); err != nil {
		if !errors.Is(err, fs.ErrExist) {
			return "", err
		}
		// Someone else wrote it first; theirs wins.
		b, err := os.ReadFile(path)
		if err != nil {
			return "", err
		}
		return strings.TrimSpace(string(b)), nil
	}
	return secret, nil
}

const passwordAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

// randomPassword returns n characters drawn uniformly from passwordAlphabet.
func randomPassword(n int) string {
	const limit = 256 - 256%len(passwordAlphabet) // reject bytes that would bias the draw
	out := make([]byte, 0, n)
	for len(out) < n {
		for _, b := range randomBytes(n) {
			if int(b) < limit && len(out) < n {
				out = append(out, passwordAlphabet[int(b)%len(passwordAlphabet)])
			}
		}
	}
	return string(out)
}

// randomBytes returns n bytes from crypto/rand (which never fails).
func randomBytes(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}
