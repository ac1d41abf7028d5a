package auth

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/md5"
	"crypto/sha1"
	"encoding/base64"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/crypto/bcrypt"

	"agentplane/server/internal/errs"
)

// specRequest is a request as a client of OCP's API builds it.
type specRequest struct {
	method, contentType, date, host, path string
	body                                  []byte
	ocpHeaders                            map[string]string // x-ocp-* headers, any case
	rawQuery                              string            // as sent
	query                                 [][2]string       // the same parameters, decoded, in the order sent
}

// specStringToSign is OCP's string to sign written from the spec's words,
// with none of this package's code:
//
//	StringToSign = METHOD\nMD5\nContent-Type\nDate\nHost\nOCP-headers\nPathAndQuery,
//	MD5 the uppercase hex MD5 of the body (empty when there is none),
//	OCP-headers the x-ocp-* headers as name:value lines sorted by name,
//	PathAndQuery the path plus ? and the query parameters sorted by name,
//	each name and value percent-encoded,
//
// with agentplane's documented choices: lowercase header names; RFC 3986
// encoding (QueryEscape is exactly that once its "+" for a space is %20);
// parameters sorted by raw name before encoding, as OCP's clients sort
// them, repeats in the order sent.
func specStringToSign(r specRequest) string {
	sum := ""
	if len(r.body) > 0 {
		sum = fmt.Sprintf("%X", md5.Sum(r.body))
	}
	var lines []string
	for name, v := range r.ocpHeaders {
		lines = append(lines, strings.ToLower(name)+":"+v)
	}
	sort.Strings(lines) // names are distinct, so sorting the lines sorts by name
	enc := func(s string) string { return strings.ReplaceAll(url.QueryEscape(s), "+", "%20") }
	pairs := slices.Clone(r.query)
	sort.SliceStable(pairs, func(i, j int) bool { return pairs[i][0] < pairs[j][0] })
	for i, p := range pairs {
		pairs[i] = [2]string{enc(p[0]), enc(p[1])}
	}
	pq := r.path
	if len(pairs) > 0 {
		var qs []string
		for _, p := range pairs {
			qs = append(qs, p[0]+"="+p[1])
		}
		pq += "?" + strings.Join(qs, "&")
	}
	return r.method + "\n" + sum + "\n" + r.contentType + "\n" + r.date + "\n" + r.host + "\n" +
		strings.Join(lines, "\n") + "\n" + pq
}

func specSign(secret, stringToSign string) string {
	m := hmac.New(sha1.New, []byte(secret))
	m.Write([]byte(stringToSign))
	return base64.StdEncoding.EncodeToString(m.Sum(nil))
}

// toSigned is what an adapter would hand the verifier for r.
func toSigned(r specRequest, ak, sig string) *SignedRequest {
	h := map[string][]string{"Accept": {"application/json"}, "X-Other": {"ignored"}}
	for k, v := range r.ocpHeaders {
		h[k] = []string{v}
	}
	return &SignedRequest{
		AccessKeyID: ak, Signature: sig, Method: r.method, Body: r.body, ContentType: r.contentType,
		Date: r.date, Host: r.host, Headers: h, Path: r.path, RawQuery: r.rawQuery,
	}
}

var sigNow = time.Date(2026, 3, 14, 15, 9, 26, 0, time.UTC)

func sampleRequest() specRequest {
	return specRequest{
		method:      "POST",
		contentType: "application/json",
		date:        sigNow.Add(-2 * time.Minute).Format(time.RFC1123),
		host:        "ocp.example.com:8080",
		path:        "/api/v2/compute/hosts/batchStopAgents",
		body:        []byte(`{"hostIds":[1,2,3]}`),
		ocpHeaders:  map[string]string{"X-OCP-Trace": "abc-123", "x-ocp-zone": "hz/1 a"},
		rawQuery:    "zeta=1&b=x+y&a%20b=%E4%BD%A0%E5%A5%BD&b=%2B%26%3D&tilde=~-._&star=*'()!&empty",
		query: [][2]string{
			{"zeta", "1"}, {"b", "x y"}, {"a b", "你好"}, {"b", "+&="}, {"tilde", "~-._"}, {"star", "*'()!"}, {"empty", ""},
		},
	}
}

