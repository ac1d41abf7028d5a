package task

import (
	"errors"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"agentplane/server/internal/errs"
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

// build returns task 7 whose subtasks 1, 2, ... form a chain, each given as
// "STATUS/OPERATION/RUNTIME", with its status derived. Subtasks that have
// run carry start and end times and a message, so that tests can see them
// reset.
func build(op Operation, subs string) *Task {
	start := time.Date(2024, 5, 1, 11, 0, 0, 0, time.UTC)
	tk := &Task{ID: 7, Operation: op, StartTime: start, Context: Context{StringMap: map[string]string{}}}
	fields := strings.Fields(subs)
	for i, f := range fields {
		parts := strings.Split(f, "/")
		n, err := strconv.Atoi(parts[2])
		if len(parts) != 3 || err != nil {
			panic("bad subtask " + f)
		}
		st := Subtask{ID: int64(i + 1), TaskID: 7, Name: "s" + strconv.Itoa(i+1), Status: SubtaskStatus(parts[0]),
			Operation: Operation(parts[1]), RunTime: n, Upstreams: []int64{}, Downstreams: []int64{}}
		if i > 0 {
			st.Upstreams = []int64{int64(i)}
		}
		if i < len(fields)-1 {
			st.Downstreams = []int64{int64(i + 2)}
		}
		if st.Status != SubtaskPending && st.Status != SubtaskReady {
			st.StartTime = start
		}
		if st.Status == SubtaskFailed || st.Status == SubtaskSuccessful {
			st.EndTime, st.Message = start.Add(time.Second), "earlier outcome"
		}
		tk.Subtasks = append(tk.Subtasks, st)
	}
	tk.Status = derive(tk)
	if tk.Status.Final() {
		tk.EndTime = start.Add(time.Minute)
	}
	return tk
}

// show renders a task's subtasks as build takes them.
func show(tk *Task) string {
	var parts []string
	for _, st := range tk.Subtasks {
		parts = append(parts, fmt.Sprintf("%s/%s/%d", st.Status, st.Operation, st.RunTime))
	}
	return strings.Join(parts, " ")
}

func clone(tk *Task) *Task {
	c := cloneTask(tk)
	c.Context.StringMap = maps.Clone(tk.Context.StringMap)
	return c
}

// TestTransitions applies every operator operation to every relevant state,
// forward and rolling back: an allowed one yields exactly the listed
// subtasks and task operation; a refused one fails with the listed kind, a
// message naming the task, the operation and the state, and leaves the task
// unchanged.
func TestTransitions(t *testing.T) {
	now := time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)
	type op struct {
		name string // as it appears in a refusal
		do   func(*Task) error
	}
	retryT := op{"retry", retryTask}
	rollbackT := op{"roll back", rollbackTask}
	retryS := func(id int64) op {
		return op{fmt.Sprintf("retry subtask %d", id), func(tk *Task) error { return retrySubtask(tk, id) }}
	}
	skipS := func(id int64) op {
		return op{fmt.Sprintf("skip subtask %d", id), func(tk *Task) error { return skipSubtask(tk, id, now) }}
	}
	cancelS := func(id int64) op {
		return op{fmt.Sprintf("cancel subtask %d", id), func(tk *Task) error { return cancelSubtask(tk, id) }}
	}
	const (
		fwd  = OpExecute
		back = OpRollback
	)
	type test struct {
		name   string
		taskOp Operation // the task's operation before
		subs   string    // the subtasks before
		op     op
		status Status // the task's status before (checks the fixture)

		// allowed
		want       string    // the subtasks after
		wantOp     Operation // the task's operation after
		wantStatus Status    // the task's status once advanced

		// refused
		wantErr error
		state   string // named in the refusal
	}
	tests := []test{
		// Retry task: only a FAILED task; every FAILED subtask again, with
		// RETRY forward and ROLLBACK (re-running the rollback) rolling back.
		{name: "retry failed task", taskOp: fwd, status: StatusFailed,
			subs: "SUCCESSFUL/EXECUTE/1 FAILED/EXECUTE/1 PENDING/EXECUTE/1", op: retryT,
			want: "SUCCESSFUL/EXECUTE/1 READY/RETRY/2 PENDING/EXECUTE/1", wantOp: OpRetry, wantStatus: StatusRunning},
		{name: "retry failed task again", taskOp: OpRetry, status: StatusFailed,
			subs: "SUCCESSFUL/EXECUTE/1 FAILED/RETRY/2 PENDING/EXECUTE/1", op: retryT,
			want: "SUCCESSFUL/EXECUTE/1 READY/RETRY/3 PENDING/EXECUTE/1", wantOp: OpRetry, wantStatus: StatusRunning},
		{name: "retry canceled subtask's task", taskOp: fwd, status: StatusFailed,
			subs: "SUCCESSFUL/EXECUTE/1 FAILED/CANCEL/1 PENDING/EXECUTE/1", op: retryT,
			want: "SUCCESSFUL/EXECUTE/1 READY/RETRY/2 PENDING/EXECUTE/1", wantOp: OpRetry, wantStatus: StatusRunning},
		{name: "retry running task", taskOp: fwd, status: StatusRunning,
			subs: "SUCCESSFUL/EXECUTE/1 RUNNING/EXECUTE/1 PENDING/EXECUTE/1", op: retryT,
			wantErr: errs.ErrFailedPrecondition, state: "task is RUNNING"},
		{name: "retry successful task", taskOp: fwd, status: StatusSuccessful,
			subs: "SUCCESSFUL/EXECUTE/1 SUCCESSFUL/EXECUTE/1 SUCCESSFUL/EXECUTE/1", op: retryT,
			wantErr: errs.ErrFailedPrecondition, state: "task is SUCCESSFUL"},
		{name: "retry failed rollback", taskOp: back, status: StatusFailed,
			subs: "READY/ROLLBACK/2 FAILED/ROLLBACK/2 PENDING/ROLLBACK/2", op: retryT,
			want: "READY/ROLLBACK/2 READY/ROLLBACK/3 PENDING/ROLLBACK/2", wantOp: OpRollback, wantStatus: StatusRunning},
		{name: "retry running rollback", taskOp: back, status: StatusRunning,
			subs: "READY/ROLLBACK/2 RUNNING/ROLLBACK/2 PENDING/ROLLBACK/2", op: retryT,
			wantErr: errs.ErrFailedPrecondition, state: "task is RUNNING"},
		{name: "retry rolled back task", taskOp: back, status: StatusSuccessful,
			subs: "PENDING/ROLLBACK/2 PENDING/ROLLBACK/2 PENDING/EXECUTE/1", op: retryT,
			wantErr: errs.ErrFailedPrecondition, state: "task is SUCCESSFUL"},

		// Rollback task: only a FAILED task; what ran waits READY, attempt
		// + 1; what never ran stays PENDING; rolling back, failed rollbacks
		// run again.
		{name: "roll back failed task", taskOp: fwd, status: StatusFailed,
			subs: "SUCCESSFUL/EXECUTE/1 FAILED/EXECUTE/1 PENDING/EXECUTE/1", op: rollbackT,
			want: "READY/ROLLBACK/2 READY/ROLLBACK/2 PENDING/EXECUTE/1", wantOp: OpRollback, wantStatus: StatusRunning},
		{name: "roll back retried task", taskOp: OpRetry, status: StatusFailed,
			subs: "SUCCESSFUL/EXECUTE/1 SUCCESSFUL/RETRY/2 FAILED/CANCEL/1", op: rollbackT,
			want: "READY/ROLLBACK/2 READY/ROLLBACK/3 READY/ROLLBACK/2", wantOp: OpRollback, wantStatus: StatusRunning},
		{name: "roll back running task", taskOp: fwd, status: StatusRunning,
			subs: "SUCCESSFUL/EXECUTE/1 RUNNING/EXECUTE/1 PENDING/EXECUTE/1", op: rollbackT,
			wantErr: errs.ErrFailedPrecondition, state: "task is RUNNING"},
		{name: "roll back successful task", taskOp: fwd, status: StatusSuccessful,
			subs: "SUCCESSFUL/EXECUTE/1 SUCCESSFUL/EXECUTE/1 SUCCESSFUL/EXECUTE/1", op: rollbackT,
			wantErr: errs.ErrFailedPrecondition, state: "task is SUCCESSFUL"},
		{name: "roll back failed rollback", taskOp: back, status: StatusFailed,
			subs: "READY/ROLLBACK/2 FAILED/ROLLBACK/2 PENDING/ROLLBACK/2", op: rollbackT,
			want: "READY/ROLLBACK/2 READY/ROLLBACK/3 PENDING/ROLLBACK/2", wantOp: OpRollback, wantStatus: StatusRunning},
		{name: "roll back running rollback", taskOp: back, status: StatusRunning,
			subs: "READY/ROLLBACK/2 RUNNING/ROLLBACK/2 PENDING/ROLLBACK/2", op: rollbackT,
			wantErr: errs.ErrFailedPrecondition, state: "task is RUNNING"},
		{name: "roll back rolled back task", taskOp: back, status: StatusSuccessful,
			subs: "PENDING/ROLLBACK/2 PENDING/ROLLBACK/2 PENDING/EXECUTE/1", op: rollbackT,
			wantErr: errs.ErrFailedPrecondition, state: "task is SUCCESSFUL"},

		// The allowed subtask operations; every other state is refused below.
		{name: "retry failed subtask", taskOp: fwd, status: StatusFailed,
			subs: "SUCCESSFUL/EXECUTE/1 FAILED/EXECUTE/1 PENDING/EXECUTE/1", op: retryS(2),
			want: "SUCCESSFUL/EXECUTE/1 READY/RETRY/2 PENDING/EXECUTE/1", wantOp: OpRetry, wantStatus: StatusRunning},
		{name: "retry failed subtask rolling back", taskOp: back, status: StatusFailed,
			subs: "READY/ROLLBACK/2 FAILED/ROLLBACK/2 PENDING/ROLLBACK/2", op: retryS(2),
			want: "READY/ROLLBACK/2 READY/ROLLBACK/3 PENDING/ROLLBACK/2", wantOp: OpRollback, wantStatus: StatusRunning},
		{name: "skip failed subtask", taskOp: fwd, status: StatusFailed,
			subs: "SUCCESSFUL/EXECUTE/1 FAILED/EXECUTE/1 PENDING/EXECUTE/1", op: skipS(2),
			want: "SUCCESSFUL/EXECUTE/1 SUCCESSFUL/SKIP/1 PENDING/EXECUTE/1", wantOp: OpExecute, wantStatus: StatusRunning},
		{name: "skip last failed subtask", taskOp: OpRetry, status: StatusFailed,
			subs: "SUCCESSFUL/EXECUTE/1 SUCCESSFUL/EXECUTE/1 FAILED/RETRY/3", op: skipS(3),
			want: "SUCCESSFUL/EXECUTE/1 SUCCESSFUL/EXECUTE/1 SUCCESSFUL/SKIP/3", wantOp: OpRetry, wantStatus: StatusSuccessful},
		{name: "skip failed subtask rolling back", taskOp: back, status: StatusFailed,
			subs: "READY/ROLLBACK/2 FAILED/ROLLBACK/2 PENDING/ROLLBACK/2", op: skipS(2),
			want: "READY/ROLLBACK/2 PENDING/ROLLBACK_SKIP/2 PENDING/ROLLBACK/2", wantOp: OpRollback, wantStatus: StatusRunning},
		{name: "cancel running subtask", taskOp: fwd, status: StatusRunning,
			subs: "SUCCESSFUL/EXECUTE/1 RUNNING/EXECUTE/1 PENDING/EXECUTE/1", op: cancelS(2),
			want: "SUCCESSFUL/EXECUTE/1 CANCELING/CANCEL/1 PENDING/EXECUTE/1", wantOp: OpExecute, wantStatus: StatusRunning},
		{name: "cancel running subtask rolling back", taskOp: back, status: StatusRunning,
			subs: "READY/ROLLBACK/2 RUNNING/ROLLBACK/2 PENDING/ROLLBACK/2", op: cancelS(2),
			want: "READY/ROLLBACK/2 CANCELING/CANCEL/2 PENDING/ROLLBACK/2", wantOp: OpRollback, wantStatus: StatusRunning},
	}
	// Every subtask operation on every other subtask state, forward and
	// rolling back, is refused; as is one on a subtask not in the task.
	all := []SubtaskStatus{SubtaskPending, SubtaskReady, SubtaskRunning, SubtaskCanceling, SubtaskFailed, SubtaskSuccessful}
	for _, so := range []struct {
		op      func(int64) op
		allowed SubtaskStatus
	}{{retryS, SubtaskFailed}, {skipS, SubtaskFailed}, {cancelS, SubtaskRunning}} {
		for _, s := range all {
			if s == so.allowed {
				continue
			}
			o := so.op(2)
			tests = append(tests,
				test{name: o.name + " " + string(s), taskOp: fwd,
					subs: "SUCCESSFUL/EXECUTE/1 " + string(s) + "/EXECUTE/1 PENDING/EXECUTE/1", op: o,
					wantErr: errs.ErrFailedPrecondition, state: fmt.Sprintf("subtask is %s, not %s", s, so.allowed)},
				test{name: o.name + " " + string(s) + " rolling back", taskOp: back,
					subs: "READY/ROLLBACK/2 " + string(s) + "/ROLLBACK/2 PENDING/ROLLBACK/2", op: o,
					wantErr: errs.ErrFailedPrecondition, state: fmt.Sprintf("subtask is %s, not %s", s, so.allowed)})
		}
		o := so.op(99)
		tests = append(tests, test{name: o.name + " unknown", taskOp: fwd,
			subs: "SUCCESSFUL/EXECUTE/1 FAILED/EXECUTE/1", op: o, wantErr: errs.ErrNotFound, state: "subtask 99 is not in task 7"})
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tk := build(tt.taskOp, tt.subs)
			if tt.status != "" && tk.Status != tt.status {
				t.Fatalf("fixture: task is %s, want %s", tk.Status, tt.status)
			}
			before := clone(tk)
			err := tt.op.do(tk)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("err = %v, want %v", err, tt.wantErr)
				}
				named := []string{"task 7", tt.op.name, tt.state}
				if errors.Is(tt.wantErr, errs.ErrNotFound) {
					named = []string{tt.state} // names the subtask and the task
				}
				for _, s := range named {
					if !strings.Contains(err.Error(), s) {
						t.Errorf("error %q does not name %q", err, s)
					}
				}
				if !reflect.DeepEqual(tk, before) {
					t.Errorf("refused operation changed the task:\n got %+v\nwant %+v", tk, before)
				}
				return
			}
			if err != nil {
				t.Fatalf("err = %v, want none", err)
			}
			if got := show(tk); got != tt.want {
				t.Errorf("subtasks\n got %s\nwant %s", got, tt.want)
			}
			if tk.Operation != tt.wantOp {
				t.Errorf("task operation %s, want %s", tk.Operation, tt.wantOp)
			}
			for i := range tk.Subtasks {
				got, was := &tk.Subtasks[i], &before.Subtasks[i]
				switch {
				case got.Status == SubtaskReady && was.Status != SubtaskReady: // readied again
					if !got.StartTime.IsZero() || !got.EndTime.IsZero() || got.Message != "" {
						t.Errorf("readied subtask %d keeps its last attempt: %+v", got.ID, got)
					}
				case got.Operation == OpSkip || got.Operation == OpRollbackSkip && was.Operation != OpRollbackSkip:
					if !got.EndTime.Equal(now) || got.Message != "skipped by an operator" {
						t.Errorf("skipped subtask %d: end %v, message %q", got.ID, got.EndTime, got.Message)
					}
				case !reflect.DeepEqual(*got, *was) && got.Status != SubtaskCanceling:
					t.Errorf("subtask %d changed:\n got %+v\nwant %+v", got.ID, got, was)
				}
			}
			advance(tk, now)
			if tk.Status != tt.wantStatus {
				t.Errorf("task status once advanced %s, want %s", tk.Status, tt.wantStatus)
			}
		})
	}
}

