package rest

import (
	"encoding/json"
	"net/http"
	"strconv"
	"time"
)

// TimeLayout is OCP's time format: milliseconds and a numeric zone offset,
// e.g. 2021-09-03T14:27:59.694+08:00. Times are shown in the server's zone.
const TimeLayout = "2006-01-02T15:04:05.000-07:00"

func formatTime(t time.Time) string { return t.In(time.Local).Format(TimeLayout) }

// optTime returns nil for the zero time, so that it renders as null (or is
// omitted with omitempty).
func optTime(t time.Time) *string {
	if t.IsZero() {
		return nil
	}
	s := formatTime(t)
	return &s
}

// envelope is OCP's success response.
type envelope struct {
	Data       any    `json:"data"`
	Successful bool   `json:"successful"`
	Timestamp  string `json:"timestamp"`
	Duration   int64  `json:"duration"` // milliseconds
	Status     int    `json:"status"`
	TraceID    string `json:"traceId"`
	Server     string `json:"server"`
}

// errorEnvelope is OCP's error response.
type errorEnvelope struct {
	Successful bool      `json:"successful"`
	Status     int       `json:"status"`
	Timestamp  string    `json:"timestamp"`
	Duration   int64     `json:"duration"`
	TraceID    string    `json:"traceId"`
	Server     string    `json:"server"`
	Error      errorBody `json:"error"`
}

// errorBody is the "error" object of OCP's error response.
type errorBody struct {
	Code         int        `json:"code"`
	Message      string     `json:"message"`
	DebugMessage string     `json:"debugMessage"`
	Target       string     `json:"target"`
	SubErrors    []subError `json:"subErrors"`
}

// subError details one rejected field; none are produced yet.
type subError struct {
	Object        string `json:"object"`
	Field         string `json:"field"`
	RejectedValue any    `json:"rejectedValue"`
	Message       string `json:"message"`
}

// writeData writes a 200 success envelope around data.
func (s *server) writeData(w http.ResponseWriter, r *http.Request, data any) {
	st := stateFrom(r.Context())
	now := s.cfg.Now()
	s.writeJSON(w, r, http.StatusOK, envelope{
		Data:       data,
		Successful: true,
		Timestamp:  formatTime(now),
		Duration:   now.Sub(st.start).Milliseconds(),
		Status:     http.StatusOK,
		TraceID:    st.traceID,
		Server:     st.server,
	})
}

// writeError maps err (see apiErrorOf) and writes the error envelope.
// target names the request part the error is about, if known.
func (s *server) writeError(w http.ResponseWriter, r *http.Request, err error, target string) {
	st := stateFrom(r.Context())
	e := apiErrorOf(err, target)
	recordAnswer(r.Context(), &answered{msg: e.Message, kind: e.Kind})
	if e.Status >= http.StatusInternalServerError {
		ev := st.log.Error()
		if r.Context().Err() != nil {
			ev = st.log.Debug() // the client went away
		}
		ev.Err(err).Int("status", e.Status).Msg("request failed")
	} else if e.Message != err.Error() {
		// The client was told a sentence; the chain behind it is logged.
		st.log.Info().Err(err).Int("status", e.Status).Msg("request refused")
	}
	switch e.Status {
	case http.StatusUnauthorized:
		w.Header().Set("WWW-Authenticate", `Basic realm="`+realm+`"`)
	case http.StatusMethodNotAllowed:
		w.Header().Set("Allow", e.Allow)
	case http.StatusTooManyRequests:
		w.Header().Set("Retry-After", strconv.FormatInt(e.RetryAfter, 10))
	}
	now := s.cfg.Now()
	s.writeJSON(w, r, e.Status, errorEnvelope{
		Successful: false,
		Status:     e.Status,
		Timestamp:  formatTime(now),
		Duration:   now.Sub(st.start).Milliseconds(),
		TraceID:    st.traceID,
		Server:     st.server,
		Error: errorBody{
			Code:         e.Code,
			Message:      e.Message,
			DebugMessage: e.DebugMessage,
			Target:       e.Target,
			SubErrors:    []subError{},
		},
	})
}

func (s *server) writeJSON(w http.ResponseWriter, r *http.Request, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		// Only a programming error (an unmarshalable type) gets here.
		stateFrom(r.Context()).log.Error().Err(err).Msg("encoding response")
		status = http.StatusInternalServerError
		recordAnswer(r.Context(), &answered{msg: "internal server error"})
		b = []byte(`{"successful":false,"status":500,"error":{"code":10500,"message":"internal server error","subErrors":[]}}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}
