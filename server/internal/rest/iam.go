package rest

import (
	"net/http"

	"agentplane/server/internal/audit"
	"agentplane/server/internal/auth"
)

// paramAccessKeyID is the path parameter naming an access key.
const paramAccessKeyID = "accessKeyId"

// iamRoutes are the routes of access keys; none when Config.AccessKeys is
// nil.
func (s *server) iamRoutes() []route {
	if s.cfg.AccessKeys == nil {
		return nil
	}
	return []route{
		{http.MethodPost, "/iam/accessKeys", s.createAccessKey},
		{http.MethodGet, "/iam/accessKeys", s.listAccessKeys},
		{http.MethodDelete, "/iam/accessKeys/{accessKeyId}", s.deleteAccessKey},
	}
}

// accessKeyJSON is an access key as the API shows it: never its secret,
// except in the answer that creates it.
type accessKeyJSON struct {
	AccessKeyID  string  `json:"accessKeyId"`
	Username     string  `json:"username"`
	CreateTime   *string `json:"createTime"`
	LastUsedTime *string `json:"lastUsedTime"` // null when never used
	Secret       string  `json:"secret,omitempty"`
}

func toAccessKeyJSON(k auth.AccessKey) accessKeyJSON {
	return accessKeyJSON{
		AccessKeyID:  k.ID,
		Username:     k.Username,
		CreateTime:   optTime(k.CreateTime),
		LastUsedTime: optTime(k.LastUsedTime),
	}
}

// createAccessKeyRequest is the optional body of POST /iam/accessKeys.
type createAccessKeyRequest struct {
	Username string `json:"username"` // "" or absent: the caller
}

// createAccessKey: POST /iam/accessKeys [{"username"}] → the new key with
// its secret, which is never shown again. No body, or no username, means
// the caller; another user needs ADMIN.
func (s *server) createAccessKey(w http.ResponseWriter, r *http.Request) {
	var req createAccessKeyRequest
	if r.ContentLength != 0 {
		if err := decodeJSON(r, &req); err != nil {
			s.writeError(w, r, err, "body")
			return
		}
	}
	k, secret, err := s.cfg.AccessKeys.CreateAccessKey(r.Context(), req.Username)
	if err != nil {
		s.writeError(w, r, err, "username")
		return
	}
	audit.SetTarget(r.Context(), k.ID)
	out := toAccessKeyJSON(k)
	out.Secret = secret
	w.Header().Set("Cache-Control", "no-store")
	s.writeData(w, r, out)
}

// listAccessKeys: GET /iam/accessKeys?username= → the keys without
// secrets, oldest first, in one page: the caller's, or username's (ADMIN
// for another user); an ADMIN without username gets every user's.
func (s *server) listAccessKeys(w http.ResponseWriter, r *http.Request) {
	ks, err := s.cfg.AccessKeys.ListAccessKeys(r.Context(), r.URL.Query().Get("username"))
	if err != nil {
		s.writeError(w, r, err, "username")
		return
	}
	out := pageJSON[accessKeyJSON]{Contents: make([]accessKeyJSON, 0, len(ks)), Page: newPageRef(int64(len(ks)), 1, max(len(ks), 1))}
	for _, k := range ks {
		out.Contents = append(out.Contents, toAccessKeyJSON(k))
	}
	s.writeData(w, r, out)
}

// deleteAccessKey: DELETE /iam/accessKeys/{accessKeyId} → null. Requests
// the key signs are refused from then on. Another user's key needs ADMIN
// (without it, it is a 404 like a key that does not exist).
func (s *server) deleteAccessKey(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue(paramAccessKeyID)
	audit.SetTarget(r.Context(), id[:min(len(id), 64)])
	if err := s.cfg.AccessKeys.DeleteAccessKey(r.Context(), id); err != nil {
		s.writeError(w, r, err, paramAccessKeyID)
		return
	}
	s.writeData(w, r, nil)
}
