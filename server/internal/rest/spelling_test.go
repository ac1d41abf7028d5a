package rest

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// recordSpellings serves the test server as the server does on a
// plaintext listener.
func recordSpellings(s *httptest.Server) {
	s.Listener = RecordHeaderSpellings(s.Listener)
	s.Config.ConnContext = ConnContext
}

// signedAsWritten sends GET path with the x-ocp-* headers hdr, their names
// sent and signed as written (OCPClient's form, sorted as written), and
// returns the status.
func signedAsWritten(t *testing.T, env *iamEnv, k *testKey, path string, hdr [][2]string) int {
	t.Helper()
	r, err := http.NewRequest(http.MethodGet, env.srv.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range hdr {
		r.Header[h[0]] = []string{h[1]} // not canonicalized: written as is
	}
	env.remember(ocpSignNames(r, nil, k.id, k.secret, func(s string) string { return s }))
	res, err := env.srv.Client().Do(r)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	_, _ = io.Copy(io.Discard, res.Body)
	return res.StatusCode
}

// OCPClient's header names ("X-OCP-Trace" beside its own "x-ocp-origin")
// signed as written: accepted where the listener records the spelling,
// several requests on one connection each with its own; refused where it
// cannot (the names reach the handler canonicalized).
func TestHeaderNamesAsWritten(t *testing.T) {
	ocpClient := [][2]string{{"X-OCP-Trace", "abc"}, {"x-ocp-origin", "mcp-server"}}

	env := newIAMEnv(t, recordSpellings)
	k := env.createKey(t, call{user: "viewer"})
	for i, hdr := range [][][2]string{
		ocpClient,
		{{"x-OCP-trace", "def"}, {"X-Ocp-Origin", "mcp-server"}},
		{{"x-ocp-trace", "ghi"}},
		ocpClient,
	} {
		if st := signedAsWritten(t, env, k, "/api/v2/compute/hosts?size=5", hdr); st != http.StatusOK {
			t.Errorf("request %d %v signed as written: status %d, want 200", i, hdr, st)
		}
	}
	// The lowercase form is still accepted.
	if r := env.do(t, call{method: "GET", path: "/api/v2/compute/hosts", key: k,
		header: http.Header{"X-OCP-Trace": {"abc"}}}); r.status != http.StatusOK {
		t.Errorf("lowercase form: %d %s", r.status, r.raw)
	}
	// A signature over a spelling other than the one sent is refused: the
	// case variants are not guessed.
	r, _ := http.NewRequest(http.MethodGet, env.srv.URL+"/api/v2/compute/hosts", nil)
	r.Header["X-OCP-Trace"] = []string{"abc"}
	ocpSignNames(r, nil, k.id, k.secret, func(s string) string { return strings.Replace(s, "Trace", "TRACE", 1) })
	res, err := env.srv.Client().Do(r)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusUnauthorized {
		t.Errorf("signed over another spelling: status %d, want 401", res.StatusCode)
	}

	plain := newIAMEnv(t)
	pk := plain.createKey(t, call{user: "viewer"})
	if st := signedAsWritten(t, plain, pk, "/api/v2/compute/hosts", ocpClient); st != http.StatusUnauthorized {
		t.Errorf("without the recorder: status %d, want 401 (the spelling is lost)", st)
	}
}

func TestSpellingScan(t *testing.T) {
	c := &spellingConn{atLineStart: true}
	// Split anywhere, and lines that are not x-ocp-* names.
	in := "GET /x HTTP/1.1\r\nHost: h\r\nX-OCP-Trace: a\r\nx-ocp-zone:b\r\nbad X-OCP-No: c\r\n X-OCP-Fold: d\r\n\r\nX-OCP-Ab"
	for i := range len(in) {
		c.scan([]byte(in[i : i+1]))
	}
	c.scan([]byte("c: 1\n"))
	want := map[string]string{"X-Ocp-Trace": "X-OCP-Trace", "X-Ocp-Zone": "x-ocp-zone", "X-Ocp-Abc": "X-OCP-Abc"}
	if len(c.names) != len(want) {
		t.Errorf("names %v, want %v", c.names, want)
	}
	for k, v := range want {
		if c.names[k] != v {
			t.Errorf("names[%q] = %q, want %q", k, c.names[k], v)
		}
	}
}
