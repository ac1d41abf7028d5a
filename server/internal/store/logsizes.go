package store

import (
	"context"
	"fmt"
	"strings"

	"agentplane/server/internal/task"
)

// Each log's counters (subtask_log_sizes) change with every append, in the
// append's transaction. An append adds to them with one relative UPDATE per
// log, guarded by the limits:
//
//	UPDATE subtask_log_sizes SET lines = lines + n, bytes = bytes + b
//	WHERE subtask_id = ? AND lines <= maxLines - n AND bytes <= maxBytes - b
//
// so the counters are never read back. The UPDATE adds to what the
// database holds, under the row's lock: nothing is kept in memory, so a
// failed write or group commit, a restart, or another server appending to
// the same log (a new task owner after failover, on one MySQL database)
// cannot leave a stale count behind. It matches no row when the log has no
// counters yet (its first append) or when the lines would take the log
// past a limit; those logs (few: once per log, then once per quarter of a
// log) take the slow path: their counters are read, locked on MySQL (FOR
// UPDATE; SQLite has one writer), the log trimmed if it must be, and the
// counters written whole.

// logSize is a subtask's row of subtask_log_sizes.
type logSize struct {
	stored                     bool // the row exists
	lines, bytes               int64
	droppedLines, droppedBytes int64
}

// bulkLogs is how many logs an append must touch for their counters to be
// read and written back in bulk (three statements, whatever their number)
// rather than one UPDATE per log. On SQLite the two cost about the same at
// 16 logs; on MySQL each statement is a round trip, and bulk pays sooner.
func (s *Store) bulkLogs() int {
	switch {
	case s.logBulk > 0:
		return s.logBulk
	case s.dialect == dialectMySQL:
		return 4
	}
	return 16
}

// The counters' statements: fixed texts, prepared once (stmts.go), but for
// the number of placeholders in IN lists and multi-row inserts.
const (
	addToLogSize = "UPDATE subtask_log_sizes SET `lines` = `lines` + ?, bytes = bytes + ?\n" +
		"\tWHERE subtask_id = ? AND `lines` <= ? AND bytes <= ?"
	setLogSize = "UPDATE subtask_log_sizes SET `lines` = ?, bytes = ?, dropped_lines = ?, dropped_bytes = ?\n" +
		"\tWHERE subtask_id = ?"
	insertLogSizes = "INSERT INTO subtask_log_sizes (subtask_id, `lines`, bytes, dropped_lines, dropped_bytes) VALUES (?,?,?,?,?)"
	deleteLogSizes = "DELETE FROM subtask_log_sizes WHERE subtask_id IN ("
	readLogSizes   = "SELECT subtask_id, `lines`, bytes, dropped_lines, dropped_bytes FROM subtask_log_sizes WHERE subtask_id IN ("
)

func (s *Store) appendSubtaskLogs(ctx context.Context, tx *wtx, lines []task.SubtaskLogLine) error {
	if len(lines) == 0 {
		return nil
	}
	order, added, err := insertLogLines(ctx, tx, lines)
	if err != nil {
		return err
	}
	if len(order) >= s.bulkLogs() {
		return s.countLogs(ctx, tx, order, added)
	}
	var slow []int64 // the logs the guarded UPDATE did not count
	lim := s.logLimits
	for _, id := range order {
		a := added[id]
		res, err := tx.ExecContext(ctx, addToLogSize, a.lines, a.bytes, id, lim.MaxLines-a.lines, lim.MaxBytes-a.bytes)
		if err != nil {
			return fmt.Errorf("counting the log of subtask %d: %w", id, err)
		}
		n, err := res.RowsAffected()
		if err != nil {
			return fmt.Errorf("counting the log of subtask %d: %w", id, err)
		}
		if n == 0 {
			slow = append(slow, id)
		}
	}
	if len(slow) == 0 {
		return nil
	}
	return s.countLogs(ctx, tx, slow, added)
}

