package rest

import (
	"errors"
	"net/http"

	"agentplane/server/internal/errs"
)

// healthPaths are where health is served, without credentials.
var healthPaths = map[string]bool{"/health": true, apiPrefix + "/health": true}

// healthJSON is the health answer's data.
type healthJSON struct {
	Status  string `json:"status"`  // SERVING or NOT_SERVING
	Store   string `json:"store"`   // WRITABLE, FULL or UNAVAILABLE
	Message string `json:"message"` // why not serving; empty when serving
}

// health: GET /health (or /api/v2/health), no credentials → 200 with
// status SERVING and store WRITABLE; 503 with status NOT_SERVING, store
// FULL or UNAVAILABLE and the reason in message while the data store cannot
// be written. It costs no store access: the store tracks its writability
// itself (its writes' outcomes, and a probe every few seconds).
func (s *server) health(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		s.methodNotAllowed([]string{http.MethodGet, http.MethodHead})(w, r)
		return
	}
	h, status := healthJSON{Status: "SERVING", Store: "WRITABLE"}, http.StatusOK
	if err := s.cfg.Store.Writable(); err != nil {
		h, status = healthJSON{Status: "NOT_SERVING", Store: "UNAVAILABLE", Message: errs.StoreMessage(err)}, http.StatusServiceUnavailable
		if se := (*errs.StoreError)(nil); errors.As(err, &se) && se.Full {
			h.Store = "FULL"
		}
	}
	st := stateFrom(r.Context())
	now := s.cfg.Now()
	s.writeJSON(w, r, status, envelope{
		Data: h, Successful: status == http.StatusOK, Timestamp: formatTime(now), Duration: now.Sub(st.start).Milliseconds(),
		Status: status, TraceID: st.traceID, Server: st.server,
	})
}
