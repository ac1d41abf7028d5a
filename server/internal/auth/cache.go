package auth

import (
	"crypto/sha256"
	"slices"
	"sync"
	"time"
)

// verifyCache remembers successful password checks for a short time, so that
// frequent REST calls do not each pay for bcrypt. Keys are
// sha256(username + "\x00" + password); the plaintext is never stored.
type verifyCache struct {
	mu      sync.Mutex
	ttl     time.Duration
	max     int
	entries map[[sha256.Size]byte]cacheEntry
}

type cacheEntry struct {
	p       Principal
	expires time.Time
}

func newVerifyCache(max int, ttl time.Duration) *verifyCache {
	return &verifyCache{ttl: ttl, max: max, entries: make(map[[sha256.Size]byte]cacheEntry)}
}

func cacheKey(username, password string) [sha256.Size]byte {
	return sha256.Sum256([]byte(username + "\x00" + password))
}

func (c *verifyCache) get(key [sha256.Size]byte, now time.Time) (Principal, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[key]
	if !ok {
		return Principal{}, false
	}
	if !now.Before(e.expires) {
		delete(c.entries, key)
		return Principal{}, false
	}
	p := e.p
	p.Roles = slices.Clone(p.Roles) // callers may not share the cached slice
	return p, true
}

// put stores p under key. When the cache is full it first drops expired
// entries, then, if still full, an arbitrary one.
func (c *verifyCache) put(key [sha256.Size]byte, p Principal, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.entries[key]; !ok && len(c.entries) >= c.max {
		for k, e := range c.entries {
			if !now.Before(e.expires) {
				delete(c.entries, k)
			}
		}
		for k := range c.entries {
			if len(c.entries) < c.max {
				break
			}
			delete(c.entries, k)
		}
	}
	c.entries[key] = cacheEntry{p: p, expires: now.Add(c.ttl)}
}

func (c *verifyCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries)
}