func TestStringToSignMatchesTheSpec(t *testing.T) {
	bare := specRequest{method: "GET", date: sigNow.Format(time.RFC1123), host: "h", path: "/compute/hosts"}
	tests := []struct {
		name string
		r    specRequest
	}{
		{"full", sampleRequest()},
		{"no body, headers or query", bare},
		{"empty query", func() specRequest { r := bare; r.rawQuery = "&"; return r }()},
		{"repeated names keep their order", func() specRequest {
			r := bare
			r.rawQuery, r.query = "s=2&s=1&r=0", [][2]string{{"s", "2"}, {"s", "1"}, {"r", "0"}}
			return r
		}()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := StringToSign(toSigned(tt.r, "AK", "sig"))
			if err != nil {
				t.Fatal(err)
			}
			if want := specStringToSign(tt.r); got != want {
				t.Errorf("string to sign:\n got %q\nwant %q", got, want)
			}
		})
	}
	// The full one, spelled out, so that a change of rule shows here.
	got, _ := StringToSign(toSigned(sampleRequest(), "AK", "sig"))
	want := "POST\n" +
		fmt.Sprintf("%X", md5.Sum([]byte(`{"hostIds":[1,2,3]}`))) + "\n" +
		"application/json\n" +
		"Sat, 14 Mar 2026 15:07:26 UTC\n" +
		"ocp.example.com:8080\n" +
		"x-ocp-trace:abc-123\n" +
		"x-ocp-zone:hz/1 a\n" +
		"/api/v2/compute/hosts/batchStopAgents?a%20b=%E4%BD%A0%E5%A5%BD&b=x%20y&b=%2B%26%3D&empty=&star=%2A%27%28%29%21&tilde=~-._&zeta=1"
	if got != want {
		t.Errorf("string to sign:\n got %q\nwant %q", got, want)
	}
	if _, err := StringToSign(&SignedRequest{RawQuery: "a=%zz"}); !errors.Is(err, errs.ErrUnauthenticated) {
		t.Errorf("malformed query: %v", err)
	}
}

type keyEnv struct {
	users *fakeStore
	keys  *fakeKeys
	svc   *AccessKeyService
	logs  *bytes.Buffer
	now   time.Time
}

func newKeyEnv(t *testing.T) *keyEnv {
	t.Helper()
	env := &keyEnv{users: newFakeStore(), keys: &fakeKeys{}, logs: &bytes.Buffer{}, now: sigNow}
	us := newService(env.users, zerolog.Nop(), bcrypt.MinCost)
	mustCreate(t, us, "alice", "alice-password", RoleHostManager)
	mustCreate(t, us, "bob", "bob-password", RoleHostViewer)
	svc, err := NewAccessKeyService(env.keys, env.users, bytes.Repeat([]byte{7}, SealKeyLen), zerolog.New(env.logs))
	if err != nil {
		t.Fatal(err)
	}
	svc.now = func() time.Time { return env.now }
	env.svc = svc
	return env
}

func as(name string, roles ...Role) context.Context {
	return WithPrincipal(context.Background(), Principal{Username: name, Roles: roles})
}

func (e *keyEnv) create(t *testing.T, user string) (AccessKey, string) {
	t.Helper()
	k, secret, err := e.svc.CreateAccessKey(as(user), "")
	if err != nil {
		t.Fatal(err)
	}
	return k, secret
}

