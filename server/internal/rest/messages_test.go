package rest

import (
	"fmt"
	"net/http"
	"testing"
)

// TestMessagesAreSentences: a refusal whose error carries a sentence for its
// user (errs.WithMessage) is answered with that sentence alone, not with the
// chain of what the server was doing, which only the log gets.
func TestMessagesAreSentences(t *testing.T) {
	env := newTestEnv(t)
	for _, tt := range []struct {
		name   string
		req    req
		status int
		want   string
	}{
		{"wrong password", req{method: "GET", path: "/compute/hosts", user: "nobody"}, http.StatusUnauthorized,
			"Invalid username or password."},
		{"busy host", req{method: "POST", path: "/compute/hosts/409/agent/restart", user: "manager"}, http.StatusConflict,
			fmt.Sprintf("Host 409 already has an agent operation in progress (task %d); wait for it to end or cancel it.", heldBy)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := env.do(t, tt.req)
			if r.status != tt.status {
				t.Fatalf("status = %d, want %d; body %s", r.status, tt.status, r.raw)
			}
			e, _ := r.body["error"].(map[string]any)
			if msg, _ := e["message"].(string); msg != tt.want {
				t.Errorf("error.message = %q, want %q", msg, tt.want)
			}
		})
	}
}
