package auth

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"agentplane/server/internal/errs"
)

// AccessKey is an OCP access key (AK/SK): requests signed with its secret
// act as its user, with the user's roles at the time of the request.
type AccessKey struct {
	ID       string // the access key id (AK)
	Username string
	// SealedSecret is the secret sealed with the data dir's key; it never
	// leaves the server, and lists leave it empty.
	SealedSecret string
	CreateTime   time.Time
	LastUsedTime time.Time // zero when never used
}

// AccessKeyStore is what access keys need from the store.
type AccessKeyStore interface {
	// CreateAccessKey stores k (ID, Username, SealedSecret, CreateTime)
	// unless its user already has max keys (an ErrFailedPrecondition error),
	// atomically. An existing ID gives an ErrConflict error.
	CreateAccessKey(ctx context.Context, k AccessKey, max int) (AccessKey, error)
	// AccessKeyByID returns the key with its SealedSecret; an ErrNotFound
	// error when there is none.
	AccessKeyByID(ctx context.Context, id string) (AccessKey, error)
	// ListAccessKeys returns username's keys, or every key when username is
	// "", oldest first, without SealedSecret.
	ListAccessKeys(ctx context.Context, username string) ([]AccessKey, error)
	// DeleteAccessKey deletes a key; an ErrNotFound error when there is none.
	DeleteAccessKey(ctx context.Context, id string) error
	// TouchAccessKey records that the key signed an accepted request at at.
	TouchAccessKey(ctx context.Context, id string, at time.Time) error
}

// UserLookup finds a user by name; an ErrNotFound error (wrapped) when
// there is none. UserStore has it.
type UserLookup interface {
	UserByName(ctx context.Context, username string) (User, error)
}

// Limits on access keys.
const (
	// MaxAccessKeysPerUser bounds how many keys one user holds.
	MaxAccessKeysPerUser = 10
	// AccessKeySecretBytes is the secret's entropy; it is sent base64url
	// encoded without padding (43 characters).
	AccessKeySecretBytes = 32
	// touchEvery bounds how often a key's last use is written.
	touchEvery = time.Minute
)

// errBadSignature is the one answer to an unknown key, a key whose user is
// gone, and a wrong signature.
var errBadSignature = fmt.Errorf("invalid access key or signature: %w", errs.ErrUnauthenticated)

// AccessKeyService creates, lists and deletes access keys, and verifies the
// requests they sign. A user manages their own keys; an ADMIN anyone's. It
// is safe for concurrent use. It never logs or returns a secret except the
// new one CreateAccessKey returns once.
type AccessKeyService struct {
	keys  AccessKeyStore
	users UserLookup
	seal  *sealer
	log   zerolog.Logger
	now   func() time.Time
}

// NewAccessKeyService returns the service over keys and users; sealKey is
// the 32-byte key from LoadOrCreateAccessKeySealKey or LoadAccessKeySealKey.
func NewAccessKeyService(keys AccessKeyStore, users UserLookup, sealKey []byte, log zerolog.Logger) (*AccessKeyService, error) {
	s, err := newSealer(sealKey)
	if err != nil {
		return nil, err
	}
	return &AccessKeyService{keys: keys, users: users, seal: s, log: log, now: time.Now}, nil
}

// caller returns the principal in ctx; an ErrUnauthenticated error when
// there is none.
func caller(ctx context.Context) (Principal, error) {
	p, ok := FromContext(ctx)
	if !ok {
		return Principal{}, fmt.Errorf("no credentials: %w", errs.ErrUnauthenticated)
	}
	return p, nil
}

// owner resolves whose keys a call is about: username, or the caller when
// it is "". Another user than the caller needs ADMIN (ErrPermissionDenied).
func owner(p Principal, username string) (string, error) {
	if username == "" || username == p.Username {
		return p.Username, nil
	}
	if !p.Has(RoleAdmin) {
		return "", fmt.Errorf("user %q may only manage their own access keys (another user's need %s): %w", p.Username, RoleAdmin, errs.ErrPermissionDenied)
	}
	return username, nil
}

// CreateAccessKey creates a key for username (the caller when "") and
// returns it with its secret, which cannot be read again. Errors:
// ErrUnauthenticated without a caller, ErrPermissionDenied for another
// user without ADMIN, ErrNotFound for an unknown user, ErrInvalidArgument
// for a malformed name, ErrFailedPrecondition when the user already holds
// MaxAccessKeysPerUser keys.
func (s *AccessKeyService) CreateAccessKey(ctx context.Context, username string) (AccessKey, string, error) {
	p, err := caller(ctx)
	if err != nil {
		return AccessKey{}, "", err
	}
	username, err = owner(p, username)
	if err != nil {
		return AccessKey{}, "", err
	}
	if err := ValidateUsername(username); err != nil {
		return AccessKey{}, "", err
	}
	if _, err := s.users.UserByName(ctx, username); err != nil {
		return AccessKey{}, "", fmt.Errorf("creating an access key: %w", err)
	}
	id := newAccessKeyID()
	secret := base64.RawURLEncoding.EncodeToString(randomBytes(AccessKeySecretBytes))
	k, err := s.keys.CreateAccessKey(ctx, AccessKey{
		ID:           id,
		Username:     username,
		SealedSecret: s.seal.seal(id, secret),
		CreateTime:   s.now(),
	}, MaxAccessKeysPerUser)
	if err != nil {
		return AccessKey{}, "", fmt.Errorf("creating an access key for %q: %w", username, err)
	}
	k.SealedSecret = ""
	s.log.Info().Str("access_key_id", k.ID).Str("username", k.Username).Str("by", p.Username).Msg("access key created")
	return k, secret, nil
}