// launchRunnable starts every runnable READY subtask, as the engine does,
// and returns their ids.
func launchRunnable(tk *Task, now time.Time) []int64 {
	advance(tk, now)
	var ids []int64
	for i := range tk.Subtasks {
		if st := &tk.Subtasks[i]; st.Status == SubtaskReady && runnable(tk, st) {
			start(st, "127.0.0.1", now)
			ids = append(ids, st.ID)
		}
	}
	advance(tk, now)
	return ids
}

// complete finishes the running subtasks ids with res, and advances.
func complete(t *testing.T, tk *Task, res Result, now time.Time, ids ...int64) {
	t.Helper()
	for _, id := range ids {
		st := tk.Subtask(id)
		if st == nil || !st.Status.active() {
			t.Fatalf("subtask %d is not running: %+v", id, st)
		}
		finish(tk, st, res, now)
	}
	advance(tk, now)
}

func TestRollbackRunsInReverseOrder(t *testing.T) {
	now := time.Now()
	tk := build(OpExecute, "SUCCESSFUL/EXECUTE/1 SUCCESSFUL/EXECUTE/1 FAILED/EXECUTE/1")
	if err := rollbackTask(tk); err != nil {
		t.Fatal(err)
	}
	for _, want := range []int64{3, 2, 1} {
		got := launchRunnable(tk, now)
		if !slices.Equal(got, []int64{want}) {
			t.Fatalf("runnable %v, want [%d] (%s)", got, want, show(tk))
		}
		if tk.Status != StatusRunning || !tk.EndTime.IsZero() {
			t.Fatalf("task %s end %v while rolling back", tk.Status, tk.EndTime)
		}
		complete(t, tk, Result{Message: "undone"}, now, want)
	}
	if got := launchRunnable(tk, now); len(got) != 0 {
		t.Fatalf("runnable after the rollback: %v", got)
	}
	if want := "PENDING/ROLLBACK/2 PENDING/ROLLBACK/2 PENDING/ROLLBACK/2"; show(tk) != want {
		t.Fatalf("subtasks %s, want %s", show(tk), want)
	}
	if tk.Status != StatusSuccessful || tk.Operation != OpRollback || tk.EndTime.IsZero() {
		t.Fatalf("task %s op %s end %v, want SUCCESSFUL ROLLBACK ended", tk.Status, tk.Operation, tk.EndTime)
	}
}

