package rest

import (
	"strings"
	"testing"
)

// Inputs the fuzz target found answered outside the envelope, or wrongly.
func TestHostileRequests(t *testing.T) {
	env := newTestEnv(t)
	tests := []struct {
		name   string
		req    req
		status int
		code   int
		msg    string
	}{
		// ServeMux would redirect these with an HTML body.
		{"empty segment", req{method: "GET", path: "/compute//hosts", user: "viewer"}, 404, CodeNotFound, "no such API path"},
		{"dot segment", req{method: "POST", path: "/api/v2/compute/hosts/2/agent/./stop", user: "manager"}, 404, CodeNotFound, "no such API path"},
		{"dot-dot segment", req{method: "GET", path: "/api/v2/x/../compute/hosts", user: "viewer"}, 404, CodeNotFound, "no such API path"},
		{"escaped dot-dot", req{method: "GET", path: "/compute/hosts/%2e%2e/tasks/instances", user: "viewer"}, 404, CodeNotFound, "no such API path"},
		{"unclean and no credentials", req{method: "GET", path: "/compute//hosts"}, 401, CodeUnauthenticated, "credentials"},
		// (page-1)*size would overflow and serve page 1 under another number.
		{"page past int32", req{method: "GET", path: "/compute/hosts?page=2147483648&size=2000", user: "viewer"}, 400, CodeBadRequest, "1..2147483647"},
		{"task page past int32", req{method: "GET", path: "/tasks/instances?page=9223372036854775807", user: "viewer"}, 400, CodeBadRequest, "1..2147483647"},
		{"body over the limit", req{method: "POST", path: "/compute/hosts/batchStopAgents", user: "manager", contentType: "application/json",
			body: `{"hostIds":[` + strings.Repeat("2,", 1000) + `2]}`}, 413, CodePayloadTooLarge, "exceeds 1024 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := env.do(t, tt.req)
			if r.status != tt.status {
				t.Fatalf("status %d, want %d: %s", r.status, tt.status, r.raw)
			}
			checkErrorEnvelope(t, r, tt.status)
			e := r.body["error"].(map[string]any)
			if int(e["code"].(float64)) != tt.code || !strings.Contains(e["message"].(string), tt.msg) {
				t.Errorf("error %v, want code %d and a message containing %q", e, tt.code, tt.msg)
			}
		})
	}
	if r := env.do(t, req{method: "GET", path: "/compute/hosts?page=2147483647&size=2000", user: "viewer"}); r.status != 200 {
		t.Errorf("the last page number: %d %s", r.status, r.raw)
	}
}

func TestDuplicateKey(t *testing.T) {
	for _, tt := range []struct {
		body string
		dup  string // "" when none
	}{
		{`{"hostIds":[2,3]}`, ""},
		{`{"hostIds":[2],"hostIds":[3]}`, "hostIds"},
		{`{"hostIds":[2],"HostIDs":[3]}`, "HostIDs"},
		{`{"a":"a","b":"a"}`, ""},
		{`{"a":{"b":1},"b":{"a":2}}`, ""},
		{`[{"x":1},{"x":2}]`, ""},
		{`{"a":[{"x":1,"y":[],"x":2}]}`, "x"},
		{`{"a":{"b":{"c":1,"c":1}}}`, "c"},
		{`{"a":1,"a":`, "a"},
		{`{"a":`, ""},
		{`{"s":"K","\u212a":1,"k":2}`, "k"}, // the Kelvin sign folds to k, as encoding/json matches it
	} {
		err := duplicateKey([]byte(tt.body))
		if tt.dup == "" && err != nil || tt.dup != "" && (err == nil || !strings.Contains(err.Error(), `"`+tt.dup+`"`)) {
			t.Errorf("%s: %v, want duplicate %q", tt.body, err, tt.dup)
		}
	}
}
