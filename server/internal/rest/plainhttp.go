package rest

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/http"
)

// AnswerPlainHTTP returns l, an HTTPS listener's, whose connections answer
// a client that speaks plain HTTP instead of TLS with a 400 and a line of
// text, then close: net/http's own sentence ("Client sent an HTTP request
// to an HTTPS server."), then the https:// URL of the same host and path,
// then hint (what the operator may do instead). It is deliberately not a
// REST envelope: nothing answered in plaintext looks like the API. Serve
// it with http.Server.ServeTLS: TLS runs above these connections.
func AnswerPlainHTTP(l net.Listener, hint string) net.Listener {
	return plainHTTPListener{l, hint}
}

type plainHTTPListener struct {
	net.Listener
	hint string
}

func (l plainHTTPListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &plainHTTPConn{Conn: c, hint: l.hint}, nil
}

// errPlainHTTP ends the TLS handshake of a connection answered in plain
// HTTP; net/http logs it (the server logs that at debug).
var errPlainHTTP = errors.New("plain HTTP sent to the HTTPS listener: answered with a 400 naming https://, connection closed")

// maxPlainHead bounds what is read of a plain HTTP request before it is
// answered.
const maxPlainHead = 16 << 10

// plainHTTPConn looks at the first bytes read: a TLS connection begins with
// a record type (20 to 24), an HTTP request with its method in capitals.
// Its reads are bounded by the deadline net/http sets for the handshake.
type plainHTTPConn struct {
	net.Conn
	hint    string
	checked bool // the first bytes were seen and were not HTTP
}

func (c *plainHTTPConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if c.checked || n == 0 {
		return n, err
	}
	c.checked = true
	if p[0] < 'A' || p[0] > 'Z' {
		return n, err
	}
	c.answer(p[:n])
	return 0, errPlainHTTP
}

// answer reads the rest of the request's head (up to maxPlainHead) and
// writes the 400.
func (c *plainHTTPConn) answer(first []byte) {
	head := bytes.Clone(first)
	buf := make([]byte, 4096)
	for !bytes.Contains(head, []byte("\r\n\r\n")) && len(head) < maxPlainHead {
		n, err := c.Conn.Read(buf)
		head = append(head, buf[:n]...)
		if err != nil {
			break
		}
	}
	msg := "Client sent an HTTP request to an HTTPS server: this port serves HTTPS only. " + c.hint + "\n"
	if r, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(head))); err == nil {
		msg = fmt.Sprintf("Client sent an HTTP request to an HTTPS server: send it to https://%s%s instead. %s\n",
			r.Host, r.URL.RequestURI(), c.hint)
	}
	_, _ = fmt.Fprintf(c.Conn, "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"+
		"X-Content-Type-Options: nosniff\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", len(msg), msg)
}
