package task

import (
	"fmt"
	"time"

	"agentplane/server/internal/errs"
)

// This file is the state machine: pure functions on a Task in memory. The
// engine loads a task, applies them, and stores the difference as one
// compare-and-swap.
//
// A task runs forward (operation EXECUTE or RETRY) or rolls back (operation
// ROLLBACK). Forward, a PENDING subtask becomes READY once all its upstreams
// succeeded. Rolling back, the subtasks that ran wait READY with operation
// ROLLBACK and start once all their downstreams are PENDING (rolled back, or
// never ran); a rolled-back subtask returns to PENDING, and the task is
// SUCCESSFUL once every subtask is PENDING.

// RollingBack reports whether the task is rolling back.
func (t *Task) RollingBack() bool { return t.Operation == OpRollback }

// positions indexes a task's subtasks by id: the index of each in
// t.Subtasks. A task's subtasks never change order, so the index of one
// version serves every later version of the same task.
func positions(t *Task) map[int64]int {
	pos := make(map[int64]int, len(t.Subtasks))
	for i := range t.Subtasks {
		pos[t.Subtasks[i].ID] = i
	}
	return pos
}

// find returns subtask id of t through pos (nil: a linear search), or nil.
func find(t *Task, pos map[int64]int, id int64) *Subtask {
	if pos == nil {
		return t.Subtask(id)
	}
	if i, ok := pos[id]; ok && i < len(t.Subtasks) && t.Subtasks[i].ID == id {
		return &t.Subtasks[i]
	}
	return t.Subtask(id) // pos is of another shape: still correct, only slower
}

// advance promotes subtasks that may run to READY (forward only) and derives
// the task's status and end time.
func advance(t *Task, now time.Time) { advanceAt(t, positions(t), now) }

// advanceAt is advance with the subtasks' positions (see positions).
func advanceAt(t *Task, pos map[int64]int, now time.Time) {
	if !t.RollingBack() {
		for i := range t.Subtasks {
			st := &t.Subtasks[i]
			if st.Status != SubtaskPending {
				continue
			}
			ready := true
			for _, id := range st.Upstreams {
				up := find(t, pos, id)
				ready = ready && up != nil && up.Status == SubtaskSuccessful
			}
			if ready {
				st.Status = SubtaskReady
			}
		}
	}
	t.Status = deriveAt(t, pos)
	if t.Status.Final() {
		if t.EndTime.IsZero() {
			t.EndTime = now
		}
	} else {
		t.EndTime = time.Time{}
	}
}

// startRunnable advances the task, starts every runnable READY subtask (as
// executor, at now), advances again, and returns the started subtasks.
func startRunnable(t *Task, pos map[int64]int, executor string, now time.Time) []Subtask {
	advanceAt(t, pos, now)
	var started []Subtask
	for i := range t.Subtasks {
		st := &t.Subtasks[i]
		if st.Status == SubtaskReady && runnableAt(t, pos, st) {
			start(st, executor, now)
			started = append(started, *st)
		}
	}
	advanceAt(t, pos, now)
	return started
}

// derive is the task's status from its subtasks': RUNNING while a subtask
// runs or may start; else FAILED when one failed (or, rolling back, waits
// behind one that failed); else SUCCESSFUL when all succeeded (forward) or
// all are PENDING again (rolled back).
func derive(t *Task) Status { return deriveAt(t, nil) }

// deriveAt is derive with the subtasks' positions (nil: none).
func deriveAt(t *Task, pos map[int64]int) Status {
	var done, failed, active int
	for i := range t.Subtasks {
		st := &t.Subtasks[i]
		switch {
		case st.Status.active(), st.Status == SubtaskReady && runnableAt(t, pos, st):
			active++
		case st.Status == SubtaskFailed, st.Status == SubtaskReady:
			failed++
		case t.RollingBack() && st.Status == SubtaskPending, !t.RollingBack() && st.Status == SubtaskSuccessful:
			done++
		}
	}
	switch {
	case active > 0:
		return StatusRunning
	case failed > 0:
		return StatusFailed
	case done == len(t.Subtasks):
		return StatusSuccessful
	default:
		return StatusRunning
	}
}