func TestRollbackPassesOverWhatDidNotRun(t *testing.T) {
	// 1 was skipped, 2 succeeded, 3 failed, 4 never ran: only 3 and 2 are
	// rolled back; 1 is PENDING at once (ROLLBACK_SKIP), 4 stays as it was.
	now := time.Now()
	tk := build(OpRetry, "SUCCESSFUL/SKIP/2 SUCCESSFUL/EXECUTE/1 FAILED/RETRY/2 PENDING/EXECUTE/1")
	if err := rollbackTask(tk); err != nil {
		t.Fatal(err)
	}
	if want := "PENDING/ROLLBACK_SKIP/2 READY/ROLLBACK/2 READY/ROLLBACK/3 PENDING/EXECUTE/1"; show(tk) != want {
		t.Fatalf("subtasks %s, want %s", show(tk), want)
	}
	var order []int64
	for {
		ids := launchRunnable(tk, now)
		if len(ids) == 0 {
			break
		}
		order = append(order, ids...)
		complete(t, tk, Result{}, now, ids...)
	}
	if !slices.Equal(order, []int64{3, 2}) {
		t.Fatalf("rolled back %v, want [3 2]", order)
	}
	if want := "PENDING/ROLLBACK_SKIP/2 PENDING/ROLLBACK/2 PENDING/ROLLBACK/3 PENDING/EXECUTE/1"; show(tk) != want {
		t.Fatalf("subtasks %s, want %s", show(tk), want)
	}
	if tk.Status != StatusSuccessful {
		t.Fatalf("task %s, want SUCCESSFUL", tk.Status)
	}
}

