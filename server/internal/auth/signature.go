package auth

import (
	"crypto/hmac"
	"crypto/md5"
	"crypto/sha1"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"time"

	"agentplane/server/internal/errs"
)

// SignatureScheme is the Authorization scheme of OCP's access-key signature:
//
//	Authorization: OCP-ACCESS-KEY-HMACSHA1 {AccessKeyID}:{Signature}
//
// where Signature = Base64(HMAC-SHA1(Secret, StringToSign)) with the
// standard, padded base64 alphabet. The scheme name is matched without
// regard to case.
const SignatureScheme = "OCP-ACCESS-KEY-HMACSHA1"

// MaxDateSkew is how far a signed request's Date may be from the server's
// clock, in either direction.
const MaxDateSkew = 15 * time.Minute

// ocpHeaderPrefix names the headers a signature covers.
const ocpHeaderPrefix = "x-ocp-"

// SignedRequest is what an access-key signature covers, as the adapter
// received it. It holds no secret.
//
// Over HTTP each field is the request's own: Method, the body, the
// Content-Type, Date and Host headers, every header (only x-ocp-* ones are
// used), the path exactly as the request line sent it (percent-escapes
// kept) and the raw query.
//
// Over gRPC there is no body or query, so the adapter fixes them: Method
// "POST", Body empty (MD5 line empty), ContentType "application/grpc",
// Date from the "date" metadata, Host from ":authority", Headers the
// metadata, Path the full method name ("/agentplane.host.v1.HostService/StopAgent")
// and RawQuery empty.
type SignedRequest struct {
	AccessKeyID string // from the Authorization header
	Signature   string // base64, from the Authorization header
	Method      string
	Body        []byte
	ContentType string
	Date        string
	Host        string
	Headers     map[string][]string
	Path        string
	RawQuery    string
}

// ParseSignatureCredentials splits the credentials that follow the scheme
// in an OCP-ACCESS-KEY-HMACSHA1 Authorization value ("AK:Signature"). Both
// parts must be non-empty; an ErrUnauthenticated error otherwise (which
// does not repeat the value).
func ParseSignatureCredentials(cred string) (accessKeyID, signature string, err error) {
	ak, sig, ok := strings.Cut(strings.TrimSpace(cred), ":")
	if !ok || ak == "" || sig == "" {
		return "", "", fmt.Errorf("malformed %s credentials, want AccessKeyId:Signature: %w", SignatureScheme, errs.ErrUnauthenticated)
	}
	return ak, sig, nil
}

// StringToSign returns the text an access-key signature covers, the
// spec's
//
//	METHOD \n MD5 \n Content-Type \n Date \n Host \n OCP-headers \n PathAndQuery
//
// (joined with "\n", no trailing newline), where
//
//   - MD5 is the uppercase hex MD5 of the body, or empty when the body is
//     empty;
//   - Content-Type, Date and Host are the values sent (empty when absent);
//   - OCP-headers is one "name:value" line per x-ocp-* header, the name in
//     lowercase, lines sorted by name and joined with "\n"; a header sent
//     several times has its values joined with "," in the order sent;
//     values have surrounding spaces and tabs trimmed; the whole part is
//     empty when there are none (so the string then holds an empty line);
//   - PathAndQuery is the path as sent, then, when the query has
//     parameters, "?" and CanonicalQuery.
//
// It returns an ErrUnauthenticated error when the query is malformed.
// StringsToSign gives the other form a signature may cover.
func StringToSign(r *SignedRequest) (string, error) {
	ss, err := stringsToSign(r, false)
	if err != nil {
		return "", err
	}
	return ss[0], nil
}

// StringsToSign returns the strings to sign a signature over r may cover,
// one or two: StringToSign's (x-ocp-* header names lowercased: the spec's
// form, and all that gRPC metadata and HTTP/2 can carry), then, when it
// differs, the same with the x-ocp-* header names as r.Headers spells them,
// lines sorted by that spelling in byte order. That second form is what
// OCP's own Python client (OCPClient) signs: the names as its caller wrote
// them ("X-OCP-Trace"). Only these two forms are tried, never other case
// variants. An adapter that cannot tell how the client spelled a name
// passes it as it has it (net/http: "X-Ocp-Trace", what a Go client
// signing its http.Header signs).
func StringsToSign(r *SignedRequest) ([]string, error) {
	return stringsToSign(r, true)
}

func stringsToSign(r *SignedRequest, both bool) ([]string, error) {
	sum := ""
	if len(r.Body) > 0 {
		h := md5.Sum(r.Body)
		sum = strings.ToUpper(hex.EncodeToString(h[:]))
	}
	q, err := CanonicalQuery(r.RawQuery)
	if err != nil {
		return nil, err
	}
	pq := r.Path
	if q != "" {
		pq += "?" + q
	}
	join := func(ocp string) string {
		return strings.Join([]string{r.Method, sum, r.ContentType, r.Date, r.Host, ocp, pq}, "\n")
	}
	lower := ocpHeaders(r.Headers, strings.ToLower)
	ss := []string{join(lower)}
	if both {
		if asSent := ocpHeaders(r.Headers, func(s string) string { return s }); asSent != lower {
			ss = append(ss, join(asSent))
		}
	}
	return ss, nil
}

