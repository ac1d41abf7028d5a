package auth

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"agentplane/server/internal/errs"
)

// fuzzSpecQuery decodes a raw query into its parameters in the order sent,
// as a client building it would have them; ok is false where the spec
// gives no answer (a bad escape, a ';').
func fuzzSpecQuery(raw string) (q [][2]string, ok bool) {
	for _, kv := range strings.Split(raw, "&") {
		if kv == "" {
			continue
		}
		if strings.Contains(kv, ";") {
			return nil, false
		}
		k, v, _ := strings.Cut(kv, "=")
		k, err1 := url.QueryUnescape(k)
		v, err2 := url.QueryUnescape(v)
		if err1 != nil || err2 != nil {
			return nil, false
		}
		q = append(q, [2]string{k, v})
	}
	return q, true
}

// Signing modes of FuzzVerify, in the low two bits of mode; bit 2 sends a
// Date the server accepts instead of the fuzzed one.
const (
	fuzzAsSent   = 0 // the Authorization value as fuzzed
	fuzzSigned   = 1 // signed with the key's secret
	fuzzWrongKey = 2 // signed with another secret
	fuzzTampered = 3 // signed with the key's secret, then one part changed
	fuzzGoodDate = 4
)

// FuzzVerify checks the access-key signature verifier on fuzzed requests
// signed with one known key: it never panics; it accepts exactly when the
// Date is within the skew, the query is well-formed, the key is the known
// one and the signature is the HMAC of the request's string to sign under
// the key's secret (so a wrong secret or a change to a signed part is
// refused); every refusal is ErrUnauthenticated and repeats no secret or
// signature; nothing secret is logged. Where the spec decides, the string
// to sign is the one an independent implementation of the spec builds.
func FuzzVerify(f *testing.F) {
	type seed struct {
		method, path, query, contentType, date, host, ocpName, ocpValue string
		body                                                            []byte
		authorization                                                   string
		mode                                                            uint8
	}
	good := sigNow.Format(http.TimeFormat)
	for _, s := range []seed{
		{"POST", "/api/v2/compute/hosts/batchStopAgents", "b=x+y&a%20b=%E4%BD%A0&b=%2B&empty", "application/json", good, "ocp.example.com:8080", "Trace", " abc ", []byte(`{"hostIds":[1,2,3]}`), "", fuzzSigned},
		{"GET", "/compute/hosts", "page=1&size=20", "", good, "h", "", "", nil, "", fuzzSigned},
		{"GET", "/compute/hosts", "page=1&size=20", "", good, "h", "", "", nil, "", fuzzWrongKey},
		{"GET", "/compute/hosts", "page=1&size=20", "", good, "h", "Zone", "hz", nil, "page=2", fuzzTampered},
		{"GET", "/compute/hosts", "", "", good, "h", "", "", []byte("x"), "y", fuzzTampered},
		{"GET", "/compute/hosts", "a=%zz", "", good, "h", "", "", nil, "", fuzzSigned},
		{"GET", "/compute/hosts", "", "", sigNow.Add(-16 * time.Minute).Format(http.TimeFormat), "h", "", "", nil, "", fuzzSigned},
		{"GET", "/compute/hosts", "", "", "Sat, 14 Mar 2026 15:09:26 CST", "h", "", "", nil, "", fuzzSigned},
		{"GET", "/", "", "", "", "", "", "", nil, "OCP-ACCESS-KEY-HMACSHA1 AP00:c2lnbmF0dXJl", fuzzAsSent | fuzzGoodDate},
		{"GET", "/", "", "", "", "", "", "", nil, "ocp-access-key-hmacsha1 :", fuzzAsSent},
		{"GET", "/", "", "", "", "", "", "", nil, "OCP-ACCESS-KEY-HMACSHA1 AP'; DROP:x", fuzzAsSent | fuzzGoodDate},
	} {
		f.Add(s.method, s.path, s.query, s.contentType, s.date, s.host, s.ocpName, s.ocpValue, s.body, s.authorization, s.mode)
	}

	ctx := context.Background()
	users := newFakeStore()
	if _, err := users.CreateUser(ctx, User{Username: "alice", Roles: []Role{RoleHostManager}}); err != nil {
		f.Fatal(err)
	}
	logs := &fuzzLog{}
	svc, err := NewAccessKeyService(&fakeKeys{}, users, bytes.Repeat([]byte{7}, SealKeyLen), zerolog.New(logs))
	if err != nil {
		f.Fatal(err)
	}
	svc.now = func() time.Time { return sigNow }
	k, secret, err := svc.CreateAccessKey(as("alice"), "")
	if err != nil {
		f.Fatal(err)
	}

	_, _, malformed := ParseSignatureCredentials("")
	f.Fuzz(func(t *testing.T, method, path, query, contentType, date, host, ocpName, ocpValue string, body []byte, authorization string, mode uint8) {
		if mode&fuzzGoodDate != 0 {
			date = good
		}
		headers := map[string][]string{"Accept": {"*/*"}}
		if ocpName != "" {
			headers["X-Ocp-"+ocpName] = []string{ocpValue}
		}
		r := &SignedRequest{Method: method, Body: body, ContentType: contentType, Date: date, Host: host, Headers: headers, Path: path, RawQuery: query}
		// computed: the signature is an HMAC the test made (the fuzzed one
		// may be any text, such as a part of an error message).
		computed := false
		sign := func(secret string) {
			r.AccessKeyID = k.ID
			if sts, err := StringToSign(r); err == nil {
				r.Signature, computed = specSign(secret, sts), true
			} else {
				r.Signature = authorization
			}
		}
		switch mode & 3 {
		case fuzzAsSent:
			scheme, cred, _ := strings.Cut(authorization, " ")
			if !strings.EqualFold(scheme, SignatureScheme) {
				return
			}
			ak, sig, err := ParseSignatureCredentials(cred)
			if err != nil {
				// One refusal for every malformed value: it cannot repeat it.
				if !errors.Is(err, errs.ErrUnauthenticated) || err.Error() != malformed.Error() {
					t.Fatalf("ParseSignatureCredentials(%q): %v, want %v", cred, err, malformed)
				}
				return
			}
			r.AccessKeyID, r.Signature = ak, sig
		case fuzzSigned:
			sign(secret)
		case fuzzWrongKey:
			sign(secret + "-" + authorization)
		case fuzzTampered:
			sign(secret)
			change := authorization
			if change == "" {
				change = "x"
			}
			switch len(body) % 7 {
			case 0:
				r.Path += change
			case 1:
				r.RawQuery += "&" + change
			case 2:
				r.Body = append(bytes.Clone(r.Body), change...)
			case 3:
				r.ContentType += change
			case 4:
				r.Host += change
			case 5:
				r.Method += change
			case 6:
				r.Headers = map[string][]string{"X-Ocp-" + change: {change}}
			}
		}

		logs.reset()
		p, err := svc.Verify(ctx, r)

		sts, stsErr := StringToSign(r)
		stss, _ := StringsToSign(r) // the lowercase form and the names as sent
		wantOK := stsErr == nil && checkDate(r.Date, sigNow) == nil && r.AccessKeyID == k.ID &&
			slices.ContainsFunc(stss, func(s string) bool { return r.Signature == specSign(secret, s) })
		switch {
		case err == nil && !wantOK:
			t.Fatalf("accepted a request not signed with the key's secret: %+v", r)
		case err == nil && (p.Username != "alice" || p.AccessKeyID != k.ID):
			t.Fatalf("accepted as %+v", p)
		case err != nil && wantOK:
			t.Fatalf("refused a request signed with the key's secret: %v", err)
		case err != nil && !errors.Is(err, errs.ErrUnauthenticated):
			t.Fatalf("refused with %v, want ErrUnauthenticated", err)
		case err != nil && (strings.Contains(err.Error(), secret) || computed && strings.Contains(err.Error(), r.Signature)):
			t.Fatalf("the error repeats the secret or the signature: %v", err)
		}
		if l := logs.String(); strings.Contains(l, secret) || computed && strings.Contains(l, r.Signature) {
			t.Fatalf("the secret or the signature was logged: %s", l)
		}

		// The independent implementation agrees where the spec decides.
		q, ok := fuzzSpecQuery(r.RawQuery)
		if stsErr != nil || !ok || len(r.Headers) > 2 || strings.Trim(ocpValue, " \t") != ocpValue || mode&3 == fuzzTampered {
			return
		}
		spec := specRequest{method: r.Method, contentType: r.ContentType, date: r.Date, host: r.Host, path: r.Path, body: r.Body, rawQuery: r.RawQuery, query: q}
		if ocpName != "" {
			spec.ocpHeaders = map[string]string{"X-Ocp-" + ocpName: ocpValue}
		}
		if want := specStringToSign(spec); sts != want {
			t.Fatalf("string to sign:\n got %q\nwant %q (the spec's)", sts, want)
		}
	})
}

// fuzzLog is a log sink the fuzz target reads back.
type fuzzLog struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *fuzzLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *fuzzLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

func (l *fuzzLog) reset() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf.Reset()
}
