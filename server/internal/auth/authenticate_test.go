package auth

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"agentplane/server/internal/errs"
)

// passwords is a PasswordChecker that knows one user.
type passwords struct{}

func (passwords) Authenticate(_ context.Context, username, password string) (Principal, error) {
	if username == "ops" && password == "secret" {
		return Principal{Username: "ops", Roles: []Role{RoleAdmin}}, nil
	}
	return Principal{}, fmt.Errorf("invalid username or password: %w", errs.ErrUnauthenticated)
}

// signatures is a SignatureVerifier that accepts signature "good" of key
// AKGOOD on path /ok, and records the request it was asked about.
type signatures struct{ got *SignedRequest }

func (s *signatures) Verify(_ context.Context, r *SignedRequest) (Principal, error) {
	s.got = r
	if r.AccessKeyID == "AKGOOD" && r.Signature == "good" && r.Path == "/ok" {
		return Principal{Username: "ops", AccessKeyID: r.AccessKeyID}, nil
	}
	return Principal{}, fmt.Errorf("signature does not match: %w", errs.ErrUnauthenticated)
}

func TestAuthenticatorAuthenticate(t *testing.T) {
	basic := func(userpass string) string {
		return "Basic " + base64.StdEncoding.EncodeToString([]byte(userpass))
	}
	signed := func(path string, err, checkErr error) func(context.Context) (*SignedRequest, func() error, error) {
		return func(context.Context) (*SignedRequest, func() error, error) {
			if err != nil {
				return nil, nil, err
			}
			return &SignedRequest{Method: http.MethodPost, Path: path}, func() error { return checkErr }, nil
		}
	}
	errBody := fmt.Errorf("reading the request body: %w", errs.ErrInvalidArgument)
	errDigest := fmt.Errorf("the request does not match the signed digest: %w", errs.ErrUnauthenticated)
	for _, tt := range []struct {
		name    string
		noKeys  bool
		c       Credentials
		user    string // the principal's, on success
		key     string
		wantErr error  // the kind, or the error itself
		msg     string // in the error's text
	}{
		{name: "basic", c: Credentials{Authorization: basic("ops:secret")}, user: "ops"},
		{name: "basic, scheme in any case, spaces around", c: Credentials{Authorization: "bASIC  " + basic("ops:secret")[6:] + " "}, user: "ops"},
		{name: "wrong password", c: Credentials{Authorization: basic("ops:nope")}, wantErr: errs.ErrUnauthenticated, msg: "invalid username or password"},
		{name: "basic not base64", c: Credentials{Authorization: "Basic !!!"}, wantErr: errs.ErrUnauthenticated, msg: "malformed Basic credentials"},
		{name: "basic without a colon", c: Credentials{Authorization: basic("ops")}, wantErr: errs.ErrUnauthenticated, msg: "malformed Basic credentials"},
		{name: "signed", c: Credentials{Authorization: SignatureScheme + " AKGOOD:good", Signed: signed("/ok", nil, nil)}, user: "ops", key: "AKGOOD"},
		{name: "bad signature", c: Credentials{Authorization: SignatureScheme + " AKGOOD:bad", Signed: signed("/ok", nil, nil)}, wantErr: errs.ErrUnauthenticated, msg: "signature does not match"},
		{name: "signed request unreadable", c: Credentials{Authorization: SignatureScheme + " AKGOOD:good", Signed: signed("/ok", errBody, nil)}, wantErr: errBody},
		{name: "signed, check after verification fails", c: Credentials{Authorization: SignatureScheme + " AKGOOD:good", Signed: signed("/ok", nil, errDigest)}, wantErr: errDigest},
		{name: "signature credentials malformed", c: Credentials{Authorization: SignatureScheme + " nocolon"}, wantErr: errs.ErrUnauthenticated},
		{name: "access keys off", noKeys: true, c: Credentials{Authorization: SignatureScheme + " AKGOOD:good"}, wantErr: errs.ErrUnauthenticated, msg: "access keys are not enabled on this server"},
		{name: "unknown scheme", c: Credentials{Authorization: "Bearer xyz"}, wantErr: errs.ErrUnauthenticated, msg: "unsupported authorization scheme"},
		{name: "empty", c: Credentials{}, wantErr: errs.ErrUnauthenticated, msg: "unsupported authorization scheme"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			keys := &signatures{}
			a := Authenticator{Users: passwords{}, Keys: keys, Throttle: NewThrottle(ThrottleConfig{})}
			if tt.noKeys {
				a.Keys = nil
			}
			tt.c.Addr = "192.0.2.1:4000"
			p, err := a.Authenticate(context.Background(), tt.c)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) || !strings.Contains(fmt.Sprint(err), tt.msg) {
					t.Fatalf("error %v, want %v containing %q", err, tt.wantErr, tt.msg)
				}
				if strings.Contains(err.Error(), "secret") || strings.Contains(err.Error(), "good") {
					t.Fatalf("error %q repeats the credentials", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if p.Username != tt.user || p.AccessKeyID != tt.key || p.Addr != tt.c.Addr {
				t.Fatalf("principal %+v, want user %q key %q addr %q", p, tt.user, tt.key, tt.c.Addr)
			}
			if tt.key != "" && (keys.got.AccessKeyID != "AKGOOD" || keys.got.Signature != "good" || keys.got.Method != http.MethodPost) {
				t.Fatalf("verified %+v, want the adapter's request with the key and signature filled in", keys.got)
			}
		})
	}
}

// TestAuthenticatorThrottled: a caller locked out by failures is refused
// with an ErrTooManyRequests before its credentials are checked, by either
// scheme's throttle.
func TestAuthenticatorThrottled(t *testing.T) {
	a := Authenticator{Users: passwords{}, Keys: &signatures{}, Throttle: NewThrottle(ThrottleConfig{
		SlowAfter: 1, LockAfter: 2, Sleep: func(context.Context, time.Duration) error { return nil },
	})}
	bad := Credentials{Authorization: "Basic " + base64.StdEncoding.EncodeToString([]byte("ops:nope")), Addr: "192.0.2.1:4000"}
	for range 2 {
		if _, err := a.Authenticate(context.Background(), bad); !errors.Is(err, errs.ErrUnauthenticated) {
			t.Fatalf("failure: %v", err)
		}
	}
	good := bad
	good.Authorization = "Basic " + base64.StdEncoding.EncodeToString([]byte("ops:secret"))
	_, err := a.Authenticate(context.Background(), good)
	var te *ThrottledError
	if !errors.As(err, &te) || !errors.Is(err, errs.ErrTooManyRequests) {
		t.Fatalf("after a lockout: %v, want a *ThrottledError", err)
	}
}