func TestRollbackProhibited(t *testing.T) {
	failed := "SUCCESSFUL/EXECUTE/1 FAILED/EXECUTE/1 PENDING/EXECUTE/1"
	tests := []struct {
		name     string
		context  string // context.prohibit_rollback
		prohibit int    // index of the subtask marked ProhibitRollback, -1 for none
		subs     string
		why      string // in the error; "" when allowed
	}{
		{"context true", "true", -1, failed, "the task's context prohibits rollback"},
		{"context false", "false", -1, failed, ""},
		{"succeeded subtask", "", 0, failed, "subtask 1 (s1) prohibits rollback"},
		{"failed subtask", "", 1, failed, "subtask 2 (s2) prohibits rollback"},
		{"never ran", "", 2, failed, ""},
		{"skipped", "", 1, "SUCCESSFUL/EXECUTE/1 SUCCESSFUL/SKIP/1 FAILED/EXECUTE/1", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tk := build(OpExecute, tt.subs)
			if tt.context != "" {
				tk.Context.StringMap["prohibit_rollback"] = tt.context
			}
			if tt.prohibit >= 0 {
				tk.Subtasks[tt.prohibit].ProhibitRollback = true
			}
			before := clone(tk)
			err := rollbackTask(tk)
			if tt.why == "" {
				if err != nil || tk.Operation != OpRollback {
					t.Fatalf("err %v, operation %s; want a rollback", err, tk.Operation)
				}
				return
			}
			if !errors.Is(err, errs.ErrRollbackProhibited) || errors.Is(err, errs.ErrFailedPrecondition) {
				t.Fatalf("err = %v, want ErrRollbackProhibited only", err)
			}
			for _, s := range []string{"task 7", "roll back", tt.why} {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not name %q", err, s)
				}
			}
			if !reflect.DeepEqual(tk, before) {
				t.Errorf("refused rollback changed the task: %s", show(tk))
			}
		})
	}
	t.Run("work reports it", func(t *testing.T) {
		tk := build(OpExecute, "SUCCESSFUL/EXECUTE/1 RUNNING/EXECUTE/1 PENDING/EXECUTE/1")
		complete(t, tk, Result{Err: errors.New("half done"), ProhibitRollback: true}, time.Now(), 2)
		if tk.Status != StatusFailed || !tk.Subtasks[1].ProhibitRollback {
			t.Fatalf("task %s, subtask %+v", tk.Status, tk.Subtasks[1])
		}
		if err := rollbackTask(tk); !errors.Is(err, errs.ErrRollbackProhibited) {
			t.Fatalf("err = %v, want ErrRollbackProhibited", err)
		}
	})
}

