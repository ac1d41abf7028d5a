package rest

import (
	"errors"
	"fmt"
	"net/http"
	"testing"

	"agentplane/server/errs"
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
