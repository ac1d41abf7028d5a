package console

import (
	"encoding/base64"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"

	"agentplane/server/internal/audit"
	"agentplane/server/internal/auth"
	"agentplane/server/internal/errs"
)

// signInData is the sign-in page's data.
type signInData struct {
	pageData
	Next     string
	Username string
}

// signInPage: GET /ui/login?next=&expired= → the form; with expired=1 it
// says that the session expired.
func (c *Console) signInPage(w http.ResponseWriter, r *http.Request) {
	d := signInData{pageData: c.data(nil, "Sign in", ""), Next: safeNext(r.URL.Query().Get("next"))}
	if r.URL.Query().Get("expired") == "1" {
		d.Error = "Your session has expired. Sign in again."
	}
	w.Header().Set("Cache-Control", "no-store")
	c.render(w, r, http.StatusOK, "signin", d)
}

// signIn: POST /ui/login (username, password, next) → a session cookie and
// a redirect to next; or the form again with why not. The password is
// checked as an HTTP Basic one would be, by the same Authenticator under
// the same Throttle. Only a form from this origin is accepted.
func (c *Console) signIn(w http.ResponseWriter, r *http.Request) {
	ctx, note := audit.WithNote(r.Context())
	r = r.WithContext(ctx)
	var err error
	defer func() { c.record(r, note, err) }()
	d := signInData{pageData: c.data(nil, "Sign in", ""), Next: safeNext(r.PostFormValue("next")), Username: r.PostFormValue("username")}
	w.Header().Set("Cache-Control", "no-store")
	if !sameOrigin(r) {
		err = errs.New(errs.ErrPermissionDenied, msgOrigin)
		d.Error = msgOrigin
		c.render(w, r, http.StatusForbidden, "signin", d)
		return
	}
	audit.SetPrincipal(ctx, d.Username, "", r.RemoteAddr)
	basic := base64.StdEncoding.EncodeToString([]byte(d.Username + ":" + r.PostFormValue("password")))
	p, err := c.auth.Authenticate(ctx, auth.Credentials{Authorization: "Basic " + basic, Addr: r.RemoteAddr})
	if err != nil {
		d.Error = signInMessage(err)
		var th *auth.ThrottledError
		if errors.As(err, &th) {
			w.Header().Set("Retry-After", retryAfter(th))
		}
		c.render(w, r, statusOf(err), "signin", d)
		return
	}
	c.ss.write(w, c.ss.start(p))
	next := d.Next
	if next == "" {
		next = prefix + "/hosts"
	}
	http.Redirect(w, r, next, http.StatusSeeOther)
}

// signInMessage says why a sign-in failed, without saying whether the user
// exists.
func signInMessage(err error) string {
	var th *auth.ThrottledError
	if errors.As(err, &th) {
		return "Too many failed sign-ins: wait " + retryAfter(th) + " seconds, then try again."
	}
	if errors.Is(err, errs.ErrUnauthenticated) {
		return "Wrong username or password."
	}
	return userMessage(err)
}

// signOut: POST /ui/logout (CSRF field) → the cookie cleared and the
// sign-in page.
func (c *Console) signOut(w http.ResponseWriter, r *http.Request) error {
	c.ss.clear(w)
	http.Redirect(w, r, prefix+"/login", http.StatusSeeOther)
	return nil
}

// retryAfter is a throttle's wait in whole seconds.
func retryAfter(th *auth.ThrottledError) string {
	return strconv.FormatInt(int64(th.RetryAfter()/time.Second), 10)
}

// safeNext returns next when it is a console path of this server (so a
// sign-in never sends the user elsewhere), else "".
func safeNext(next string) string {
	if !strings.HasPrefix(next, prefix+"/") || strings.HasPrefix(next, "//") || strings.ContainsAny(next, "\\\r\n") ||
		strings.HasPrefix(next, prefix+"/login") {
		return ""
	}
	return next
}
