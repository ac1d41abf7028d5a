package rest

import (
	"fmt"
	"net/http"
	"strings"
	"time"

	"agentplane/server/internal/audit"
	"agentplane/server/internal/errs"
	"agentplane/server/internal/paging"
)

// auditRoutes are the routes of the audit record; none without
// Config.Audit.
func (s *server) auditRoutes() []route {
	if s.cfg.Audit == nil {
		return nil
	}
	return []route{
		{http.MethodGet, "/audit/events", s.listAuditEvents},
	}
}

// listAuditEvents: GET /audit/events?username=&operation=&hostId=&taskId=
// &outcome=&startTime=&endTime=&page=1&size=20 → a page of events, newest
// first. ADMIN only (the audit service checks). operation matches a part,
// case-insensitive; startTime (inclusive) and endTime (exclusive) are
// ISO-8601 with a zone, e.g. 2026-11-27T04:10:00.000+08:00 (a '+' sent
// unencoded arrives as a space, and is read as '+').
func (s *server) listAuditEvents(w http.ResponseWriter, r *http.Request) {
	q, target, err := auditQuery(r)
	if err != nil {
		s.writeError(w, r, err, target)
		return
	}
	p, err := s.cfg.Audit.ListEvents(r.Context(), q)
	if err != nil {
		s.writeError(w, r, err, "")
		return
	}
	out := pageJSON[auditEventJSON]{Contents: make([]auditEventJSON, 0, len(p.Events)), Page: newPageRef(p.Total, q.Page, q.Size)}
	for _, e := range p.Events {
		out.Contents = append(out.Contents, toAuditEventJSON(e))
	}
	s.writeData(w, r, out)
}

// auditQuery parses listAuditEvents' query parameters; on error it also
// returns the parameter at fault.
func auditQuery(r *http.Request) (audit.Query, string, error) {
	var q audit.Query
	var err error
	if q.Page, err = queryInt(r, "page", 1, 1, maxPage); err != nil {
		return q, "page", err
	}
	if q.Size, err = queryInt(r, "size", paging.DefaultSize, 1, paging.MaxSize); err != nil {
		return q, "size", err
	}
	if q.HostID, err = queryID(r, paramHostID); err != nil {
		return q, paramHostID, err
	}
	if q.TaskID, err = queryID(r, "taskId"); err != nil {
		return q, "taskId", err
	}
	if q.Start, err = queryTime(r, "startTime"); err != nil {
		return q, "startTime", err
	}
	if q.End, err = queryTime(r, "endTime"); err != nil {
		return q, "endTime", err
	}
	v := r.URL.Query()
	q.Username, q.Operation, q.Outcome = v.Get("username"), v.Get("operation"), v.Get("outcome")
	return q, "", nil
}

// queryTime parses query parameter name as an ISO-8601 time with a zone
// offset (RFC 3339, fraction optional), or returns the zero time when it is
// absent; an ErrInvalidArgument error otherwise.
func queryTime(r *http.Request, name string) (time.Time, error) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return time.Time{}, nil
	}
	t, err := time.Parse(time.RFC3339Nano, strings.Replace(v, " ", "+", 1))
	if err != nil {
		return time.Time{}, fmt.Errorf("%s must be an ISO-8601 time with a zone, e.g. 2026-11-27T04:10:00.000+08:00, got %q: %w",
			name, v, errs.ErrInvalidArgument)
	}
	return t, nil
}

// auditEventJSON is one audit event as the API shows it.
type auditEventJSON struct {
	ID            int64  `json:"id"`
	Time          string `json:"time"`
	Username      string `json:"username"`
	AccessKeyID   string `json:"accessKeyId"`
	SourceAddress string `json:"sourceAddress"`
	Operation     string `json:"operation"`
	HostID        int64  `json:"hostId"`
	TaskID        int64  `json:"taskId"`
	Target        string `json:"target"`
	Outcome       string `json:"outcome"`
	Message       string `json:"message"`
}

func toAuditEventJSON(e audit.Event) auditEventJSON {
	return auditEventJSON{
		ID: e.ID, Time: formatTime(e.Time), Username: e.Username, AccessKeyID: e.AccessKeyID,
		SourceAddress: e.SourceAddr, Operation: e.Operation, HostID: e.HostID, TaskID: e.TaskID,
		Target: e.Target, Outcome: e.Outcome, Message: e.Message,
	}
}
