package rest

import (
	"fmt"
	"net/http"
	"time"

	"agentplane/server/internal/enroll"
	"agentplane/server/internal/errs"
)

// enrollRoutes are the routes of agent identity: join tokens and host revocation.
func (s *server) enrollRoutes() []route {
	if s.cfg.Enroll == nil {
		return nil
	}
	return []route{
		{http.MethodPost, "/agent/joinTokens", s.createJoinToken},
		{http.MethodPost, "/compute/hosts/{hostId}/revoke", s.revokeHost},
	}
}

// joinTokenRequest is POST /agent/joinTokens' body; both fields optional,
// and so is the body.
type joinTokenRequest struct {
	HostName   string `json:"hostName"`   // bind the token to this host name; "" for any
	TTLSeconds int64  `json:"ttlSeconds"` // 0: one hour; at most 24 hours
}

// joinTokenJSON is the created token, shown once.
type joinTokenJSON struct {
	Token      string  `json:"token"`
	HostName   string  `json:"hostName"`
	ExpireTime *string `json:"expireTime"`
}

// createJoinToken: POST /agent/joinTokens {"hostName"?, "ttlSeconds"?} →
// {token, hostName, expireTime}. ADMIN.
func (s *server) createJoinToken(w http.ResponseWriter, r *http.Request) {
	var req joinTokenRequest
	if r.ContentLength != 0 {
		if err := decodeJSON(r, &req); err != nil {
			s.writeError(w, r, err, "body")
			return
		}
	}
	if maxTTL := int64(enroll.MaxTokenTTL / time.Second); req.TTLSeconds < 0 || req.TTLSeconds > maxTTL {
		s.writeError(w, r, fmt.Errorf("ttlSeconds must be 1..%d (0 or absent: 3600), got %d: %w", maxTTL, req.TTLSeconds, errs.ErrInvalidArgument), "ttlSeconds")
		return
	}
	t, err := s.cfg.Enroll.CreateJoinToken(r.Context(), req.HostName, time.Duration(req.TTLSeconds)*time.Second)
	if err != nil {
		s.writeError(w, r, err, "")
		return
	}
	w.Header().Set("Cache-Control", "no-store") // the secret is in the body
	s.writeData(w, r, joinTokenJSON{Token: t.Token, HostName: t.HostName, ExpireTime: optTime(t.ExpireTime)})
}

// revokeHost: POST /compute/hosts/{hostId}/revoke → the host, revoked. No
// body, as hostOp. ADMIN.
func (s *server) revokeHost(w http.ResponseWriter, r *http.Request) {
	id, err := pathID(r, paramHostID)
	if err != nil {
		s.writeError(w, r, err, paramHostID)
		return
	}
	if err := ignoreBody(r); err != nil {
		s.writeError(w, r, err, "body")
		return
	}
	h, err := s.cfg.Enroll.RevokeHost(r.Context(), id)
	if err != nil {
		s.writeError(w, r, err, paramHostID)
		return
	}
	s.writeData(w, r, toHostJSON(h))
}