func TestFailedRollbackRetries(t *testing.T) {
	now := time.Now()
	tk := build(OpExecute, "SUCCESSFUL/EXECUTE/1 SUCCESSFUL/EXECUTE/1 FAILED/EXECUTE/1")
	if err := rollbackTask(tk); err != nil {
		t.Fatal(err)
	}
	complete(t, tk, Result{}, now, launchRunnable(tk, now)...) // 3 rolled back
	complete(t, tk, Result{Err: errors.New("cannot undo")}, now, launchRunnable(tk, now)...)
	if want := "READY/ROLLBACK/2 FAILED/ROLLBACK/2 PENDING/ROLLBACK/2"; show(tk) != want {
		t.Fatalf("subtasks %s, want %s", show(tk), want)
	}
	if tk.Status != StatusFailed || tk.Operation != OpRollback || tk.EndTime.IsZero() {
		t.Fatalf("task %s op %s end %v, want FAILED ROLLBACK ended", tk.Status, tk.Operation, tk.EndTime)
	}
	if got := launchRunnable(tk, now); len(got) != 0 {
		t.Fatalf("subtask 1 rolled back before 2: %v", got)
	}
	if err := retryTask(tk); err != nil {
		t.Fatal(err)
	}
	if tk.Operation != OpRollback {
		t.Fatalf("retry turned the rollback into %s", tk.Operation)
	}
	for _, want := range []int64{2, 1} {
		got := launchRunnable(tk, now)
		if !slices.Equal(got, []int64{want}) {
			t.Fatalf("runnable %v, want [%d] (%s)", got, want, show(tk))
		}
		complete(t, tk, Result{}, now, got...)
	}
	if want := "PENDING/ROLLBACK/2 PENDING/ROLLBACK/3 PENDING/ROLLBACK/2"; show(tk) != want {
		t.Fatalf("subtasks %s, want %s", show(tk), want)
	}
	if tk.Status != StatusSuccessful {
		t.Fatalf("task %s, want SUCCESSFUL", tk.Status)
	}
}

