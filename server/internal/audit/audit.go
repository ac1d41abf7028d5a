// Package audit owns the audit record: who called what, when, on which host
// and task, and how it ended. The adapters open a Note for every mutating
// call and record it when the call ends; domain code annotates the Note in
// the call's context with what it acted on (SetHost, SetTask, SetTarget),
// and the authentication step with who called (SetPrincipal).
//
// The package imports no other server package but errs and paging, so that
// any of them (auth included) may annotate a Note.
package audit

import (
	"context"
	"sync"
	"time"
)

// Event is one recorded call.
type Event struct {
	ID          int64
	Time        time.Time
	Username    string // the user, or "agent:<host name>" for an agent's enrollment
	AccessKeyID string // the access key that signed the call; empty for a password
	SourceAddr  string
	Operation   string // e.g. "POST /compute/hosts/{hostId}/agent/stop"
	HostID      int64
	TaskID      int64
	Target      string // another object acted on: an access key id, a user name
	Outcome     string // "OK", or the error kind, e.g. "PERMISSION_DENIED"
	Message     string // the error message when it failed
}

// Note collects what a call acted on, and who made it, while it runs. Its
// methods are safe for concurrent use and do nothing on a nil Note.
type Note struct {
	mu     sync.Mutex
	hostID int64
	taskID int64
	target string
	actor  string
	// Set by the authentication step (SetPrincipal).
	username    string
	accessKeyID string
	addr        string
}

type noteKey struct{}

// WithNote returns ctx carrying a new Note, and the Note.
func WithNote(ctx context.Context) (context.Context, *Note) {
	n := &Note{}
	return context.WithValue(ctx, noteKey{}, n), n
}

// From returns the Note in ctx, or nil.
func From(ctx context.Context) *Note {
	n, _ := ctx.Value(noteKey{}).(*Note)
	return n
}

// SetHost records the host the call acts on.
func SetHost(ctx context.Context, id int64) { From(ctx).set(func(n *Note) { n.hostID = id }) }

// SetTask records the task the call acts on or created.
func SetTask(ctx context.Context, id int64) { From(ctx).set(func(n *Note) { n.taskID = id }) }

// SetTarget records another object the call acts on.
func SetTarget(ctx context.Context, target string) {
	From(ctx).set(func(n *Note) { n.target = target })
}

// SetActor records who acts when it is not an authenticated user (an agent
// enrolling: "agent:<host name>").
func SetActor(ctx context.Context, actor string) { From(ctx).set(func(n *Note) { n.actor = actor }) }

// SetPrincipal records who makes the call, as the authentication step
// established it: the user, the access key that signed the call (empty for a
// password) and the caller's address. The adapters open the Note outside
// authentication, so that refused calls are recorded too, and so do not see
// the principal that authentication puts in the context: authentication
// calls SetPrincipal once the caller is known. For a call that fails it, the
// adapter records the connection's address and no user.
func SetPrincipal(ctx context.Context, username, accessKeyID, addr string) {
	From(ctx).set(func(n *Note) { n.username, n.accessKeyID, n.addr = username, accessKeyID, addr })
}

func (n *Note) set(f func(*Note)) {
	if n == nil {
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	f(n)
}

// Fill copies what the Note collected into e: the host, task and target it
// set; the principal's fields where SetPrincipal gave them (so its address
// replaces the one the adapter saw); the actor only when e still has no
// username.
func (n *Note) Fill(e *Event) {
	if n == nil {
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	e.HostID, e.TaskID, e.Target = n.hostID, n.taskID, n.target
	if n.username != "" {
		e.Username, e.AccessKeyID = n.username, n.accessKeyID
	}
	if n.addr != "" {
		e.SourceAddr = n.addr
	}
	if e.Username == "" {
		e.Username = n.actor
	}
}
