package task

import (
	"errors"
	"testing"
	"time"
)

// chain returns a task of n subtasks in a chain, with the given statuses.
func chain(statuses ...SubtaskStatus) *Task {
	t := &Task{ID: 1, Status: StatusRunning}
	for i, s := range statuses {
		st := Subtask{ID: int64(i + 1), Status: s, Upstreams: []int64{}}
		if i > 0 {
			st.Upstreams = []int64{int64(i)}
		}
		t.Subtasks = append(t.Subtasks, st)
	}
	return t
}

func statuses(t *Task) []SubtaskStatus {
	var out []SubtaskStatus
	for _, st := range t.Subtasks {
		out = append(out, st.Status)
	}
	return out
}

func TestAdvance(t *testing.T) {
	const (
		P = SubtaskPending
		R = SubtaskReady
		U = SubtaskRunning
		C = SubtaskCanceling
		F = SubtaskFailed
		S = SubtaskSuccessful
	)
	tests := []struct {
		name   string
		in     []SubtaskStatus
		want   []SubtaskStatus
		status Status
	}{
		{"first ready stays ready", []SubtaskStatus{R, P, P}, []SubtaskStatus{R, P, P}, StatusRunning},
		{"success readies the next", []SubtaskStatus{S, P, P}, []SubtaskStatus{S, R, P}, StatusRunning},
		{"running blocks downstream", []SubtaskStatus{S, U, P}, []SubtaskStatus{S, U, P}, StatusRunning},
		{"all succeeded", []SubtaskStatus{S, S, S}, []SubtaskStatus{S, S, S}, StatusSuccessful},
		{"failure with nothing running fails the task", []SubtaskStatus{S, F, P}, []SubtaskStatus{S, F, P}, StatusFailed},
		{"canceling keeps the task running", []SubtaskStatus{S, C, P}, []SubtaskStatus{S, C, P}, StatusRunning},
		{"first failed", []SubtaskStatus{F, P, P}, []SubtaskStatus{F, P, P}, StatusFailed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tk := chain(tt.in...)
			advance(tk, time.Now())
			if got := statuses(tk); !equal(got, tt.want) {
				t.Errorf("subtasks = %v, want %v", got, tt.want)
			}
			if tk.Status != tt.status {
				t.Errorf("task status = %s, want %s", tk.Status, tt.status)
			}
			if tk.Status.Final() == tk.EndTime.IsZero() {
				t.Errorf("end time %v for status %s", tk.EndTime, tk.Status)
			}
		})
	}
}

func TestAdvanceParallelBranchesContinueAfterAFailure(t *testing.T) {
	// Two independent branches: 1 → 2 and 3 → 4. Branch one failed; branch
	// two goes on, and the task fails only once it has finished.
	tk := &Task{ID: 1, Subtasks: []Subtask{
		{ID: 1, Status: SubtaskFailed},
		{ID: 2, Status: SubtaskPending, Upstreams: []int64{1}},
		{ID: 3, Status: SubtaskSuccessful},
		{ID: 4, Status: SubtaskPending, Upstreams: []int64{3}},
	}}
	advance(tk, time.Now())
	if tk.Subtasks[3].Status != SubtaskReady || tk.Status != StatusRunning {
		t.Fatalf("branch two: %v, task %s; want READY and RUNNING", tk.Subtasks[3].Status, tk.Status)
	}
	tk.Subtasks[3].Status = SubtaskSuccessful
	advance(tk, time.Now())
	if tk.Status != StatusFailed {
		t.Fatalf("task %s, want FAILED", tk.Status)
	}
}

func TestStartAndFinish(t *testing.T) {
	now := time.Now()
	st := Subtask{Status: SubtaskReady, Message: "old"}
	start(&st, "10.0.0.1", now)
	if st.Status != SubtaskRunning || st.Executor != "10.0.0.1" || !st.StartTime.Equal(now) || st.Message != "" {
		t.Fatalf("after start: %+v", st)
	}
	tk := &Task{Operation: OpExecute}
	finish(tk, &st, Result{Message: "done"}, now)
	if st.Status != SubtaskSuccessful || st.Message != "done" || st.EndTime.IsZero() {
		t.Fatalf("after success: %+v", st)
	}
	st.Status = SubtaskRunning
	finish(tk, &st, Result{Err: errors.New("host 7: agentd not connected")}, now)
	if st.Status != SubtaskFailed || st.Message != "host 7: agentd not connected" {
		t.Fatalf("after failure: %+v", st)
	}
}

func TestLogHeader(t *testing.T) {
	at := time.Date(2021, 8, 25, 15, 9, 32, 697e6, time.FixedZone("", 8*3600))
	want := "############{EXECUTE}{2021-08-25T15:09:32.697+08:00}############"
	if got := logHeader(OpExecute, at); got != want {
		t.Fatalf("got %s, want %s", got, want)
	}
}

func equal(a, b []SubtaskStatus) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
