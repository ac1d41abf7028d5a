package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"
)

// restAnswer is the part of a REST envelope the tests read.
type restAnswer struct {
	Successful bool `json:"successful"`
	Status     int  `json:"status"`
	Error      struct {
		Message string `json:"message"`
	} `json:"error"`
}

func decodeAnswer(t *testing.T, body string) restAnswer {
	t.Helper()
	var a restAnswer
	if err := json.Unmarshal([]byte(body), &a); err != nil {
		t.Fatalf("not a REST envelope: %v: %.300s", err, body)
	}
	return a
}

// tlsHandshake reports whether addr completes a TLS handshake.
func tlsHandshake(addr string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	d := tls.Dialer{Config: &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}}} //nolint:gosec // G402: only whether TLS is spoken is tested
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	return c.Close()
}

// --http-plaintext: REST over plain HTTP on --http-addr, the console not
// served there, gRPC still on TLS; a warning says so.
func TestHTTPPlaintext(t *testing.T) {
	c := testConfig(t)
	c.httpPlaintext = true
	srv := startServer(t, c)
	defer srv.stop(t)
	logs := srv.logs.String()
	httpAddr, _ := logField(logs, "server started", "http_addr")
	grpcAddr, _ := logField(logs, "server started", "grpc_addr")
	if _, level := logField(logs, "--http-plaintext", "message"); level != "warn" {
		t.Errorf("no warning about --http-plaintext:\n%s", logs)
	}

	code, body, err := get("http://" + httpAddr + "/api/v2/compute/hosts")
	if err != nil {
		t.Fatalf("plain HTTP REST: %v", err)
	}
	if a := decodeAnswer(t, body); code != http.StatusUnauthorized || a.Status != http.StatusUnauthorized || a.Successful {
		t.Errorf("plain HTTP REST without credentials: %d %s, want the 401 envelope", code, body)
	}
	if err := tlsHandshake(httpAddr); err == nil {
		t.Error("the REST listener still speaks TLS")
	}
	if err := tlsHandshake(grpcAddr); err != nil {
		t.Errorf("the gRPC listener does not speak TLS: %v", err)
	}
	for _, p := range []string{"/", "/ui/login", "/ui/hosts"} {
		code, body, err := get("http://" + httpAddr + p)
		if err != nil || code != http.StatusNotFound || !strings.Contains(body, "--http-plaintext") {
			t.Errorf("console %s over plain HTTP: %d %v %.200q, want 404 naming --http-plaintext", p, code, err, body)
		}
	}
}

// Without --http-plaintext, a plain HTTP request to the HTTPS listener is
// answered with a 400 that names the https:// URL and the flag (Go's own
// answer names neither), and that is no REST envelope: nothing in
// plaintext looks like the API.
func TestPlainHTTPToHTTPSListener(t *testing.T) {
	srv := startServer(t, testConfig(t))
	defer srv.stop(t)
	httpAddr, _ := logField(srv.logs.String(), "server started", "http_addr")
	for _, p := range []string{"/api/v2/compute/hosts?page=1", "/ui/"} {
		code, body, err := get("http://" + httpAddr + p)
		if err != nil {
			t.Fatalf("GET http://%s%s: %v", httpAddr, p, err)
		}
		if code != http.StatusBadRequest || !strings.Contains(body, "--http-plaintext") ||
			!strings.Contains(body, "https://"+httpAddr+p+" ") || strings.Contains(body, `"successful"`) {
			t.Errorf("plain HTTP to the HTTPS listener: %d %q", code, body)
		}
	}
	// HTTPS is still served.
	if code, body, err := get("https://" + httpAddr + "/api/v2/compute/hosts"); err != nil || code != http.StatusUnauthorized {
		t.Errorf("HTTPS: %d %v %.200s", code, err, body)
	}
}