func TestFinishCanceling(t *testing.T) {
	now := time.Now()
	tests := []struct {
		name    string
		taskOp  Operation
		subs    string
		res     Result
		message string
	}{
		{"work stopped", OpExecute, "SUCCESSFUL/EXECUTE/1 CANCELING/CANCEL/1 PENDING/EXECUTE/1",
			Result{Err: errors.New("canceled by an operator: context canceled")}, "canceled by an operator: context canceled"},
		{"work had finished", OpExecute, "SUCCESSFUL/EXECUTE/1 CANCELING/CANCEL/1 PENDING/EXECUTE/1",
			Result{Message: "stopped 3 processes"}, "canceled after the work had finished: stopped 3 processes"},
		{"rollback stopped", OpRollback, "READY/ROLLBACK/2 CANCELING/CANCEL/2 PENDING/ROLLBACK/2",
			Result{Err: errors.New("interrupted")}, "interrupted"},
		{"rollback had finished", OpRollback, "READY/ROLLBACK/2 CANCELING/CANCEL/2 PENDING/ROLLBACK/2",
			Result{Message: "undone"}, "canceled after the work had finished: undone"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tk := build(tt.taskOp, tt.subs)
			if tk.Status != StatusRunning {
				t.Fatalf("fixture: task %s while canceling", tk.Status)
			}
			complete(t, tk, tt.res, now, 2)
			st := tk.Subtasks[1]
			if st.Status != SubtaskFailed || st.Operation != OpCancel || st.Message != tt.message || !st.EndTime.Equal(now) {
				t.Fatalf("subtask %+v, want FAILED CANCEL %q", st, tt.message)
			}
			if tk.Status != StatusFailed || tk.Operation != tt.taskOp {
				t.Fatalf("task %s op %s, want FAILED %s", tk.Status, tk.Operation, tt.taskOp)
			}
		})
	}
}

