package identity

import (
	"crypto/tls"
	"sync"
)

// sessionCacheSize bounds the TLS sessions kept: one per server name
// dialled (a --server list is short).
const sessionCacheSize = 16

// sessionCache is the TLS session cache of ClientTLS, kept for the life
// of the process so that a reconnect resumes its session (on any replica
// sharing the ticket keys) instead of a full handshake. A resumed session
// carries the client certificate of the handshake that made it, so the
// cache is emptied whenever the certificate changes: a session never
// outlives the certificate it was made with.
type sessionCache struct {
	mu    sync.Mutex
	cache tls.ClientSessionCache
}

func newSessionCache() *sessionCache {
	return &sessionCache{cache: tls.NewLRUClientSessionCache(sessionCacheSize)}
}

func (s *sessionCache) Get(key string) (*tls.ClientSessionState, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cache.Get(key)
}

func (s *sessionCache) Put(key string, cs *tls.ClientSessionState) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cache.Put(key, cs)
}

// reset drops every session: the certificate changed. A nil cache has
// none.
func (s *sessionCache) reset() {
	if s == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cache = tls.NewLRUClientSessionCache(sessionCacheSize)
}
