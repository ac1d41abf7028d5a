package rest

import (
	"net/http"

	"agentplane/server/auth"
	"agentplane/server/host"
)

// Path parameters; also the error.target of errors about them.
const (
	paramHostID = "hostId"
	paramTaskID = targetTaskID
)

// List paging: page is 1-based.
const (
	defaultPageSize = 20
	maxPageSize     = 2000
)

// stopAgent: POST /compute/hosts/{hostId}/agent/stop → the created task.
// The call has no body; one may be sent only as application/json, and is
// ignored.
func (s *server) stopAgent(w http.ResponseWriter, r *http.Request) {
	id, err := pathID(r, paramHostID)
	if err != nil {
		s.writeError(w, r, err, paramHostID)
		return
	}
	if r.ContentLength != 0 {
		if err := requireJSON(r); err != nil {
			s.writeError(w, r, err, "body")
			return
		}
	}
	t, err := s.cfg.Hosts.StopAgent(r.Context(), id)
	if err != nil {
		s.writeError(w, r, err, paramHostID)
		return
	}
	s.writeData(w, r, toTaskJSON(t))
}

// getHost: GET /compute/hosts/{hostId} → the host.
func (s *server) getHost(w http.ResponseWriter, r *http.Request) {
	id, err := pathID(r, paramHostID)
	if err != nil {
		s.writeError(w, r, err, paramHostID)
		return
	}
	h, err := s.cfg.Hosts.GetHost(r.Context(), id)
	if err != nil {
		s.writeError(w, r, err, paramHostID)
		return
	}
	s.writeData(w, r, toHostJSON(h))
}

// listHosts: GET /compute/hosts?page=&size= → a page of hosts.
func (s *server) listHosts(w http.ResponseWriter, r *http.Request) {
	page, err := queryInt(r, "page", 1, 1, maxInt)
	if err != nil {
		s.writeError(w, r, err, "page")
		return
	}
	size, err := queryInt(r, "size", defaultPageSize, 1, maxPageSize)
	if err != nil {
		s.writeError(w, r, err, "size")
		return
	}
	p, err := s.cfg.Hosts.ListHosts(r.Context(), host.ListQuery{Page: page, Size: size})
	if err != nil {
		s.writeError(w, r, err, "")
		return
	}
	out := pageJSON[hostJSON]{Contents: make([]hostJSON, 0, len(p.Hosts)), Page: newPageRef(p.Total, page, size)}
	for i := range p.Hosts {
		out.Contents = append(out.Contents, toHostJSON(&p.Hosts[i]))
	}
	s.writeData(w, r, out)
}

// getTask: GET /tasks/instances/{taskInstanceId} → the task.
func (s *server) getTask(w http.ResponseWriter, r *http.Request) {
	id, err := pathID(r, paramTaskID)
	if err != nil {
		s.writeError(w, r, err, paramTaskID)
		return
	}
	t, err := s.cfg.Tasks.GetTask(r.Context(), id)
	if err != nil {
		s.writeError(w, r, err, paramTaskID)
		return
	}
	s.writeData(w, r, toTaskJSON(t))
}

// createUser: POST /iam/users {"username","password","roles"} → the user.
// The user service checks that the caller is ADMIN and validates the values.
func (s *server) createUser(w http.ResponseWriter, r *http.Request) {
	var req createUserRequest
	if err := decodeJSON(r, &req); err != nil {
		s.writeError(w, r, err, "body")
		return
	}
	roles := make([]auth.Role, 0, len(req.Roles))
	for _, name := range req.Roles {
		roles = append(roles, auth.Role(name))
	}
	u, err := s.cfg.Users.CreateUser(r.Context(), req.Username, req.Password, roles)
	if err != nil {
		s.writeError(w, r, err, "")
		return
	}
	s.writeData(w, r, toUserJSON(u))
}