func TestParallelBranches(t *testing.T) {
	// Two chains 1 → 2 and 3 → 4. 1 fails while 3 runs: 3 and then 4 go on;
	// the task is FAILED only once nothing runs.
	now := time.Now()
	tk := &Task{ID: 7, Operation: OpExecute, Subtasks: []Subtask{
		{ID: 1, Status: SubtaskReady, Operation: OpExecute, RunTime: 1, Downstreams: []int64{2}},
		{ID: 2, Status: SubtaskPending, Operation: OpExecute, RunTime: 1, Upstreams: []int64{1}},
		{ID: 3, Status: SubtaskReady, Operation: OpExecute, RunTime: 1, Downstreams: []int64{4}},
		{ID: 4, Status: SubtaskPending, Operation: OpExecute, RunTime: 1, Upstreams: []int64{3}},
	}}
	if got := launchRunnable(tk, now); !slices.Equal(got, []int64{1, 3}) {
		t.Fatalf("started %v, want [1 3]", got)
	}
	complete(t, tk, Result{Err: errors.New("boom")}, now, 1)
	if tk.Status != StatusRunning {
		t.Fatalf("task %s while 3 runs", tk.Status)
	}
	if err := retryTask(tk); !errors.Is(err, errs.ErrFailedPrecondition) {
		t.Fatalf("retry while running: %v", err)
	}
	complete(t, tk, Result{}, now, 3)
	if got := launchRunnable(tk, now); !slices.Equal(got, []int64{4}) || tk.Status != StatusRunning {
		t.Fatalf("started %v (task %s), want [4] RUNNING", got, tk.Status)
	}
	complete(t, tk, Result{}, now, 4)
	if tk.Status != StatusFailed || tk.EndTime.IsZero() {
		t.Fatalf("task %s end %v, want FAILED", tk.Status, tk.EndTime)
	}
	// Retrying re-runs only the failed branch.
	if err := retryTask(tk); err != nil {
		t.Fatal(err)
	}
	if got := launchRunnable(tk, now); !slices.Equal(got, []int64{1}) {
		t.Fatalf("retry started %v, want [1]", got)
	}
	complete(t, tk, Result{}, now, 1)
	complete(t, tk, Result{}, now, launchRunnable(tk, now)...)
	if tk.Status != StatusSuccessful {
		t.Fatalf("task %s (%s), want SUCCESSFUL", tk.Status, show(tk))
	}
	// Rolling back, both chains' tails start together.
	tk.Status = StatusFailed // pretend; rollback needs a FAILED task
	if err := rollbackTask(tk); err != nil {
		t.Fatal(err)
	}
	if got := launchRunnable(tk, now); !slices.Equal(got, []int64{2, 4}) {
		t.Fatalf("rollback started %v, want [2 4]", got)
	}
}
