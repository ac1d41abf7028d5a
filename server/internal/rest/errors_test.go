package rest

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"

	"github.com/rs/zerolog"

	"agentplane/server/internal/errs"
)

// TestAPIErrorStore: a data store failure is a 503 with code 10503 naming
// the cause in the vocabulary's words, never the driver's text.
func TestAPIErrorStore(t *testing.T) {
	tests := []struct {
		err  error
		want string
	}{
		{fmt.Errorf("creating task: %w", &errs.StoreError{Full: true, Err: errors.New("database or disk is full (13)")}),
			"the data store is full"},
		{fmt.Errorf("creating task: %w", &errs.StoreError{Err: errors.New("attempt to write a readonly database (8)")}),
			"the data store is unavailable"},
	}
	for _, tt := range tests {
		e := apiErrorOf(tt.err, "")
		if e.Status != http.StatusServiceUnavailable || e.Code != CodeUnavailable || e.Message != tt.want {
			t.Errorf("%v: got %d %d %q, want 503 %d %q", tt.err, e.Status, e.Code, e.Message, CodeUnavailable, tt.want)
		}
	}
}

// storeHealth is a StoreHealth whose answer the test sets.
type storeHealth struct{ err atomic.Pointer[error] }

func (h *storeHealth) Writable() error {
	if p := h.err.Load(); p != nil {
		return *p
	}
	return nil
}

// TestHealth: GET /health and /api/v2/health answer without credentials:
// 200 SERVING while the store can be written, 503 NOT_SERVING naming the
// cause while it cannot.
func TestHealth(t *testing.T) {
	sh := &storeHealth{}
	srv := httptest.NewServer(NewHandler(Config{Hosts: &fakeHosts{}, Tasks: &fakeTasks{}, Users: fakeUsers{}, Log: zerolog.Nop(), Store: sh}))
	defer srv.Close()
	get := func(path string) (int, healthJSON) {
		t.Helper()
		r, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer r.Body.Close()
		var env struct {
			Data healthJSON `json:"data"`
		}
		if err := json.NewDecoder(r.Body).Decode(&env); err != nil {
			t.Fatal(err)
		}
		return r.StatusCode, env.Data
	}
	for _, path := range []string{"/health", "/api/v2/health"} {
		if st, h := get(path); st != http.StatusOK || h.Status != "SERVING" || h.Store != "WRITABLE" {
			t.Errorf("%s while writable: %d %+v", path, st, h)
		}
	}
	var full error = &errs.StoreError{Full: true, Err: errors.New("database or disk is full (13)")}
	sh.err.Store(&full)
	if st, h := get("/health"); st != http.StatusServiceUnavailable || h.Status != "NOT_SERVING" || h.Store != "FULL" ||
		h.Message != "the data store is full" {
		t.Errorf("/health on a full store: %d %+v", st, h)
	}
}
