package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"agentplane/server/internal/errs"
	"agentplane/server/internal/task"
)

// Subtask logs are bounded: subtask_log_sizes keeps each log's line and byte
// counts, so an append costs its inserts and one counter update, never a
// scan of the log (logsizes.go). A log past either limit has its oldest
// lines deleted in bulk
// down to three quarters of the limits (so the next trim is a quarter of a
// log away), its attempt headers kept, and one marker line, in place of
// the lines dropped, saying how many lines and bytes were dropped in all.
//
// Kinds of subtask_logs rows.
const (
	lineText   = 0 // a line of an attempt (engine or agent)
	lineHeader = 1 // an attempt's header: never dropped
	lineMarker = 2 // stands for the lines dropped before it
)

// LogLimits bound each subtask's stored log: MaxBytes of line text and
// MaxLines lines, the headers and the marker included.
type LogLimits struct {
	MaxBytes int64
	MaxLines int64
}

// Option configures Open.
type Option func(*Store)

// WithLogLimits sets the bounds of each subtask's log (default
// task.DefaultLogMaxBytes and task.DefaultLogMaxLines). A zero field keeps
// its default.
func WithLogLimits(l LogLimits) Option {
	return func(s *Store) {
		if l.MaxBytes > 0 {
			s.logLimits.MaxBytes = l.MaxBytes
		}
		if l.MaxLines > 0 {
			s.logLimits.MaxLines = l.MaxLines
		}
	}
}

func defaultLogLimits() LogLimits {
	return LogLimits{MaxBytes: task.DefaultLogMaxBytes, MaxLines: task.DefaultLogMaxLines}
}

// AppendSubtaskLog appends one line to a subtask's log.
func (s *Store) AppendSubtaskLog(ctx context.Context, subtaskID int64, l task.LogLine) error {
	return s.AppendSubtaskLogs(ctx, []task.SubtaskLogLine{{SubtaskID: subtaskID, LogLine: l}})
}

// AppendSubtaskLogs appends lines to their subtasks' logs, in order, in one
// transaction (one INSERT per rowsPerInsert lines), and trims the logs that
// grew past the limits.
func (s *Store) AppendSubtaskLogs(ctx context.Context, lines []task.SubtaskLogLine) error {
	if len(lines) == 0 {
		return nil
	}
	return s.tx(ctx, func(ctx context.Context, tx *wtx) error { return s.appendSubtaskLogs(ctx, tx, lines) })
}

// trimLog deletes the oldest lines of a subtask's log (never a header) down
// to three quarters of the limits, and puts the marker in their place, with
// the id of the last line dropped so that it reads where they were. sz is
// updated.
func (s *Store) trimLog(ctx context.Context, tx *wtx, subtaskID int64, sz *logSize) error {
	lim := s.logLimits
	d := trim{lines: sz.lines + 1, bytes: sz.bytes} // +1: the new marker
	if err := d.read(ctx, tx, subtaskID, lim.MaxLines*3/4, lim.MaxBytes*3/4); err != nil {
		return fmt.Errorf("trimming the log of subtask %d: %w", subtaskID, err)
	}
	if d.dropLines == 0 {
		return nil // only headers (and the marker) left: they stay
	}
	if _, err := tx.ExecContext(ctx, `DELETE FROM subtask_logs WHERE subtask_id = ? AND kind <> ? AND id <= ?`,
		subtaskID, lineHeader, d.lastID); err != nil {
		return fmt.Errorf("trimming the log of subtask %d: %w", subtaskID, err)
	}
	sz.droppedLines += d.dropLines
	sz.droppedBytes += d.dropBytes
	marker := fmt.Sprintf("[agentplane] %d earlier lines (%d bytes) dropped: a subtask log keeps at most %d lines and %d bytes",
		sz.droppedLines, sz.droppedBytes, lim.MaxLines, lim.MaxBytes)
	if _, err := tx.ExecContext(ctx, `INSERT INTO subtask_logs (id, subtask_id, run_time, at, kind, size, line) VALUES (?,?,?,?,?,?,?)`,
		d.lastID, subtaskID, d.lastRun, d.lastAt, lineMarker, len(marker), marker); err != nil {
		return fmt.Errorf("marking the log of subtask %d: %w", subtaskID, err)
	}
	sz.lines, sz.bytes = d.lines, d.bytes+int64(len(marker))
	return nil
}

// trim is what trimming a log drops: the counts left (lines, bytes, the
// marker included), the text lines dropped, and the last line dropped.
type trim struct {
	lines, bytes         int64
	dropLines, dropBytes int64
	lastID, lastAt       int64
	lastRun              int
}

// read walks the log's lines (never a header), oldest first, counting each
// as dropped until the log holds at most wantLines lines and wantBytes
// bytes.
func (d *trim) read(ctx context.Context, tx *wtx, subtaskID, wantLines, wantBytes int64) error {
	rows, err := tx.QueryContext(ctx, `SELECT id, kind, size, run_time, at FROM subtask_logs
		WHERE subtask_id = ? AND kind <> ? ORDER BY id`, subtaskID, lineHeader)
	if err != nil {
		return err
	}
	defer rows.Close()
	for (d.lines > wantLines || d.bytes > wantBytes) && rows.Next() {
		var id, size, at int64
		var kind, run int
		if err := rows.Scan(&id, &kind, &size, &run, &at); err != nil {
			return err
		}
		d.lines--
		d.bytes -= size
		if kind == lineText {
			d.dropLines++
			d.dropBytes += size
		}
		d.lastID, d.lastRun, d.lastAt = id, run, at
	}
	if err := rows.Err(); err != nil {
		return err
	}
	return rows.Close()
}

// SubtaskLog returns up to limit lines of a subtask's log after position
// after (a line id), oldest first, and no more than maxBytes of text (but
// at least one line); more says lines were left. It is ErrNotFound when the
// subtask is not one of task taskID's.
func (s *Store) SubtaskLog(ctx context.Context, taskID, subtaskID, after int64, limit, maxBytes int) ([]task.LogLine, bool, error) {
	var owner int64
	if err := s.r.QueryRowContext(ctx, `SELECT task_id FROM subtasks WHERE id = ?`, subtaskID).Scan(&owner); err != nil || owner != taskID {
		if err == nil || errors.Is(err, sql.ErrNoRows) {
			return nil, false, fmt.Errorf("subtask %d is not in task %d: %w", subtaskID, taskID, errs.ErrNotFound)
		}
		return nil, false, fmt.Errorf("reading subtask %d: %w", subtaskID, err)
	}
	rows, err := s.r.QueryContext(ctx, `SELECT id, run_time, at, kind, line FROM subtask_logs
		WHERE subtask_id = ? AND id > ? ORDER BY id LIMIT ?`, subtaskID, after, limit+1)
	if err != nil {
		return nil, false, fmt.Errorf("reading the log of subtask %d: %w", subtaskID, err)
	}
	defer rows.Close()
	lines := []task.LogLine{}
	size := 0
	for rows.Next() {
		var l task.LogLine
		var at int64
		var kind int
		if err := rows.Scan(&l.Seq, &l.RunTime, &at, &kind, &l.Line); err != nil {
			return nil, false, err
		}
		if len(lines) == limit || (len(lines) > 0 && size+len(l.Line) > maxBytes) {
			return lines, true, nil
		}
		l.Time, l.Header = fromMS(at), kind == lineHeader
		size += len(l.Line)
		lines = append(lines, l)
	}
	return lines, false, rows.Err()
}