// runnable reports whether a READY subtask may start now: forward, always;
// rolling back, once every downstream is PENDING.
func runnable(t *Task, st *Subtask) bool { return runnableAt(t, nil, st) }

// runnableAt is runnable with the subtasks' positions (nil: none).
func runnableAt(t *Task, pos map[int64]int, st *Subtask) bool {
	if !t.RollingBack() {
		return true
	}
	for _, id := range st.Downstreams {
		if d := find(t, pos, id); d != nil && d.Status != SubtaskPending {
			return false
		}
	}
	return true
}

// start moves a READY subtask to RUNNING, recording who runs it and when.
func start(st *Subtask, executor string, now time.Time) {
	st.Status = SubtaskRunning
	st.Executor = executor
	st.StartTime = now
	st.EndTime = time.Time{}
	st.Message = ""
}

// finish ends a RUNNING or CANCELING attempt with its result. A canceled
// attempt ends FAILED (operation CANCEL) whatever the work reported; a
// rolled-back one returns to PENDING; otherwise SUCCESSFUL or FAILED.
func finish(t *Task, st *Subtask, res Result, now time.Time) {
	st.EndTime = now
	st.ProhibitRollback = st.ProhibitRollback || res.ProhibitRollback
	switch {
	case st.Status == SubtaskCanceling:
		st.Status = SubtaskFailed
		if res.Err != nil {
			st.Message = errs.Message(res.Err)
		} else {
			st.Message = "canceled after the work had finished: " + res.Message
		}
	case res.Err != nil:
		st.Status = SubtaskFailed
		st.Message = errs.Message(res.Err)
	case t.RollingBack():
		st.Status = SubtaskPending
		st.Message = res.Message
	default:
		st.Status = SubtaskSuccessful
		st.Message = res.Message
	}
}

// active reports whether a subtask holds work in progress.
func (s SubtaskStatus) active() bool { return s == SubtaskRunning || s == SubtaskCanceling }

// ran reports whether a subtask did work that a rollback must undo: it
// succeeded (other than by a skip) or failed.
func (st *Subtask) ran() bool {
	return st.Status == SubtaskFailed || st.Status == SubtaskSuccessful && st.Operation != OpSkip
}

// again readies a subtask for another attempt with operation op.
func again(st *Subtask, op Operation) {
	st.Status = SubtaskReady
	st.Operation = op
	st.RunTime++
	st.StartTime, st.EndTime = time.Time{}, time.Time{}
	st.Message = ""
}

// retryOp is the operation of a retried subtask: RETRY forward; rolling
// back, a retry re-runs the rollback.
func retryOp(t *Task) Operation {
	if t.RollingBack() {
		return OpRollback
	}
	return OpRetry
}

// retryTask readies every FAILED subtask of a FAILED task again.
func retryTask(t *Task) error {
	if t.Status != StatusFailed {
		return refused(t, "retry", "task is "+string(t.Status))
	}
	op := retryOp(t)
	for i := range t.Subtasks {
		if st := &t.Subtasks[i]; st.Status == SubtaskFailed {
			again(st, op)
		}
	}
	t.Operation = op
	return nil
}

// rollbackTask starts undoing a FAILED task: every subtask that ran waits
// READY to be rolled back; a skipped one is PENDING at once (ROLLBACK_SKIP).
// A task already rolling back retries its failed rollbacks.
func rollbackTask(t *Task) error {
	if t.Status != StatusFailed {
		return refused(t, "roll back", "task is "+string(t.Status))
	}
	if why := rollbackProhibited(t); why != "" {
		return fmt.Errorf("task %d: cannot roll back: %s: %w", t.ID, why, errs.ErrRollbackProhibited)
	}
	t.Operation = OpRollback
	for i := range t.Subtasks {
		st := &t.Subtasks[i]
		switch {
		case st.ran():
			again(st, OpRollback)
		case st.Status == SubtaskSuccessful: // skipped: nothing to undo
			st.Status, st.Operation = SubtaskPending, OpRollbackSkip
		}
	}
	return nil
}

