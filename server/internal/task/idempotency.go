package task

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strconv"

	"agentplane/server/internal/errs"
)

type idempotencyKeyCtx struct{}

// MaxIdempotencyKey is the longest Idempotency-Key accepted.
const MaxIdempotencyKey = 255

// WithIdempotencyKey returns ctx carrying a request's Idempotency-Key:
// Submit then returns the task the same caller created before with the same
// key, instead of creating another. The key must be 1..255 printable ASCII
// characters.
func WithIdempotencyKey(ctx context.Context, key string) (context.Context, error) {
	if key == "" || len(key) > MaxIdempotencyKey {
		return ctx, fmt.Errorf("Idempotency-Key must be 1..%d characters, got %d: %w", MaxIdempotencyKey, len(key), errs.ErrInvalidArgument)
	}
	for i := 0; i < len(key); i++ {
		if key[i] < 0x20 || key[i] > 0x7e {
			return ctx, fmt.Errorf("Idempotency-Key must be printable ASCII: %w", errs.ErrInvalidArgument)
		}
	}
	return context.WithValue(ctx, idempotencyKeyCtx{}, key), nil
}

// IdempotencyKey returns the Idempotency-Key ctx carries (see
// WithIdempotencyKey), or "" when it carries none.
func IdempotencyKey(ctx context.Context) string {
	k, _ := ctx.Value(idempotencyKeyCtx{}).(string)
	return k
}

// fingerprint identifies what a plan asks: its name and the ids of the
// resources it holds (for an agent operation, its hosts' ids: what it was
// before resources had kinds, so stored fingerprints still match).
func fingerprint(p Plan) string {
	parts := []string{p.Task.Name}
	for _, r := range p.Resources {
		parts = append(parts, strconv.FormatInt(r.ID, 10))
	}
	return digest(parts...)
}

func digest(parts ...string) string {
	h := sha256.New()
	for _, p := range parts {
		h.Write([]byte(p))
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil))
}
