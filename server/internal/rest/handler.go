package rest

import (
	"context"
	"net/http"

	"agentplane/server/internal/auth"
	"agentplane/server/internal/host"
	"agentplane/server/internal/paging"
	"agentplane/server/internal/task"
)

// Path parameters; also the error.target of errors about them.
const (
	paramHostID    = "hostId"
	paramTaskID    = targetTaskID
	paramSubtaskID = targetSubtaskID
)

// hostOp serves POST /compute/hosts/{hostId}/agent/{stop,start,restart}
// → the created task. The call has no body; one may be sent only as
// application/json, and is ignored. An Idempotency-Key header makes a
// repeated call return the task the first one created.
func (s *server) hostOp(op func(ctx context.Context, hostID int64) (*task.Task, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id, err := pathID(r, paramHostID)
		if err != nil {
			s.writeError(w, r, err, paramHostID)
			return
		}
		if err := ignoreBody(r); err != nil {
			s.writeError(w, r, err, "body")
			return
		}
		ctx, err := withIdempotencyKey(r)
		if err != nil {
			s.writeError(w, r, err, headerIdempotencyKey)
			return
		}
		t, err := op(ctx, id)
		if err != nil {
			s.writeError(w, r, err, paramHostID)
			return
		}
		s.writeData(w, r, toTaskJSON(t))
	}
}

// batchOp serves POST /compute/hosts/{batchStopAgents,batchStartAgents,batchRestartAgents}
// {"hostIds":[...]} → the created task. The host service validates the ids
// (1..agentop.MaxBatch, 10,000, distinct positive ids of known hosts).
// Idempotency-Key as hostOp.
func (s *server) batchOp(op func(ctx context.Context, hostIDs []int64) (*task.Task, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var req batchRequest
		if err := decodeJSON(r, &req); err != nil {
			s.writeError(w, r, err, "body")
			return
		}
		ctx, err := withIdempotencyKey(r)
		if err != nil {
			s.writeError(w, r, err, headerIdempotencyKey)
			return
		}
		t, err := op(ctx, req.HostIDs)
		if err != nil {
			s.writeError(w, r, err, "hostIds")
			return
		}
		s.writeData(w, r, toTaskJSON(t))
	}
}