func TestVerify(t *testing.T) {
	env := newKeyEnv(t)
	k, secret := env.create(t, "alice")
	other, otherSecret := env.create(t, "bob")
	ctx := context.Background()
	signed := func(r specRequest) *SignedRequest { return toSigned(r, k.ID, specSign(secret, specStringToSign(r))) }

	p, err := env.svc.Verify(ctx, signed(sampleRequest()))
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if p.Username != "alice" || p.AccessKeyID != k.ID || !p.Has(RoleHostManager) {
		t.Errorf("principal = %+v", p)
	}
	bare := sampleRequest()
	bare.body, bare.ocpHeaders, bare.rawQuery, bare.query, bare.contentType = nil, nil, "", nil, ""
	if _, err := env.svc.Verify(ctx, signed(bare)); err != nil {
		t.Errorf("Verify without body, headers, query: %v", err)
	}
	for _, skew := range []time.Duration{-14 * time.Minute, 14 * time.Minute} {
		r := sampleRequest()
		r.date = sigNow.Add(skew).Format(time.RFC1123)
		if _, err := env.svc.Verify(ctx, signed(r)); err != nil {
			t.Errorf("Date %v from now: %v", skew, err)
		}
	}
	r := sampleRequest()
	r.date = sigNow.In(time.FixedZone("", 8*3600)).Format(time.RFC1123Z)
	if _, err := env.svc.Verify(ctx, signed(r)); err != nil {
		t.Errorf("Date with a numeric zone: %v", err)
	}

	refused := []struct {
		name string
		req  func() *SignedRequest
		msg  string
	}{
		{"expired date", func() *SignedRequest {
			r := sampleRequest()
			r.date = sigNow.Add(-16 * time.Minute).Format(time.RFC1123)
			return signed(r)
		}, "not within 15m0s"},
		{"future date", func() *SignedRequest {
			r := sampleRequest()
			r.date = sigNow.Add(16 * time.Minute).Format(time.RFC1123)
			return signed(r)
		}, "not within 15m0s"},
		{"no date", func() *SignedRequest { r := sampleRequest(); r.date = ""; return signed(r) }, "Date header"},
		{"not RFC 1123", func() *SignedRequest { r := sampleRequest(); r.date = sigNow.Format(time.RFC3339); return signed(r) }, "not an RFC 1123 time"},
		{"unknown zone", func() *SignedRequest {
			r := sampleRequest()
			r.date = sigNow.Format("Mon, 02 Jan 2006 15:04:05") + " CST"
			return signed(r)
		}, "not an RFC 1123 time"},
		{"tampered body", func() *SignedRequest { s := signed(sampleRequest()); s.Body = []byte(`{"hostIds":[1,2,4]}`); return s }, "invalid access key or signature"},
		{"body dropped", func() *SignedRequest { s := signed(sampleRequest()); s.Body = nil; return s }, "invalid access key or signature"},
		{"tampered path", func() *SignedRequest {
			s := signed(sampleRequest())
			s.Path = "/api/v2/compute/hosts/batchRestartAgents"
			return s
		}, "invalid access key or signature"},
		{"tampered query value", func() *SignedRequest {
			s := signed(sampleRequest())
			s.RawQuery = strings.Replace(s.RawQuery, "zeta=1", "zeta=2", 1)
			return s
		}, "invalid access key or signature"},
		{"query added", func() *SignedRequest { s := signed(sampleRequest()); s.RawQuery += "&page=2"; return s }, "invalid access key or signature"},
		{"repeated values reordered", func() *SignedRequest {
			s := signed(sampleRequest())
			s.RawQuery = strings.Replace(strings.Replace(s.RawQuery, "b=x+y", "b=TMP", 1), "b=%2B%26%3D", "b=x+y", 1)
			s.RawQuery = strings.Replace(s.RawQuery, "b=TMP", "b=%2B%26%3D", 1)
			return s
		}, "invalid access key or signature"},
		{"tampered x-ocp header", func() *SignedRequest {
			s := signed(sampleRequest())
			s.Headers["X-OCP-Trace"] = []string{"abc-124"}
			return s
		}, "invalid access key or signature"},
		{"x-ocp header added", func() *SignedRequest { s := signed(sampleRequest()); s.Headers["X-Ocp-New"] = []string{"1"}; return s }, "invalid access key or signature"},
		{"tampered method", func() *SignedRequest { s := signed(sampleRequest()); s.Method = "PUT"; return s }, "invalid access key or signature"},
		{"tampered host", func() *SignedRequest { s := signed(sampleRequest()); s.Host = "evil.example.com"; return s }, "invalid access key or signature"},
		{"tampered content type", func() *SignedRequest { s := signed(sampleRequest()); s.ContentType = "text/plain"; return s }, "invalid access key or signature"},
		{"malformed query", func() *SignedRequest { s := signed(sampleRequest()); s.RawQuery += "&x=%zz"; return s }, "malformed query"},
		{"unknown key", func() *SignedRequest {
			s := signed(sampleRequest())
			s.AccessKeyID = "AP00000000000000000000"
			return s
		}, "invalid access key or signature"},
		{"malformed key id", func() *SignedRequest { s := signed(sampleRequest()); s.AccessKeyID = "AP'; DROP TABLE"; return s }, "invalid access key or signature"},
		{"another key's secret", func() *SignedRequest {
			r := sampleRequest()
			return toSigned(r, k.ID, specSign(otherSecret, specStringToSign(r)))
		}, "invalid access key or signature"},
		{"signature of another key's request", func() *SignedRequest {
			r := sampleRequest()
			return toSigned(r, other.ID, specSign(secret, specStringToSign(r)))
		}, "invalid access key or signature"},
		{"not base64", func() *SignedRequest { s := signed(sampleRequest()); s.Signature = "!!!"; return s }, "invalid access key or signature"},
	}
	for _, tt := range refused {
		t.Run(tt.name, func(t *testing.T) {
			req := tt.req()
			_, err := env.svc.Verify(ctx, req)
			if !errors.Is(err, errs.ErrUnauthenticated) {
				t.Fatalf("Verify = %v, want ErrUnauthenticated", err)
			}
			if !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("error %q, want it to contain %q", err, tt.msg)
			}
			for _, s := range []string{secret, otherSecret, req.Signature} {
				if strings.Contains(err.Error(), s) && len(s) > 3 {
					t.Errorf("error %q repeats a secret or the signature", err)
				}
			}
		})
	}

	// A deleted key, and a key whose user is gone, are refused.
	if err := env.svc.DeleteAccessKey(as("alice"), k.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := env.svc.Verify(ctx, signed(sampleRequest())); !errors.Is(err, errs.ErrUnauthenticated) {
		t.Errorf("deleted key: %v", err)
	}
	env.users.deleteUser("bob")
	r = sampleRequest()
	if _, err := env.svc.Verify(ctx, toSigned(r, other.ID, specSign(otherSecret, specStringToSign(r)))); !errors.Is(err, errs.ErrUnauthenticated) {
		t.Errorf("key of a deleted user: %v", err)
	}
	if strings.Contains(env.logs.String(), secret) || strings.Contains(env.logs.String(), otherSecret) {
		t.Errorf("a secret was logged: %s", env.logs.String())
	}
}

