package rest

import (
	"net/http"
	"time"
)

// Observer is told of each request once it is answered, for metrics: its
// method as sent, the route template that served it (the mux pattern, e.g.
// "/api/v2/compute/hosts/{hostId}/agent/stop"; a health path; "" when no
// route did, as for a request refused before routing), the status code and
// the time taken. It must return at once.
type Observer interface {
	ObserveRequest(method, route string, code int, took time.Duration)
}

// observe reports r, answered with code, to the Observer. The mux sets
// r.Pattern on the request it routed, which is r.
func (s *server) observe(r *http.Request, code int, start time.Time) {
	if s.cfg.Observer == nil {
		return
	}
	route := r.Pattern
	if route == "" && healthPaths[r.URL.Path] {
		route = r.URL.Path
	}
	if code == 0 {
		code = http.StatusOK
	}
	s.cfg.Observer.ObserveRequest(r.Method, route, code, s.cfg.Now().Sub(start))
}
