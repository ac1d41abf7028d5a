package auth

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// AccessKeySealKeyFile is the file in the server's data dir (mode 0600)
// holding the 32-byte AES-256 key, in hex, that seals access key secrets in
// the database. Losing it makes every stored access key unusable; a copy of
// the database without it reveals no secret.
const AccessKeySealKeyFile = "access-key.key"

// SealKeyLen is the length of the sealing key in bytes (AES-256).
const SealKeyLen = 32

// LoadOrCreateAccessKeySealKey returns the key kept in
// <dataDir>/access-key.key, creating the file (mode 0600, 32 random bytes
// in hex) when it does not exist. Concurrent callers get the same key. A
// file that does not hold 64 hex digits is an error.
func LoadOrCreateAccessKeySealKey(dataDir string) ([]byte, error) {
	path := filepath.Join(dataDir, AccessKeySealKeyFile)
	s, err := writeSecretOnce(path, func() string { return hex.EncodeToString(randomBytes(SealKeyLen)) })
	if err != nil {
		return nil, fmt.Errorf("access key sealing key file: %w", err)
	}
	return decodeSealKey(path, s)
}

// LoadAccessKeySealKey returns the key in the file at path (64 hex
// digits), given to every replica of a store. A file that group or others
// may read is refused: the key opens every access key secret.
func LoadAccessKeySealKey(path string) ([]byte, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("access key sealing key file: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("access key sealing key file %s is readable by others (mode %v): chmod 600 it", path, fi.Mode().Perm())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("access key sealing key file: %w", err)
	}
	return decodeSealKey(path, strings.TrimSpace(string(b)))
}

func decodeSealKey(path, s string) ([]byte, error) {
	key, err := hex.DecodeString(s)
	if err != nil || len(key) != SealKeyLen {
		return nil, fmt.Errorf("access key sealing key file %s must hold %d hex digits", path, 2*SealKeyLen)
	}
	return key, nil
}

// SealKeyCheck is the key check value of a sealing key: HMAC-SHA-256 of a
// fixed label under the key, in hex. Replicas compare it to know they hold
// the same key; the key cannot be recovered from it.
func SealKeyCheck(key []byte) string {
	m := hmac.New(sha256.New, key)
	m.Write([]byte("agentplane access-key sealing key check v1"))
	return hex.EncodeToString(m.Sum(nil))
}

// sealer seals secrets with AES-256-GCM. Each sealed value is bound to the
// access key id it belongs to (as additional data), so moving a sealed
// secret to another row does not make it usable there.
type sealer struct {
	aead cipher.AEAD
}

// sealPrefix versions the sealed format: "v1." + base64(nonce ‖ ciphertext).
const sealPrefix = "v1."

func newSealer(key []byte) (*sealer, error) {
	if len(key) != SealKeyLen {
		return nil, fmt.Errorf("access key sealing key must be %d bytes, got %d", SealKeyLen, len(key))
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	return &sealer{aead: aead}, nil
}

func sealAD(id string) []byte { return []byte("agentplane access key " + id) }

func (s *sealer) seal(id, secret string) string {
	nonce := randomBytes(s.aead.NonceSize())
	out := s.aead.Seal(nonce, nonce, []byte(secret), sealAD(id))
	return sealPrefix + base64.StdEncoding.EncodeToString(out)
}

// errUnseal never says anything about the value.
var errUnseal = errors.New("cannot unseal the access key secret (was " + AccessKeySealKeyFile + " replaced?)")

func (s *sealer) open(id, sealed string) (string, error) {
	enc, ok := strings.CutPrefix(sealed, sealPrefix)
	if !ok {
		return "", errUnseal
	}
	raw, err := base64.StdEncoding.DecodeString(enc)
	if err != nil || len(raw) < s.aead.NonceSize() {
		return "", errUnseal
	}
	n := s.aead.NonceSize()
	plain, err := s.aead.Open(nil, raw[:n], raw[n:], sealAD(id))
	if err != nil {
		return "", errUnseal
	}
	return string(plain), nil
}