func TestVerifyRecordsUse(t *testing.T) {
	env := newKeyEnv(t)
	k, secret := env.create(t, "alice")
	r := sampleRequest()
	req := toSigned(r, k.ID, specSign(secret, specStringToSign(r)))
	for range 3 {
		if _, err := env.svc.Verify(context.Background(), req); err != nil {
			t.Fatal(err)
		}
	}
	ks, _ := env.svc.ListAccessKeys(as("alice"), "")
	if len(ks) != 1 || !ks[0].LastUsedTime.Equal(sigNow) {
		t.Fatalf("keys = %+v, want last use %v", ks, sigNow)
	}
	if env.keys.touched != 1 {
		t.Errorf("last use written %d times within a minute, want 1", env.keys.touched)
	}
}

func TestVerifyUnsealFailure(t *testing.T) {
	env := newKeyEnv(t)
	k, secret := env.create(t, "alice")
	// The same database under another data dir's key.
	other, err := NewAccessKeyService(env.keys, env.users, bytes.Repeat([]byte{8}, SealKeyLen), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	other.now = env.svc.now
	r := sampleRequest()
	_, err = other.Verify(context.Background(), toSigned(r, k.ID, specSign(secret, specStringToSign(r))))
	if err == nil || errors.Is(err, errs.ErrUnauthenticated) || !strings.Contains(err.Error(), AccessKeySealKeyFile) {
		t.Fatalf("Verify under another key = %v, want an internal error naming %s", err, AccessKeySealKeyFile)
	}
}

func TestParseSignatureCredentials(t *testing.T) {
	ak, sig, err := ParseSignatureCredentials(" AP12:c2lnbmF0dXJl+/= ")
	if err != nil || ak != "AP12" || sig != "c2lnbmF0dXJl+/=" {
		t.Errorf("= %q, %q, %v", ak, sig, err)
	}
	for _, bad := range []string{"", "AP12", ":sig", "AP12:"} {
		if _, _, err := ParseSignatureCredentials(bad); !errors.Is(err, errs.ErrUnauthenticated) {
			t.Errorf("%q: %v", bad, err)
		}
	}
}

func TestPercentEncode(t *testing.T) {
	for in, want := range map[string]string{
		"AZaz09-._~": "AZaz09-._~",
		"a b+c":      "a%20b%2Bc",
		"/?#[]@":     "%2F%3F%23%5B%5D%40",
		"é":          "%C3%A9",
		"":           "",
	} {
		if got := PercentEncode(in); got != want {
			t.Errorf("PercentEncode(%q) = %q, want %q", in, got, want)
		}
	}
}