// getHostAgent: GET /compute/hosts/{hostId}/agent → the host's OCP Agent.
func (s *server) getHostAgent(w http.ResponseWriter, r *http.Request) {
	id, err := pathID(r, paramHostID)
	if err != nil {
		s.writeError(w, r, err, paramHostID)
		return
	}
	a, err := s.cfg.Hosts.GetHostAgent(r.Context(), id)
	if err != nil {
		s.writeError(w, r, err, paramHostID)
		return
	}
	s.writeData(w, r, toHostAgentJSON(a, s.cfg.Now()))
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
	page, err := queryInt(r, "page", 1, 1, maxPage)
	if err != nil {
		s.writeError(w, r, err, "page")
		return
	}
	size, err := queryInt(r, "size", paging.DefaultSize, 1, paging.MaxSize)
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

// listTasks: GET /tasks/instances?name=&status=&type=&hostId=&page=&size=&sort=
// → a page of tasks, newest first unless sorted otherwise.
func (s *server) listTasks(w http.ResponseWriter, r *http.Request) {
	q, target, err := taskListQuery(r)
	if err != nil {
		s.writeError(w, r, err, target)
		return
	}
	p, err := s.cfg.Tasks.ListTasks(r.Context(), q)
	if err != nil {
		s.writeError(w, r, err, "")
		return
	}
	out := pageJSON[taskJSON]{Contents: make([]taskJSON, 0, len(p.Tasks)), Page: newPageRef(p.Total, q.Page, q.Size)}
	for i := range p.Tasks {
		out.Contents = append(out.Contents, toTaskJSON(&p.Tasks[i]))
	}
	s.writeData(w, r, out)
}

// taskListQuery parses listTasks' query parameters; on error it also
// returns the parameter at fault.
func taskListQuery(r *http.Request) (task.ListQuery, string, error) {
	var q task.ListQuery
	var err error
	if q.Page, err = queryInt(r, "page", 1, 1, maxPage); err != nil {
		return q, "page", err
	}
	if q.Size, err = queryInt(r, "size", paging.DefaultSize, 1, paging.MaxSize); err != nil {
		return q, "size", err
	}
	v := r.URL.Query()
	q.Name = v.Get("name")
	if q.Status, err = queryEnum(r, "status", task.StatusRunning, task.StatusFailed, task.StatusSuccessful); err != nil {
		return q, "status", err
	}
	if q.Type, err = queryEnum(r, "type", task.TypeManual, task.TypeScheduled, task.TypeSysScheduled); err != nil {
		return q, "type", err
	}
	if q.HostID, err = queryID(r, paramHostID); err != nil {
		return q, paramHostID, err
	}
	if q.Sort, err = task.ParseSort(v.Get("sort")); err != nil {
		return q, "sort", err
	}
	return q, "", nil
}

// taskOp serves POST /tasks/instances/{taskInstanceId}/{retry,rollback} →
// the task after the operation. No body, as hostOp.
func (s *server) taskOp(op func(ctx context.Context, id int64) (*task.Task, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id, err := pathID(r, paramTaskID)
		if err != nil {
			s.writeError(w, r, err, paramTaskID)
			return
		}
		if err := ignoreBody(r); err != nil {
			s.writeError(w, r, err, "body")
			return
		}
		t, err := op(r.Context(), id)
		if err != nil {
			s.writeError(w, r, err, paramTaskID)
			return
		}
		s.writeData(w, r, toTaskJSON(t))
	}
}

// subtaskOp serves POST
// /tasks/instances/{taskInstanceId}/subtasks/{subtaskInstanceId}/{retry,skip,cancel}
// → the task after the operation. No body, as hostOp.
func (s *server) subtaskOp(op func(ctx context.Context, taskID, subtaskID int64) (*task.Task, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		taskID, subtaskID, target, err := subtaskPath(r)
		if err != nil {
			s.writeError(w, r, err, target)
			return
		}
		if err := ignoreBody(r); err != nil {
			s.writeError(w, r, err, "body")
			return
		}
		t, err := op(r.Context(), taskID, subtaskID)
		if err != nil {
			s.writeError(w, r, err, subtaskTarget(err))
			return
		}
		s.writeData(w, r, toTaskJSON(t))
	}
}

// subtaskLog: GET /tasks/instances/{taskInstanceId}/subtasks/{subtaskInstanceId}/log?offset=&limit=
// → {"log": "...", "lines", "nextOffset", "more"}: a page of the log, from
// the first line by default (offset: a previous page's nextOffset; limit:
// 1..10000 lines, 10000 by default; a page also stops before 1 MiB of text).
func (s *server) subtaskLog(w http.ResponseWriter, r *http.Request) {
	taskID, subtaskID, target, err := subtaskPath(r)
	if err != nil {
		s.writeError(w, r, err, target)
		return
	}
	var q task.LogQuery
	if q.After, err = queryOffset(r, "offset"); err != nil {
		s.writeError(w, r, err, "offset")
		return
	}
	if q.Limit, err = queryInt(r, "limit", task.MaxLogPageLines, 1, task.MaxLogPageLines); err != nil {
		s.writeError(w, r, err, "limit")
		return
	}
	page, err := s.cfg.Tasks.SubtaskLog(r.Context(), taskID, subtaskID, q)
	if err != nil {
		s.writeError(w, r, err, subtaskTarget(err))
		return
	}
	s.writeData(w, r, logJSON{Log: page.Text, Lines: page.Lines, NextOffset: page.Next, More: page.More})
}

// subtaskPath parses the task and subtask ids of a subtask path; on error it
// also returns the parameter at fault.
func subtaskPath(r *http.Request) (taskID, subtaskID int64, target string, err error) {
	if taskID, err = pathID(r, paramTaskID); err != nil {
		return 0, 0, paramTaskID, err
	}
	if subtaskID, err = pathID(r, paramSubtaskID); err != nil {
		return 0, 0, paramSubtaskID, err
	}
	return taskID, subtaskID, "", nil
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
