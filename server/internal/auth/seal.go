package auth

import (
	"crypto/aes"
	"crypto/cipher"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
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
	key, err := hex.DecodeString(s)
	if err != nil || len(key) != SealKeyLen {
		return nil, fmt.Errorf("access key sealing key file %s must hold %d hex digits", path, 2*SealKeyLen)
	}
	return key, nil
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
