package auth

import (
	"context"
	"crypto/md5"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"agentplane/server/internal/errs"
)

// ocpClientRequest is a request as OceanBase's Python OCPClient (the OCP MCP
// server's ocp_client.py) builds it: its headers and query parameters in the
// order and spelling its caller gave them.
type ocpClientRequest struct {
	method, contentType, date, host, path string
	body                                  []byte
	headers                               [][2]string // as written, e.g. "X-OCP-Trace"
	params                                [][2]string // raw, not encoded
}

// ocpClientStringToSign is the string to sign of OCPClient._get_signature,
// written from that client's code and none of this package's:
//
//   - the x-ocp-* headers (name matched without case) as "name:value" lines,
//     the names as written, sorted by name as written (Python's sorted(),
//     code point order: "X-..." before "x-...");
//   - the query parameters sorted by their raw (decoded) names, then each
//     name and value encoded with quote(safe="") (RFC 3986: only
//     A-Za-z0-9 and -._~ kept, a space is %20).
func ocpClientStringToSign(r ocpClientRequest) string {
	sum := ""
	if r.body != nil {
		sum = fmt.Sprintf("%X", md5.Sum(r.body))
	}
	var ocp [][2]string
	for _, h := range r.headers {
		if strings.HasPrefix(strings.ToLower(h[0]), "x-ocp-") {
			ocp = append(ocp, h)
		}
	}
	slices.SortFunc(ocp, func(a, b [2]string) int { return strings.Compare(a[0], b[0]) })
	lines := make([]string, len(ocp))
	for i, h := range ocp {
		lines[i] = h[0] + ":" + h[1]
	}
	pq := r.path
	if len(r.params) > 0 {
		ps := slices.Clone(r.params)
		slices.SortFunc(ps, func(a, b [2]string) int {
			if c := strings.Compare(a[0], b[0]); c != 0 {
				return c
			}
			return strings.Compare(a[1], b[1])
		})
		quote := func(s string) string { return strings.ReplaceAll(url.QueryEscape(s), "+", "%20") }
		enc := make([]string, len(ps))
		for i, p := range ps {
			enc[i] = quote(p[0]) + "=" + quote(p[1])
		}
		pq += "?" + strings.Join(enc, "&")
	}
	return strings.Join([]string{r.method, sum, r.contentType, r.date, r.host, strings.Join(lines, "\n"), pq}, "\n")
}

// rawQuery is the query OCPClient sends: the one it signs, the string to
// sign's last line after the "?".
func (r ocpClientRequest) rawQuery() string {
	sts := ocpClientStringToSign(r)
	_, q, _ := strings.Cut(sts[strings.LastIndexByte(sts, '\n')+1:], "?")
	return q
}

// received is what the REST adapter hands the verifier for r when the
// listener kept the header names' spelling (spelled) or not (Go's
// canonical form, as net/http gives them).
func (r ocpClientRequest) received(ak, sig string, spelled bool) *SignedRequest {
	h := map[string][]string{"Accept": {"*/*"}}
	for _, kv := range r.headers {
		name := kv[0]
		if !spelled {
			name = canonicalHeaderKey(name)
		}
		h[name] = append(h[name], kv[1])
	}
	return &SignedRequest{
		AccessKeyID: ak, Signature: sig, Method: r.method, Body: r.body, ContentType: r.contentType,
		Date: r.date, Host: r.host, Headers: h, Path: r.path, RawQuery: r.rawQuery(),
	}
}

// canonicalHeaderKey is net/http's canonical form: each dash-separated word
// capitalized, the rest lowercase.
func canonicalHeaderKey(s string) string {
	words := strings.Split(strings.ToLower(s), "-")
	for i, w := range words {
		if w != "" {
			words[i] = strings.ToUpper(w[:1]) + w[1:]
		}
	}
	return strings.Join(words, "-")
}

func ocpClientSample() ocpClientRequest {
	return ocpClientRequest{
		method: "GET", contentType: "application/json", date: sigNow.Format(time.RFC1123), host: "127.0.0.1:8080",
		path:    "/api/v2/tasks/instances",
		headers: [][2]string{{"Content-Type", "application/json"}, {"X-OCP-Trace", "abc"}, {"x-ocp-origin", "mcp-server"}},
		params:  [][2]string{{"size", "5"}, {"a/", "slash"}, {"a.", "dot"}, {"name", "Stop OCP agent"}},
	}
}

