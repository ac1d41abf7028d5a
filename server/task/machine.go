package task

import "time"

// This file is the state machine: pure functions on a Task in memory. The
// engine loads a task, applies them, and stores the difference as one
// compare-and-swap.

// advance promotes PENDING subtasks whose upstreams all succeeded to READY
// and derives the task's status: SUCCESSFUL when every subtask succeeded,
// FAILED when one failed and nothing is ready or running, else RUNNING.
func advance(t *Task, now time.Time) {
	status := make(map[int64]SubtaskStatus, len(t.Subtasks))
	for _, st := range t.Subtasks {
		status[st.ID] = st.Status
	}
	for i := range t.Subtasks {
		st := &t.Subtasks[i]
		if st.Status != SubtaskPending {
			continue
		}
		ready := true
		for _, up := range st.Upstreams {
			ready = ready && status[up] == SubtaskSuccessful
		}
		if ready {
			st.Status = SubtaskReady
			status[st.ID] = SubtaskReady
		}
	}
	var succeeded, failed, active int
	for _, st := range t.Subtasks {
		switch st.Status {
		case SubtaskSuccessful:
			succeeded++
		case SubtaskFailed:
			failed++
		case SubtaskReady, SubtaskRunning, SubtaskCanceling:
			active++
		}
	}
	switch {
	case succeeded == len(t.Subtasks):
		t.Status = StatusSuccessful
	case failed > 0 && active == 0:
		t.Status = StatusFailed
	default:
		t.Status = StatusRunning
	}
	if t.Status.Final() {
		if t.EndTime.IsZero() {
			t.EndTime = now
		}
	} else {
		t.EndTime = time.Time{}
	}
}

// start moves a READY subtask to RUNNING, recording who runs it and when.
func start(st *Subtask, executor string, now time.Time) {
	st.Status = SubtaskRunning
	st.Executor = executor
	st.StartTime = now
	st.EndTime = time.Time{}
	st.Message = ""
}

// finish ends a RUNNING or CANCELING subtask: SUCCESSFUL with message when
// err is nil, else FAILED with the error as its message.
func finish(st *Subtask, message string, err error, now time.Time) {
	st.EndTime = now
	if err != nil {
		st.Status = SubtaskFailed
		st.Message = err.Error()
		return
	}
	st.Status = SubtaskSuccessful
	st.Message = message
}

// active reports whether a subtask holds work in progress.
func (s SubtaskStatus) active() bool { return s == SubtaskRunning || s == SubtaskCanceling }

// LogHeaderLayout formats the time in a subtask log's attempt header.
const LogHeaderLayout = "2006-01-02T15:04:05.000-07:00"

// logHeader is the line that starts each attempt in a subtask's log, as OCP
// writes it: ############{EXECUTE}{2021-08-25T15:09:32.697+08:00}############
func logHeader(op Operation, at time.Time) string {
	return "############{" + string(op) + "}{" + at.Format(LogHeaderLayout) + "}############"
}
