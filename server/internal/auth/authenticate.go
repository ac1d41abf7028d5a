package auth

import (
	"context"
	"encoding/base64"
	"fmt"
	"strings"

	"agentplane/server/internal/errs"
)

// PasswordChecker checks a user's password (Service).
type PasswordChecker interface {
	Authenticate(ctx context.Context, username, password string) (Principal, error)
}

// SignatureVerifier checks an access-key signature (AccessKeyService).
type SignatureVerifier interface {
	Verify(ctx context.Context, r *SignedRequest) (Principal, error)
}

// Authenticator decides who makes a call, for both adapters: they extract
// the call's Credentials from their transport (HTTP headers, gRPC metadata)
// and call Authenticate.
type Authenticator struct {
	Users PasswordChecker
	// Keys verifies signatures; nil: signed calls are refused.
	Keys SignatureVerifier
	// Throttle slows down and locks out callers that keep failing; required.
	Throttle *Throttle
}

// Credentials are what a call presented, as its adapter extracted them.
type Credentials struct {
	// Authorization is the call's one authorization value:
	// "Basic base64(user:password)", or SignatureScheme followed by
	// "AK:Signature" (ParseSignatureCredentials).
	Authorization string
	// Addr is the caller's network address, the throttle's second key.
	Addr string
	// Signed returns what a signature covers, for a signed call only, once
	// the throttle lets the attempt through: the request without
	// AccessKeyID and Signature (Authenticate fills them), and a check to
	// run once the signature is verified (nil: none). An error from either
	// refuses the call with it.
	Signed func(ctx context.Context) (r *SignedRequest, verified func() error, err error)
}

// Authenticate returns the caller of a call that presented c, under the
// Throttle (keyed by the claimed username or access key id and by c.Addr,
// signatures apart from passwords; a locked-out caller gets an
// ErrTooManyRequests *ThrottledError before anything is checked):
//
//   - "Basic": a username and password (Users);
//   - SignatureScheme: a call signed with an access key (Keys.Verify on
//     what c.Signed returns; see StringToSign).
//
// Every refusal is an ErrUnauthenticated unless the throttle or c.Signed
// says otherwise. No error repeats a password, a signature or the
// authorization value.
func (a *Authenticator) Authenticate(ctx context.Context, c Credentials) (Principal, error) {
	scheme, cred, _ := strings.Cut(c.Authorization, " ")
	switch {
	case strings.EqualFold(scheme, "Basic"):
		user, pass, err := basicCredentials(cred)
		if err != nil {
			return a.Throttle.Do(ctx, "", c.Addr, refuse(err))
		}
		return a.Throttle.Do(ctx, user, c.Addr, func(ctx context.Context) (Principal, error) {
			return a.Users.Authenticate(ctx, user, pass)
		})
	case strings.EqualFold(scheme, SignatureScheme):
		if a.Keys == nil {
			return Principal{}, fmt.Errorf("access keys are not enabled on this server: %w", errs.ErrUnauthenticated)
		}
		ak, sig, err := ParseSignatureCredentials(cred)
		if err != nil {
			return a.Throttle.Do(ctx, "", c.Addr, refuse(err))
		}
		return a.Throttle.DoSigned(ctx, ak, c.Addr, func(ctx context.Context) (Principal, error) {
			r, verified, err := c.Signed(ctx)
			if err != nil {
				return Principal{}, err
			}
			r.AccessKeyID, r.Signature = ak, sig
			p, err := a.Keys.Verify(ctx, r)
			if err == nil && verified != nil {
				err = verified()
			}
			return p, err
		})
	}
	return Principal{}, fmt.Errorf("unsupported authorization scheme; use HTTP Basic or %s: %w", SignatureScheme, errs.ErrUnauthenticated)
}

// refuse is a verification that fails with err.
func refuse(err error) func(context.Context) (Principal, error) {
	return func(context.Context) (Principal, error) { return Principal{}, err }
}

// basicCredentials decodes the credentials of a Basic authorization value
// (surrounding spaces ignored).
func basicCredentials(enc string) (user, pass string, err error) {
	raw, derr := base64.StdEncoding.DecodeString(strings.TrimSpace(enc))
	if derr != nil {
		return "", "", fmt.Errorf("malformed Basic credentials: %w", errs.ErrUnauthenticated)
	}
	user, pass, ok := strings.Cut(string(raw), ":")
	if !ok {
		return "", "", fmt.Errorf("malformed Basic credentials: %w", errs.ErrUnauthenticated)
	}
	return user, pass, nil
}