// The independent signer itself, on a worked example, so that a bug in it
// cannot hide behind the same bug in the server.
func TestOCPClientStringToSign(t *testing.T) {
	r := ocpClientSample()
	want := "GET\n\napplication/json\nSat, 14 Mar 2026 15:09:26 UTC\n127.0.0.1:8080\n" +
		"X-OCP-Trace:abc\nx-ocp-origin:mcp-server\n" +
		"/api/v2/tasks/instances?a.=dot&a%2F=slash&name=Stop%20OCP%20agent&size=5"
	if got := ocpClientStringToSign(r); got != want {
		t.Errorf("got  %q\nwant %q", got, want)
	}
	if got, want := r.rawQuery(), "a.=dot&a%2F=slash&name=Stop%20OCP%20agent&size=5"; got != want {
		t.Errorf("raw query %q, want %q", got, want)
	}
}

// OCPClient signs its x-ocp-* header names as its caller wrote them, and
// sorts its query parameters by raw name: the server accepts that
// signature, and still the lowercase one.
func TestVerifyOCPClientSignature(t *testing.T) {
	env := newKeyEnv(t)
	k, secret := env.create(t, "alice")
	ctx := context.Background()
	r := ocpClientSample()
	sig := specSign(secret, ocpClientStringToSign(r))
	if _, err := env.svc.Verify(ctx, r.received(k.ID, sig, true)); err != nil {
		t.Errorf("OCPClient's signature, names as written: %v", err)
	}

	// The same names lowercased by the client: one form, accepted.
	lower := ocpClientSample()
	for i := range lower.headers {
		lower.headers[i][0] = strings.ToLower(lower.headers[i][0])
	}
	if _, err := env.svc.Verify(ctx, lower.received(k.ID, specSign(secret, ocpClientStringToSign(lower)), true)); err != nil {
		t.Errorf("lowercase names: %v", err)
	}
	// Signed lowercased, sent as written: the spec's form, accepted.
	if _, err := env.svc.Verify(ctx, r.received(k.ID, specSign(secret, ocpClientStringToSign(lower)), true)); err != nil {
		t.Errorf("signed lowercase, sent as written: %v", err)
	}
	// Query without reserved characters, names in Go's canonical form as a
	// Go client signing its http.Header would have them.
	canon := ocpClientSample()
	canon.params = [][2]string{{"page", "1"}}
	for i := range canon.headers {
		canon.headers[i][0] = canonicalHeaderKey(canon.headers[i][0])
	}
	if _, err := env.svc.Verify(ctx, canon.received(k.ID, specSign(secret, ocpClientStringToSign(canon)), false)); err != nil {
		t.Errorf("Go's canonical names: %v", err)
	}
	// The parameters sent in another order: the same signature.
	reordered := r.received(k.ID, sig, true)
	reordered.RawQuery = "size=5&a%2F=slash&name=Stop%20OCP%20agent&a.=dot"
	if _, err := env.svc.Verify(ctx, reordered); err != nil {
		t.Errorf("parameters sent in another order: %v", err)
	}

	refused := []struct {
		name string
		req  *SignedRequest
	}{
		// The spelling was lost (Go's canonical names): no case variant is
		// guessed.
		{"spelling lost", r.received(k.ID, sig, false)},
		{"another spelling", func() *SignedRequest {
			s := r.received(k.ID, sig, true)
			s.Headers["X-OCP-TRACE"] = s.Headers["X-OCP-Trace"]
			delete(s.Headers, "X-OCP-Trace")
			return s
		}()},
		{"tampered header", func() *SignedRequest {
			s := r.received(k.ID, sig, true)
			s.Headers["X-OCP-Trace"] = []string{"abd"}
			return s
		}()},
		{"wrong key", r.received(k.ID, specSign(secret+"x", ocpClientStringToSign(r)), true)},
	}
	for _, tt := range refused {
		if _, err := env.svc.Verify(ctx, tt.req); !errors.Is(err, errs.ErrUnauthenticated) {
			t.Errorf("%s: Verify = %v, want ErrUnauthenticated", tt.name, err)
		}
	}
}

// Parameters are sorted by raw name before encoding: "a." before "a/"
// although "%2F" sorts before ".".
func TestCanonicalQuerySortsByRawName(t *testing.T) {
	for raw, want := range map[string]string{
		"a%2F=1&a.=2":            "a.=2&a%2F=1",
		"a.=2&a%2F=1":            "a.=2&a%2F=1",
		"b=1&a+b=2&a=3":          "a=3&a%20b=2&b=1",
		"%C3%A9=1&z=2&%21=3&~=4": "%21=3&z=2&~=4&%C3%A9=1",
		"s=2&s=1&r=0":            "r=0&s=2&s=1",
	} {
		got, err := CanonicalQuery(raw)
		if err != nil || got != want {
			t.Errorf("CanonicalQuery(%q) = %q, %v; want %q", raw, got, err, want)
		}
	}
}
