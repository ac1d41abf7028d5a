package console

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"agentplane/server/internal/auth"
)

// Cookie names: with TLS the __Host- prefix binds the cookie to this origin
// (Secure, Path=/, no Domain: the browser refuses it otherwise); a
// plaintext (--insecure) server cannot set a Secure cookie.
const (
	cookieName         = "__Host-agentplane-session"
	insecureCookieName = "agentplane-session"
)

// Session lifetimes when Config leaves them zero.
const (
	DefaultIdleTimeout = 30 * time.Minute
	DefaultMaxAge      = 12 * time.Hour
)

// session is what the sealed cookie holds: who signed in, their roles at
// sign-in, when (the absolute bound), when they were last active (the idle
// bound), and the CSRF token every mutation must present.
type session struct {
	User   string      `json:"u"`
	Roles  []auth.Role `json:"r"`
	Issued int64       `json:"i"` // Unix ms
	Seen   int64       `json:"s"` // Unix ms
	CSRF   string      `json:"c"`
}

// principal is the session's caller, as the domain services check it.
func (s *session) principal(addr string) auth.Principal {
	return auth.Principal{Username: s.User, Roles: s.Roles, Addr: addr}
}

// sessions seals sessions into cookies with AES-256-GCM under a key derived
// from the secret every replica shares: any replica opens a cookie any other
// sealed, and a restart keeps them. Nothing is stored server-side.
type sessions struct {
	aead      cipher.AEAD
	name      string
	secure    bool
	idle, max time.Duration
	now       func() time.Time
}

// sessionKeyLabel separates the session key from every other use of the
// shared secret.
const sessionKeyLabel = "agentplane console session key v1"

func newSessions(secret []byte, insecure bool, idle, maxAge time.Duration, now func() time.Time) (*sessions, error) {
	if len(secret) < 32 {
		return nil, fmt.Errorf("console: the session secret must be at least 32 bytes, got %d", len(secret))
	}
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(sessionKeyLabel))
	block, err := aes.NewCipher(mac.Sum(nil))
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	s := &sessions{aead: aead, name: cookieName, secure: true, idle: idle, max: maxAge, now: now}
	if insecure {
		s.name, s.secure = insecureCookieName, false
	}
	return s, nil
}

// Why a request has no session; each has its own message for the user.
var (
	errNoSession = errors.New("not signed in")
	errExpired   = errors.New("your session has expired")
)

// start returns a new session for p, with a fresh CSRF token.
func (ss *sessions) start(p auth.Principal) *session {
	now := ss.now().UnixMilli()
	return &session{User: p.Username, Roles: p.Roles, Issued: now, Seen: now, CSRF: randomToken()}
}

// get opens r's session cookie: errNoSession without a cookie (or one that
// does not open: another key, tampered), errExpired past its idle or
// absolute bound.
func (ss *sessions) get(r *http.Request) (*session, error) {
	c, err := r.Cookie(ss.name)
	if err != nil || c.Value == "" {
		return nil, errNoSession
	}
	raw, err := base64.RawURLEncoding.DecodeString(c.Value)
	n := ss.aead.NonceSize()
	if err != nil || len(raw) < n {
		return nil, errNoSession
	}
	plain, err := ss.aead.Open(nil, raw[:n], raw[n:], []byte(ss.name))
	if err != nil {
		return nil, errNoSession
	}
	var s session
	if err := json.Unmarshal(plain, &s); err != nil || s.User == "" || s.CSRF == "" {
		return nil, errNoSession
	}
	now := ss.now()
	if now.Sub(time.UnixMilli(s.Issued)) >= ss.max || now.Sub(time.UnixMilli(s.Seen)) >= ss.idle {
		return nil, errExpired
	}
	return &s, nil
}

// expiry is when s ends if its user stays active.
func (ss *sessions) expiry(s *session) time.Time { return time.UnixMilli(s.Issued).Add(ss.max) }

// touch marks s active now and, when that moved its idle bound by more
// than a tenth of the idle timeout, writes the cookie again (a sliding
// idle expiry without a Set-Cookie on every request).
func (ss *sessions) touch(w http.ResponseWriter, s *session) {
	now := ss.now()
	if now.Sub(time.UnixMilli(s.Seen)) < ss.idle/10 {
		return
	}
	s.Seen = now.UnixMilli()
	ss.write(w, s)
}

// write sets the sealed cookie of s.
func (ss *sessions) write(w http.ResponseWriter, s *session) {
	plain, err := json.Marshal(s)
	if err != nil {
		panic(err) // plain data: cannot fail
	}
	nonce := make([]byte, ss.aead.NonceSize())
	_, _ = rand.Read(nonce) // never fails
	sealed := ss.aead.Seal(nonce, nonce, plain, []byte(ss.name))
	http.SetCookie(w, &http.Cookie{
		Name: ss.name, Value: base64.RawURLEncoding.EncodeToString(sealed), Path: "/",
		// The browser drops it at the absolute bound; the server checks both.
		Expires:  ss.expiry(s),
		HttpOnly: true, Secure: ss.secure, SameSite: http.SameSiteStrictMode,
	})
}

// clear deletes the cookie.
func (ss *sessions) clear(w http.ResponseWriter) {
	http.SetCookie(w, &http.Cookie{
		Name: ss.name, Value: "", Path: "/", MaxAge: -1,
		HttpOnly: true, Secure: ss.secure, SameSite: http.SameSiteStrictMode,
	})
}

// validCSRF reports whether token is s's CSRF token (in constant time).
func (s *session) validCSRF(token string) bool {
	return token != "" && subtle.ConstantTimeCompare([]byte(token), []byte(s.CSRF)) == 1
}

// randomToken returns 32 random bytes, base64url.
func randomToken() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b) // never fails
	return base64.RawURLEncoding.EncodeToString(b)
}