// ListAccessKeys lists keys without secrets, oldest first: username's (the
// caller's when ""), or, for an ADMIN passing "", every user's. Another
// user's need ADMIN (ErrPermissionDenied).
func (s *AccessKeyService) ListAccessKeys(ctx context.Context, username string) ([]AccessKey, error) {
	p, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	if username == "" && p.Has(RoleAdmin) {
		// every user's
	} else if username, err = owner(p, username); err != nil {
		return nil, err
	}
	ks, err := s.keys.ListAccessKeys(ctx, username)
	if err != nil {
		return nil, fmt.Errorf("listing access keys: %w", err)
	}
	for i := range ks {
		ks[i].SealedSecret = ""
	}
	return ks, nil
}

// DeleteAccessKey deletes a key; requests it signs are refused from then
// on. A key that does not exist, or belongs to another user while the
// caller is not ADMIN, gives an ErrNotFound error (so that other users'
// keys cannot be probed).
func (s *AccessKeyService) DeleteAccessKey(ctx context.Context, id string) error {
	p, err := caller(ctx)
	if err != nil {
		return err
	}
	notFound := fmt.Errorf("access key %.64q: %w", id, errs.ErrNotFound)
	if !validAccessKeyID(id) {
		return notFound
	}
	k, err := s.keys.AccessKeyByID(ctx, id)
	if errors.Is(err, errs.ErrNotFound) {
		return notFound
	}
	if err != nil {
		return fmt.Errorf("deleting access key: %w", err)
	}
	if k.Username != p.Username && !p.Has(RoleAdmin) {
		return notFound
	}
	if err := s.keys.DeleteAccessKey(ctx, id); err != nil {
		if errors.Is(err, errs.ErrNotFound) {
			return notFound
		}
		return fmt.Errorf("deleting access key: %w", err)
	}
	s.log.Info().Str("access_key_id", id).Str("username", k.Username).Str("by", p.Username).Msg("access key deleted")
	return nil
}

// Verify checks a request signed with an access key over either of the
// strings StringsToSign gives (header names lowercased or as sent) and
// returns the principal it acts as: the key's user with the user's current
// roles, AccessKeyID set. Errors, all ErrUnauthenticated: a Date missing,
// malformed or more than MaxDateSkew from the server's clock; a malformed
// query; an unknown or deleted key, a key whose user is gone, or a wrong
// signature (one message for all three). A store failure is returned as
// is (wrapped). The signature is compared with both in constant time, and no error
// repeats it or the secret.
func (s *AccessKeyService) Verify(ctx context.Context, r *SignedRequest) (Principal, error) {
	now := s.now()
	if err := checkDate(r.Date, now); err != nil {
		return Principal{}, err
	}
	stss, err := StringsToSign(r)
	if err != nil {
		return Principal{}, err
	}
	if !validAccessKeyID(r.AccessKeyID) {
		return Principal{}, errBadSignature
	}
	k, err := s.keys.AccessKeyByID(ctx, r.AccessKeyID)
	if errors.Is(err, errs.ErrNotFound) {
		return Principal{}, errBadSignature
	}
	if err != nil {
		return Principal{}, fmt.Errorf("reading access key: %w", err)
	}
	secret, err := s.seal.open(k.ID, k.SealedSecret)
	if err != nil {
		return Principal{}, fmt.Errorf("access key %s: %w", k.ID, err)
	}
	if !signatureMatches(secret, stss, r.Signature) {
		return Principal{}, errBadSignature
	}
	u, err := s.users.UserByName(ctx, k.Username)
	if errors.Is(err, errs.ErrNotFound) {
		return Principal{}, errBadSignature
	}
	if err != nil {
		return Principal{}, fmt.Errorf("reading the access key's user: %w", err)
	}
	if now.Sub(k.LastUsedTime) >= touchEvery {
		if err := s.keys.TouchAccessKey(ctx, k.ID, now); err != nil {
			zerolog.Ctx(ctx).Debug().Err(err).Str("access_key_id", k.ID).Msg("recording access key use")
		}
	}
	return Principal{Username: u.Username, Roles: slices.Clone(u.Roles), AccessKeyID: k.ID}, nil
}

// Access key ids are "AP" and 20 uppercase hex digits (80 random bits):
// no ':' (the Authorization separator), safe in logs and URLs.
const accessKeyIDPrefix = "AP"

func newAccessKeyID() string {
	return accessKeyIDPrefix + strings.ToUpper(hex.EncodeToString(randomBytes(10)))
}

// validAccessKeyID reports whether id could be an access key id: 1..64
// letters and digits. Anything else is refused before the store is asked.
func validAccessKeyID(id string) bool {
	if id == "" || len(id) > 64 {
		return false
	}
	for _, c := range id {
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}