// rollbackProhibited says why the task may not be rolled back, or "".
func rollbackProhibited(t *Task) string {
	if t.Context.StringMap["prohibit_rollback"] == "true" {
		return "the task's context prohibits rollback"
	}
	for _, st := range t.Subtasks {
		if st.ProhibitRollback && st.ran() {
			return fmt.Sprintf("subtask %d (%s) prohibits rollback", st.ID, st.Name)
		}
	}
	return ""
}

// retrySubtask readies one FAILED subtask again.
func retrySubtask(t *Task, id int64) error {
	st, err := subtaskIn(t, id, "retry", SubtaskFailed)
	if err != nil {
		return err
	}
	again(st, retryOp(t))
	if !t.RollingBack() {
		t.Operation = OpRetry
	}
	return nil
}

// skipSubtask marks one FAILED subtask done without running it: SUCCESSFUL
// with operation SKIP forward, PENDING with ROLLBACK_SKIP rolling back.
func skipSubtask(t *Task, id int64, now time.Time) error {
	st, err := subtaskIn(t, id, "skip", SubtaskFailed)
	if err != nil {
		return err
	}
	if t.RollingBack() {
		st.Status, st.Operation = SubtaskPending, OpRollbackSkip
	} else {
		st.Status, st.Operation = SubtaskSuccessful, OpSkip
	}
	st.EndTime = now
	st.Message = "skipped by an operator"
	return nil
}

// cancelSubtask marks one RUNNING subtask CANCELING; the engine then stops
// its work, and it ends FAILED with operation CANCEL.
func cancelSubtask(t *Task, id int64) error {
	st, err := subtaskIn(t, id, "cancel", SubtaskRunning)
	if err != nil {
		return err
	}
	st.Status, st.Operation = SubtaskCanceling, OpCancel
	return nil
}

// subtaskIn returns subtask id of t if it is in status want; else an error
// naming the task, the operation and the state.
func subtaskIn(t *Task, id int64, op string, want SubtaskStatus) (*Subtask, error) {
	st := t.Subtask(id)
	if st == nil {
		return nil, subtaskNotFound(t.ID, id)
	}
	if st.Status != want {
		return nil, &SubtaskError{SubtaskID: id,
			Err: refused(t, fmt.Sprintf("%s subtask %d", op, id), fmt.Sprintf("subtask is %s, not %s", st.Status, want))}
	}
	return st, nil
}

// SubtaskError is an error about one subtask of a task (it does not exist,
// or its state refuses the operation), so that adapters can point at the
// subtask rather than the task. Err carries the errs kind.
type SubtaskError struct {
	SubtaskID int64
	Err       error
}

func (e *SubtaskError) Error() string { return e.Err.Error() }

// Unwrap makes errors.Is see Err's kind.
func (e *SubtaskError) Unwrap() error { return e.Err }

func subtaskNotFound(taskID, subtaskID int64) error {
	return &SubtaskError{SubtaskID: subtaskID,
		Err: fmt.Errorf("subtask %d is not in task %d: %w", subtaskID, taskID, errs.ErrNotFound)}
}

func refused(t *Task, op, state string) error {
	return fmt.Errorf("task %d: cannot %s: %s: %w", t.ID, op, state, errs.ErrFailedPrecondition)
}

// LogHeaderLayout formats the time in a subtask log's attempt header.
const LogHeaderLayout = "2006-01-02T15:04:05.000-07:00"

// logHeader is the line that starts each attempt in a subtask's log, as OCP
// writes it: ############{EXECUTE}{2021-08-25T15:09:32.697+08:00}############
func logHeader(op Operation, at time.Time) string {
	return "############{" + string(op) + "}{" + at.Format(LogHeaderLayout) + "}############"
}
