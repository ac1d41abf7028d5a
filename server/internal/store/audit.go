package store

import (
	"context"
	"fmt"
	"strings"
	"unicode/utf8"

	"agentplane/server/internal/audit"
	"agentplane/server/internal/paging"
)

var _ audit.Store = (*Store)(nil)

const auditCols = `id, at, username, access_key_id, source_addr, operation, host_id, task_id, target, outcome, message`

// AddAuditEvent stores e and returns its id. Text longer than its column
// (username and access key 64, address and operation 128, target 255,
// outcome 32 bytes) is cut, so that a strict MySQL does not refuse it.
func (s *Store) AddAuditEvent(ctx context.Context, e audit.Event) (int64, error) {
	res, err := s.exec(ctx, `INSERT INTO audit_events (at, username, access_key_id, source_addr, operation,
		host_id, task_id, target, outcome, message) VALUES (?,?,?,?,?,?,?,?,?,?)`,
		ms(e.Time), clip(e.Username, 64), clip(e.AccessKeyID, 64), clip(e.SourceAddr, 128), clip(e.Operation, 128),
		e.HostID, e.TaskID, clip(e.Target, 255), clip(e.Outcome, 32), e.Message)
	if err != nil {
		return 0, fmt.Errorf("inserting audit event: %w", err)
	}
	return res.LastInsertId()
}

// ListAuditEvents returns the page of events q selects, newest first (by
// time, then id). Operation matches a part, case-insensitive; the other
// filters match exactly; Start is inclusive, End exclusive.
func (s *Store) ListAuditEvents(ctx context.Context, q audit.Query) (audit.Page, error) {
	where, args := []string{"1 = 1"}, []any{}
	if q.Username != "" {
		where, args = append(where, "username = ?"), append(args, q.Username)
	}
	if q.Operation != "" {
		where = append(where, `LOWER(operation) LIKE ? ESCAPE '!'`)
		args = append(args, "%"+likeEscaper.Replace(strings.ToLower(q.Operation))+"%")
	}
	if q.HostID != 0 {
		where, args = append(where, "host_id = ?"), append(args, q.HostID)
	}
	if q.TaskID != 0 {
		where, args = append(where, "task_id = ?"), append(args, q.TaskID)
	}
	if q.Outcome != "" {
		where, args = append(where, "outcome = ?"), append(args, q.Outcome)
	}
	if !q.Start.IsZero() {
		where, args = append(where, "at >= ?"), append(args, q.Start.UnixMilli())
	}
	if !q.End.IsZero() {
		where, args = append(where, "at < ?"), append(args, q.End.UnixMilli())
	}
	cond := strings.Join(where, " AND ")
	var p audit.Page
	if err := s.r.QueryRowContext(ctx, `SELECT COUNT(*) FROM audit_events WHERE `+cond, args...).Scan(&p.Total); err != nil {
		return p, fmt.Errorf("counting audit events: %w", err)
	}
	limit, offset := paging.Bounds(q.Page, q.Size)
	rows, err := s.r.QueryContext(ctx, `SELECT `+auditCols+` FROM audit_events WHERE `+cond+
		` ORDER BY at DESC, id DESC LIMIT ? OFFSET ?`, append(args, limit, offset)...)
	if err != nil {
		return p, fmt.Errorf("listing audit events: %w", err)
	}
	defer rows.Close()
	p.Events = []audit.Event{}
	for rows.Next() {
		var e audit.Event
		var at int64
		if err := rows.Scan(&e.ID, &at, &e.Username, &e.AccessKeyID, &e.SourceAddr, &e.Operation, &e.HostID, &e.TaskID,
			&e.Target, &e.Outcome, &e.Message); err != nil {
			return p, fmt.Errorf("listing audit events: %w", err)
		}
		e.Time = fromMS(at)
		p.Events = append(p.Events, e)
	}
	if err := rows.Err(); err != nil {
		return p, fmt.Errorf("listing audit events: %w", err)
	}
	return p, nil
}

// clip cuts s to at most n bytes, at a rune boundary.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}