// Sign returns Base64(HMAC-SHA1(secret, stringToSign)).
func Sign(secret, stringToSign string) string {
	m := hmac.New(sha1.New, []byte(secret))
	m.Write([]byte(stringToSign))
	return base64.StdEncoding.EncodeToString(m.Sum(nil))
}

// signatureMatches reports whether sig is the signature under secret of
// one of stss (StringsToSign: at most two). Every one is computed and
// compared in constant time, so the time taken does not tell which one
// matched, nor how much of sig did.
func signatureMatches(secret string, stss []string, sig string) bool {
	match := 0
	for _, sts := range stss {
		match |= subtle.ConstantTimeCompare([]byte(Sign(secret, sts)), []byte(sig))
	}
	return match == 1
}

// CanonicalQuery returns the query's parameters in the signed form:
//
//   - the raw query is decoded as a form would be (url.ParseQuery: "+" and
//     "%20" are both a space; a parameter without "=" has the empty value);
//   - each name and value is percent-encoded again with PercentEncode, and
//     rendered "name=value" (also when the value is empty);
//   - pairs are sorted by their decoded (raw) name in byte order, before
//     encoding, as OCP's clients sort them (so "a." comes before "a/",
//     whose encoded "a%2F" would sort first); the values of a repeated name
//     keep the order in which they were sent (the handlers read the first
//     one, so reordering them must break the signature);
//   - pairs are joined with "&".
//
// An empty query, or one with no parameter ("?&"), gives "". A malformed
// query (a bad escape, a ";") gives an ErrUnauthenticated error.
func CanonicalQuery(raw string) (string, error) {
	if raw == "" {
		return "", nil
	}
	vals, err := url.ParseQuery(raw)
	if err != nil {
		return "", fmt.Errorf("malformed query string: %w", errs.ErrUnauthenticated)
	}
	type param struct {
		name   string
		values []string
	}
	ps := make([]param, 0, len(vals))
	for name, vs := range vals {
		ps = append(ps, param{name, vs})
	}
	slices.SortFunc(ps, func(a, b param) int { return strings.Compare(a.name, b.name) })
	var b strings.Builder
	for _, p := range ps {
		for _, v := range p.values {
			if b.Len() > 0 {
				b.WriteByte('&')
			}
			b.WriteString(PercentEncode(p.name))
			b.WriteByte('=')
			b.WriteString(PercentEncode(v))
		}
	}
	return b.String(), nil
}

// PercentEncode encodes s as RFC 3986 does: every byte but the unreserved
// A-Z a-z 0-9 - . _ ~ becomes %XX with uppercase hex (UTF-8 bytes one by
// one; a space is %20, never "+").
func PercentEncode(s string) string {
	const hexDigits = "0123456789ABCDEF"
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~' {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hexDigits[c>>4])
		b.WriteByte(hexDigits[c&15])
	}
	return b.String()
}

// ocpHeaders renders the x-ocp-* headers of h (see StringToSign), each
// name as name(it) gives it: strings.ToLower, or as h spells it.
func ocpHeaders(h map[string][]string, name func(string) string) string {
	byName := map[string][]string{}
	for n, vs := range h {
		if len(n) < len(ocpHeaderPrefix) || !strings.EqualFold(n[:len(ocpHeaderPrefix)], ocpHeaderPrefix) {
			continue
		}
		n = name(n)
		for _, v := range vs {
			byName[n] = append(byName[n], strings.Trim(v, " \t"))
		}
	}
	names := make([]string, 0, len(byName))
	for n := range byName {
		names = append(names, n)
	}
	slices.Sort(names)
	lines := make([]string, len(names))
	for i, n := range names {
		lines[i] = n + ":" + strings.Join(byName[n], ",")
	}
	return strings.Join(lines, "\n")
}

// checkDate returns an ErrUnauthenticated error unless date is an RFC 1123
// time ("Mon, 02 Jan 2006 15:04:05 GMT", or with a numeric zone "-0700")
// within MaxDateSkew of now.
func checkDate(date string, now time.Time) error {
	t, err := parseDate(date)
	if err != nil {
		return err
	}
	if skew := now.Sub(t); skew > MaxDateSkew || skew < -MaxDateSkew {
		return fmt.Errorf("the Date header %.64q is not within %v of the server's time %s: %w",
			date, MaxDateSkew, now.UTC().Format(time.RFC1123), errs.ErrUnauthenticated)
	}
	return nil
}

func parseDate(v string) (time.Time, error) {
	if v == "" {
		return time.Time{}, fmt.Errorf("a signed request needs a Date header: %w", errs.ErrUnauthenticated)
	}
	if t, err := time.Parse(time.RFC1123Z, v); err == nil {
		return t, nil
	}
	// A zone abbreviation other than GMT or UTC would be parsed as a
	// made-up zone at offset zero; refuse it.
	if strings.HasSuffix(v, " GMT") || strings.HasSuffix(v, " UTC") {
		if t, err := time.Parse(time.RFC1123, v); err == nil {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("the Date header %.64q is not an RFC 1123 time such as %q: %w",
		v, "Mon, 02 Jan 2006 15:04:05 GMT", errs.ErrUnauthenticated)
}
