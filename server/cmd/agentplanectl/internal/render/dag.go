package render

import (
	"cmp"
	"slices"
	"strconv"
	"strings"
	"time"

	taskv1 "agentplane/gen/agentplane/task/v1"
)

// Group is one step of a task's DAG: the subtasks at the same depth with
// the same name. A single-host task has one subtask per group; a batch has
// one per host (its branches run the same chain).
type Group struct {
	Name   string
	Depth  int // longest path from a root
	Counts map[taskv1.SubtaskStatus]int
	N      int
	Start  time.Time // the earliest start
	End    time.Time // the latest end, zero while one has not ended
	IDs    []int64   // its subtasks' ids
}

// View is what following a task draws: its groups in DAG order and, for a
// batch, the progress of its branches (one per host).
type View struct {
	Task   *taskv1.Task
	Groups []*Group
	Batch  bool
	// Branches by outcome: a branch is failed when one of its subtasks
	// is FAILED, done when all are SUCCESSFUL.
	Branches, Done, Failed int
	// FailedHosts are the hosts of the failed branches, in branch order.
	FailedHosts []int64
}

// NewView computes the view of t.
func NewView(t *taskv1.Task) *View {
	v := &View{Task: t, Batch: t.GetContext().GetParallel()}
	depth := depths(t.GetSubtasks())
	byKey := map[string]*Group{}
	type branch struct{ failed, done bool }
	branches := map[int32]*branch{}
	for _, st := range t.GetSubtasks() {
		d := depth[st.GetId()]
		key := strconv.Itoa(d) + "\x00" + st.GetName()
		g := byKey[key]
		if g == nil {
			g = &Group{Name: st.GetName(), Depth: d, Counts: map[taskv1.SubtaskStatus]int{}}
			byKey[key] = g
			v.Groups = append(v.Groups, g)
		}
		g.N++
		g.Counts[st.GetStatus()]++
		g.IDs = append(g.IDs, st.GetId())
		if s := st.GetStartTime(); s != nil && (g.Start.IsZero() || s.AsTime().Before(g.Start)) {
			g.Start = s.AsTime()
		}
		b := branches[st.GetParallelIdx()]
		if b == nil {
			b = &branch{done: true}
			branches[st.GetParallelIdx()] = b
		}
		b.failed = b.failed || st.GetStatus() == taskv1.SubtaskStatus_SUBTASK_STATUS_FAILED
		b.done = b.done && st.GetStatus() == taskv1.SubtaskStatus_SUBTASK_STATUS_SUCCESSFUL
	}
	for _, g := range v.Groups {
		g.End = groupEnd(t, g)
		// The clock of a group left unfinished stops with its task.
		if g.End.IsZero() && !g.Start.IsZero() && TaskFinal(t) && t.GetEndTime() != nil {
			g.End = t.GetEndTime().AsTime()
		}
	}
	slices.SortStableFunc(v.Groups, func(a, b *Group) int { return cmp.Compare(a.Depth, b.Depth) })
	idx := make([]int32, 0, len(branches))
	for i := range branches {
		idx = append(idx, i)
	}
	slices.Sort(idx)
	v.Branches = len(idx)
	for _, i := range idx {
		switch b := branches[i]; {
		case b.failed:
			v.Failed++
			v.FailedHosts = append(v.FailedHosts, BranchHost(t, i))
		case b.done:
			v.Done++
		}
	}
	return v
}

// groupEnd is the latest end of g's subtasks, zero while one has none.
func groupEnd(t *taskv1.Task, g *Group) time.Time {
	var end time.Time
	ids := map[int64]bool{}
	for _, id := range g.IDs {
		ids[id] = true
	}
	for _, st := range t.GetSubtasks() {
		if !ids[st.GetId()] {
			continue
		}
		e := st.GetEndTime()
		if e == nil || !Final(st.GetStatus()) {
			return time.Time{}
		}
		if e.AsTime().After(end) {
			end = e.AsTime()
		}
	}
	return end
}

// depths is each subtask's longest path from a root of the DAG.
func depths(sts []*taskv1.Subtask) map[int64]int {
	up := map[int64][]int64{}
	for _, st := range sts {
		up[st.GetId()] = st.GetUpstreams()
	}
	d := map[int64]int{}
	var walk func(id int64, seen int) int
	walk = func(id int64, seen int) int {
		if v, ok := d[id]; ok {
			return v
		}
		best := 0
		if seen <= len(sts) { // a cycle cannot be, but must not loop
			for _, u := range up[id] {
				best = max(best, walk(u, seen+1)+1)
			}
		}
		d[id] = best
		return best
	}
	for _, st := range sts {
		walk(st.GetId(), 0)
	}
	return d
}

