package rest

import (
	"context"
	"fmt"
	"net/http"
	"testing"

	"agentplane/server/internal/audit"
	"agentplane/server/internal/errs"
)

// TestAnsweredOutcome: each error is answered with its status and code, and
// recorded with the outcome of what the answer stands for, with the message
// the client was told.
func TestAnsweredOutcome(t *testing.T) {
	for _, tt := range []struct {
		name    string
		err     error
		status  int
		code    int
		outcome string
	}{
		{"aborted", fmt.Errorf("replaced by a newer stream: %w", errs.ErrAborted), http.StatusConflict, CodeConflict, audit.OutcomeConflict},
		{"conflict", fmt.Errorf("held: %w", errs.ErrConflict), http.StatusConflict, CodeConflict, audit.OutcomeConflict},
		{"no route", fmt.Errorf("PUT /x: %w", errRouteNotFound), http.StatusNotFound, CodeNotFound, audit.OutcomeNotFound},
		{"method", &methodNotAllowedError{allow: "POST"}, http.StatusMethodNotAllowed, CodeMethodNotAllowed, audit.OutcomeMethodNotAllowed},
		{"media", fmt.Errorf("content type %q: %w", "text/plain", errUnsupportedMediaType), http.StatusUnsupportedMediaType, CodeUnsupportedMedia, audit.OutcomeUnsupportedMedia},
		{"too large", &http.MaxBytesError{Limit: 10}, http.StatusRequestEntityTooLarge, CodePayloadTooLarge, audit.OutcomeResourceExhausted},
		{"timed out", fmt.Errorf("stopping: %w", context.DeadlineExceeded), http.StatusServiceUnavailable, CodeUnavailable, audit.OutcomeUnavailable},
		{"canceled", fmt.Errorf("stopping: %w", context.Canceled), statusClientClosedRequest, CodeUnavailable, audit.OutcomeCanceled},
		{"internal", fmt.Errorf("boom"), http.StatusInternalServerError, CodeInternal, audit.OutcomeInternal},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := apiErrorOf(tt.err, "")
			if e.Status != tt.status || e.Code != tt.code {
				t.Fatalf("%d %d, want %d %d", e.Status, e.Code, tt.status, tt.code)
			}
			a := &answer{}
			ctx := context.WithValue(context.Background(), answerKey{}, a)
			recordAnswer(ctx, &answered{msg: e.Message, kind: e.Kind})
			if o, msg := a.outcome(e.Status); o != tt.outcome || msg != e.Message {
				t.Fatalf("recorded %s %q, want %s %q", o, msg, tt.outcome, e.Message)
			}
		})
	}
}
