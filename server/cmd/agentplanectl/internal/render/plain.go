package render

import (
	"fmt"
	"io"
	"strings"
	"time"

	taskv1 "agentplane/gen/agentplane/task/v1"
)

// Follower draws a task being followed, one update at a time.
type Follower interface {
	// Update draws the task as it is now.
	Update(t *taskv1.Task)
	// Note tells something about the watch itself (a lost stream resumed).
	Note(msg string)
	// Close ends the drawing; the follower is not used again.
	Close()
}

// HostNamer names a host by id ("" when unknown).
type HostNamer func(id int64) string

// HostLabel is "name" or "host N" when the name is unknown.
func HostLabel(names HostNamer, id int64) string {
	if names != nil {
		if n := names(id); n != "" {
			return n
		}
	}
	return fmt.Sprintf("host %d", id)
}

// PlainLimit is the number of subtasks up to which plain output prints every
// subtask's changes; a larger task (a big batch) prints its failures and a
// summary line at most every PlainSummaryEvery.
const (
	PlainLimit        = 60
	PlainSummaryEvery = 2 * time.Second
)

// Plain prints a line per change, for output that is not a terminal:
//
//	10:01:02  task 7 Stop OCP agent: RUNNING
//	10:01:02  subtask 21 Prepare stop OCP agent: RUNNING
//	10:01:03  subtask 21 Prepare stop OCP agent: SUCCESSFUL (0.4s)
type Plain struct {
	w     io.Writer
	names HostNamer
	now   func() time.Time

	seen        map[int64]string // subtask id → state and attempt last printed
	taskState   string
	summary     string
	summaryTime time.Time
	last        *taskv1.Task
}

// NewPlain returns a plain follower writing to w.
func NewPlain(w io.Writer, names HostNamer) *Plain {
	return &Plain{w: w, names: names, now: time.Now, seen: map[int64]string{}}
}

func (p *Plain) stamp() string { return p.now().Local().Format("15:04:05") }

// Update prints what changed since the last update.
func (p *Plain) Update(t *taskv1.Task) {
	p.last = t
	if p.taskState == "" {
		p.printTask(t)
	}
	every := len(t.GetSubtasks()) <= PlainLimit
	for _, st := range t.GetSubtasks() {
		key := fmt.Sprintf("%s/%d", st.GetStatus(), st.GetRunTime())
		if p.seen[st.GetId()] == key {
			continue
		}
		p.seen[st.GetId()] = key
		failed := st.GetStatus() == taskv1.SubtaskStatus_SUBTASK_STATUS_FAILED
		if every || failed {
			fmt.Fprintf(p.w, "%s  %s\n", p.stamp(), SubtaskLine(t, st, p.names))
		}
	}
	if !every {
		p.printSummary(NewView(t), false)
	}
	p.printTask(t)
}

// printTask prints the task's state when it changed.
func (p *Plain) printTask(t *taskv1.Task) {
	if s := TaskState(t.GetStatus()); s != p.taskState {
		p.taskState = s
		fmt.Fprintf(p.w, "%s  task %d %s: %s\n", p.stamp(), t.GetId(), t.GetName(), s)
	}
}

// printSummary prints the batch's counts when they changed, at most every
// PlainSummaryEvery unless force.
func (p *Plain) printSummary(v *View, force bool) {
	s := BatchSummary(v)
	if s == p.summary || (!force && p.now().Sub(p.summaryTime) < PlainSummaryEvery) {
		return
	}
	p.summary, p.summaryTime = s, p.now()
	fmt.Fprintf(p.w, "%s  %s\n", p.stamp(), s)
}

// Note prints the note.
func (p *Plain) Note(msg string) { fmt.Fprintf(p.w, "%s  %s\n", p.stamp(), msg) }

// Close prints a big batch's last counts.
func (p *Plain) Close() {
	if p.last != nil && len(p.last.GetSubtasks()) > PlainLimit {
		p.printSummary(NewView(p.last), true)
	}
}

// SubtaskLine is one subtask's state, with its host in a batch, its elapsed
// time once final and its message when it failed:
// "subtask 21 Stop all OCP agent processes (db-1): FAILED (2.0s): agentd lost".
func SubtaskLine(t *taskv1.Task, st *taskv1.Subtask, names HostNamer) string {
	var b strings.Builder
	fmt.Fprintf(&b, "subtask %d %s", st.GetId(), st.GetName())
	if t.GetContext().GetParallel() {
		fmt.Fprintf(&b, " (%s)", HostLabel(names, BranchHost(t, st.GetParallelIdx())))
	}
	fmt.Fprintf(&b, ": %s", SubtaskState(st.GetStatus()))
	if st.GetRunTime() > 1 {
		fmt.Fprintf(&b, ", attempt %d", st.GetRunTime())
	}
	if Final(st.GetStatus()) && st.GetStartTime() != nil && st.GetEndTime() != nil {
		fmt.Fprintf(&b, " (%s)", Duration(st.GetEndTime().AsTime().Sub(st.GetStartTime().AsTime())))
	}
	if st.GetStatus() == taskv1.SubtaskStatus_SUBTASK_STATUS_FAILED && st.GetMessage() != "" {
		fmt.Fprintf(&b, ": %s", st.GetMessage())
	}
	return b.String()
}

// BatchSummary is a batch's branches by outcome:
// "hosts: 97/100 done, 2 failed, 1 running".
func BatchSummary(v *View) string {
	return fmt.Sprintf("hosts: %d/%d done, %d failed, %d running", v.Done, v.Branches, v.Failed, v.Branches-v.Done-v.Failed)
}

// FailedHostList names the failed hosts, at most max of them:
// "db-1, db-7 (+3 more)".
func FailedHostList(v *View, names HostNamer, maxNames int) string {
	var parts []string
	for i, h := range v.FailedHosts {
		if i == maxNames {
			parts = append(parts, fmt.Sprintf("(+%d more)", len(v.FailedHosts)-maxNames))
			break
		}
		parts = append(parts, HostLabel(names, h))
	}
	s := strings.Join(parts, ", ")
	return strings.Replace(s, ", (+", " (+", 1)
}