// Final reports whether a subtask's state is final.
func Final(s taskv1.SubtaskStatus) bool {
	return s == taskv1.SubtaskStatus_SUBTASK_STATUS_FAILED || s == taskv1.SubtaskStatus_SUBTASK_STATUS_SUCCESSFUL
}

// TaskFinal reports whether a task has ended.
func TaskFinal(t *taskv1.Task) bool {
	s := t.GetStatus()
	return s == taskv1.TaskStatus_TASK_STATUS_SUCCESSFUL || s == taskv1.TaskStatus_TASK_STATUS_FAILED
}

// BranchHost is the host of a branch: the batch's host_ids at its parallel
// index, else the task's host.
func BranchHost(t *taskv1.Task, idx int32) int64 {
	ids := t.GetContext().GetListMap()["host_ids"].GetValues()
	if idx >= 0 && int(idx) < len(ids) {
		if id, err := strconv.ParseInt(ids[idx], 10, 64); err == nil {
			return id
		}
	}
	return t.GetHostId()
}

// State is the group's state: the one state all its subtasks share, else
// its counts by state ("2 SUCCESSFUL, 1 RUNNING").
func (g *Group) State() string {
	if len(g.Counts) == 1 {
		for s := range g.Counts {
			return SubtaskState(s)
		}
	}
	var parts []string
	for _, s := range stateOrder {
		if n := g.Counts[s]; n > 0 {
			parts = append(parts, strconv.Itoa(n)+" "+SubtaskState(s))
		}
	}
	return strings.Join(parts, ", ")
}

// stateOrder lists subtask states from the most telling.
var stateOrder = []taskv1.SubtaskStatus{
	taskv1.SubtaskStatus_SUBTASK_STATUS_FAILED, taskv1.SubtaskStatus_SUBTASK_STATUS_RUNNING,
	taskv1.SubtaskStatus_SUBTASK_STATUS_CANCELING, taskv1.SubtaskStatus_SUBTASK_STATUS_READY,
	taskv1.SubtaskStatus_SUBTASK_STATUS_PENDING, taskv1.SubtaskStatus_SUBTASK_STATUS_SUCCESSFUL,
}

// Active reports whether one of the group's subtasks is running.
func (g *Group) Active() bool {
	return g.Counts[taskv1.SubtaskStatus_SUBTASK_STATUS_RUNNING]+g.Counts[taskv1.SubtaskStatus_SUBTASK_STATUS_CANCELING] > 0
}

// Elapsed is how long the group has run: from its first start to its last
// end, or to now while it runs; 0 before it starts.
func (g *Group) Elapsed(now time.Time) time.Duration {
	if g.Start.IsZero() {
		return 0
	}
	if g.End.IsZero() {
		return now.Sub(g.Start)
	}
	return g.End.Sub(g.Start)
}

// Mark is the group's one-character state: ✓ all SUCCESSFUL, ✗ one FAILED
// and none running, · not started; "" while it runs (a spinner's place).
func (g *Group) Mark() string {
	switch {
	case g.Active():
		return ""
	case g.Counts[taskv1.SubtaskStatus_SUBTASK_STATUS_FAILED] > 0:
		return "✗"
	case g.Counts[taskv1.SubtaskStatus_SUBTASK_STATUS_SUCCESSFUL] == g.N:
		return "✓"
	}
	return "·"
}

// SubtaskState is a subtask status without its prefix: RUNNING.
func SubtaskState(s taskv1.SubtaskStatus) string { return Enum(s.String(), "SUBTASK_STATUS_") }

// TaskState is a task status without its prefix: SUCCESSFUL.
func TaskState(s taskv1.TaskStatus) string { return Enum(s.String(), "TASK_STATUS_") }

// TaskElapsed is how long the task has run (to now while it runs).
func TaskElapsed(t *taskv1.Task, now time.Time) time.Duration {
	if t.GetStartTime() == nil {
		return 0
	}
	end := now
	if TaskFinal(t) && t.GetEndTime() != nil {
		end = t.GetEndTime().AsTime()
	}
	return end.Sub(t.GetStartTime().AsTime())
}
