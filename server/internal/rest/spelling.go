package rest

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"net/textproto"
	"strings"
	"sync"
)

// Header names as the client spelled them. net/http hands a handler every
// header name in its canonical form ("X-Ocp-Trace"), but OCP's Python
// client signs the x-ocp-* names as its caller wrote them ("X-OCP-Trace"),
// and sorts them so. On a plaintext listener (--http-plaintext,
// --insecure) the bytes the server reads can be watched on their way in:
// RecordHeaderSpellings notes, per connection, how each x-ocp-* name was
// last spelled at the start of a line, and the signature check is offered
// that spelling (auth.StringsToSign) beside the lowercase one. Behind TLS
// the spelling is not seen (the handler has the canonical names); over
// HTTP/2 it is lowercase on the wire anyway.
//
// The spelling is not security-relevant: it only picks which of the two
// forms of the string to sign (as sent, lowercased) a signature is checked
// against, and the signature must still be the secret's HMAC of it. So a
// line of a body that looks like a header, or a pipelined request's
// headers read early, can at worst make the as-sent form differ from what
// the client signed, which then fails as it would have without this.

// maxSpelledNames bounds the spellings one connection keeps; past it they
// start over.
const maxSpelledNames = 64

// maxSpelledName bounds a header name that is noted.
const maxSpelledName = 128

// RecordHeaderSpellings returns l whose connections note how x-ocp-* header
// names were spelled; serve it with ConnContext as the http.Server's
// ConnContext.
func RecordHeaderSpellings(l net.Listener) net.Listener { return spellingListener{l} }

type spellingListener struct{ net.Listener }

func (l spellingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &spellingConn{Conn: c, atLineStart: true}, nil
}

// ConnContext, an http.Server's ConnContext, lets the handler find the
// spellings of a connection accepted through RecordHeaderSpellings.
func ConnContext(ctx context.Context, c net.Conn) context.Context {
	if sc, ok := c.(*spellingConn); ok {
		return context.WithValue(ctx, spellingKey{}, sc)
	}
	return ctx
}

type spellingKey struct{}

// spellingConn scans what is read from it for lines that begin with an
// x-ocp-* header name followed by ':'.
type spellingConn struct {
	net.Conn

	mu          sync.Mutex
	atLineStart bool   // the next byte begins a line
	name        []byte // the current line's name so far; nil: not a candidate
	names       map[string]string
}

func (c *spellingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.mu.Lock()
		c.scan(p[:n])
		c.mu.Unlock()
	}
	return n, err
}

func (c *spellingConn) scan(b []byte) {
	for len(b) > 0 {
		if c.atLineStart {
			c.atLineStart, c.name = false, make([]byte, 0, 32)
		}
		if c.name == nil { // not a header name: on to the next line
			i := bytes.IndexByte(b, '\n')
			if i < 0 {
				return
			}
			b, c.atLineStart = b[i+1:], true
			continue
		}
		ch := b[0]
		b = b[1:]
		switch {
		case ch == ':':
			c.note(string(c.name))
			c.name = nil
		case ch == '\n':
			c.atLineStart = true
		case !isTokenByte(ch) || len(c.name) == maxSpelledName:
			c.name = nil
		default:
			c.name = append(c.name, ch)
		}
	}
}

func (c *spellingConn) note(name string) {
	if len(name) < len(ocpPrefix) || !strings.EqualFold(name[:len(ocpPrefix)], ocpPrefix) {
		return
	}
	key := textproto.CanonicalMIMEHeaderKey(name)
	if c.names == nil || len(c.names) == maxSpelledNames && c.names[key] == "" {
		c.names = map[string]string{}
	}
	c.names[key] = name
}

const ocpPrefix = "x-ocp-"

// isTokenByte reports whether ch may be in a header name (RFC 9110 tchar).
func isTokenByte(ch byte) bool {
	return ch >= 'a' && ch <= 'z' || ch >= 'A' && ch <= 'Z' || ch >= '0' && ch <= '9' ||
		strings.IndexByte("!#$%&'*+-.^_`|~", ch) >= 0
}

// spelledHeaders returns r's headers with each x-ocp-* name as the client
// spelled it, when r came through RecordHeaderSpellings; else r.Header.
func spelledHeaders(r *http.Request) map[string][]string {
	c, _ := r.Context().Value(spellingKey{}).(*spellingConn)
	if c == nil {
		return r.Header
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	h := make(map[string][]string, len(r.Header))
	for name, vs := range r.Header {
		if s, ok := c.names[name]; ok {
			name = s
		}
		h[name] = vs
	}
	return h
}