// insertLogLines inserts lines (one INSERT per rowsPerInsert lines), and
// returns their subtasks in order of first line, with what each log grew
// by.
func insertLogLines(ctx context.Context, tx *wtx, lines []task.SubtaskLogLine) ([]int64, map[int64]*logSize, error) {
	var order []int64
	added := map[int64]*logSize{}
	for lo := 0; lo < len(lines); lo += rowsPerInsert {
		chunk := lines[lo:min(lo+rowsPerInsert, len(lines))]
		args := make([]any, 0, 6*len(chunk))
		for _, l := range chunk {
			kind := lineText
			if l.Header {
				kind = lineHeader
			}
			args = append(args, l.SubtaskID, l.RunTime, ms(l.Time), kind, len(l.Line), l.Line)
			a := added[l.SubtaskID]
			if a == nil {
				a = &logSize{}
				added[l.SubtaskID] = a
				order = append(order, l.SubtaskID)
			}
			a.lines++
			a.bytes += int64(len(l.Line))
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO subtask_logs (subtask_id, run_time, at, kind, size, line) VALUES (?,?,?,?,?,?)`+
			strings.Repeat(",(?,?,?,?,?,?)", len(chunk)-1), args...); err != nil {
			return nil, nil, fmt.Errorf("appending %d lines to subtask logs: %w", len(chunk), err)
		}
	}
	return order, added, nil
}

// countLogs is the slow path, and the bulk one: it reads the counters of
// the logs of ids, adds what each grew by, trims the logs past a limit, and
// writes the counters whole: a few logs an UPDATE each, many (bulkLogs)
// deleted and inserted again in bulk.
func (s *Store) countLogs(ctx context.Context, tx *wtx, ids []int64, added map[int64]*logSize) error {
	sizes := make(map[int64]logSize, len(ids))
	for lo := 0; lo < len(ids); lo += rowsPerInsert {
		if err := s.readLogSizes(ctx, tx, ids[lo:min(lo+rowsPerInsert, len(ids))], sizes); err != nil {
			return err
		}
	}
	bulk := len(ids) >= s.bulkLogs()
	var stored []int64 // the logs whose rows are deleted (bulk)
	var rows []any     // the rows inserted
	for _, id := range ids {
		sz, a := sizes[id], added[id]
		sz.lines += a.lines
		sz.bytes += a.bytes
		if sz.lines > s.logLimits.MaxLines || sz.bytes > s.logLimits.MaxBytes {
			if err := s.trimLog(ctx, tx, id, &sz); err != nil {
				return err
			}
		}
		if sz.stored && !bulk {
			if _, err := tx.ExecContext(ctx, setLogSize, sz.lines, sz.bytes, sz.droppedLines, sz.droppedBytes, id); err != nil {
				return fmt.Errorf("counting the log of subtask %d: %w", id, err)
			}
			continue
		}
		if sz.stored {
			stored = append(stored, id)
		}
		rows = append(rows, id, sz.lines, sz.bytes, sz.droppedLines, sz.droppedBytes)
	}
	for lo := 0; lo < len(stored); lo += rowsPerInsert {
		chunk := stored[lo:min(lo+rowsPerInsert, len(stored))]
		in, args := inList(chunk)
		if _, err := tx.ExecContext(ctx, deleteLogSizes+in+")", args...); err != nil {
			return fmt.Errorf("counting the logs of %d subtasks: %w", len(chunk), err)
		}
	}
	for lo := 0; lo < len(rows); lo += 5 * rowsPerInsert {
		chunk := rows[lo:min(lo+5*rowsPerInsert, len(rows))]
		if _, err := tx.ExecContext(ctx, insertLogSizes+strings.Repeat(",(?,?,?,?,?)", len(chunk)/5-1), chunk...); err != nil {
			return fmt.Errorf("counting the logs of %d subtasks: %w", len(chunk)/5, err)
		}
	}
	return nil
}

// readLogSizes reads the counters of the logs of ids into sizes, locking
// their rows on MySQL (FOR UPDATE: no other server's append changes them
// before this transaction writes them back); a log without a row has none
// yet (the migration counted the logs that were there). Two servers
// appending the first lines of one log at once would both find no row: the
// second's INSERT fails as a unique key taken, and its append with it.
func (s *Store) readLogSizes(ctx context.Context, tx *wtx, ids []int64, sizes map[int64]logSize) error {
	in, args := inList(ids)
	q := readLogSizes + in + ")"
	if s.dialect == dialectMySQL {
		q += " FOR UPDATE"
	}
	rows, err := tx.QueryContext(ctx, q, args...)
	if err != nil {
		return fmt.Errorf("reading the sizes of %d subtask logs: %w", len(ids), err)
	}
	defer rows.Close()
	for rows.Next() {
		var id int64
		sz := logSize{stored: true}
		if err := rows.Scan(&id, &sz.lines, &sz.bytes, &sz.droppedLines, &sz.droppedBytes); err != nil {
			return err
		}
		sizes[id] = sz
	}
	return rows.Err()
}

// inList is the placeholders and the arguments of an IN list of ids, padded
// with the last id to a power of two: a few texts to prepare (stmts.go),
// whatever the number of ids.
func inList(ids []int64) (string, []any) {
	n := 1
	for n < len(ids) {
		n *= 2
	}
	args := make([]any, n)
	for i := range args {
		args[i] = ids[min(i, len(ids)-1)]
	}
	return "?" + strings.Repeat(",?", n-1), args
}
