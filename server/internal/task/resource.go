package task

import "strconv"

// Resource is something a task holds exclusively while it runs, so that no
// two tasks act on it at once: a lock, named by a kind and an id. The engine
// knows resources only by name. The maker of a plan says what its task holds
// (Plan.Resources at creation, Config.Holds for each subtask), the store
// knows what a kind locks, and the task holds its resources:
//
//   - from its creation: the store takes Plan.Resources in the transaction
//     that creates the task (ErrConflict naming the holder);
//   - again when an operator reopens the ended task (retry, rollback): the
//     store takes, in the step's transaction, the resources the subtasks that
//     will run hold (see retaken);
//   - until it ends: the store releases every resource of a task in the step
//     that makes it final. An executor may release one earlier through its
//     own store (agentop's Finish does, for a host).
type Resource struct {
	Kind string
	ID   int64
}

// String is the resource's key, as "host:42".
func (r Resource) String() string { return r.Kind + ":" + strconv.FormatInt(r.ID, 10) }

// retaken lists the resources a task takes again when it leaves a final
// status: those that holds says its subtasks that will run hold, each once.
// A subtask will run when it is READY or active, or, forward, PENDING.
func retaken(t *Task, holds func(*Subtask) []Resource) []Resource {
	if holds == nil {
		return nil
	}
	seen := map[Resource]bool{}
	var rs []Resource
	for i := range t.Subtasks {
		st := &t.Subtasks[i]
		will := st.Status == SubtaskReady || st.Status.active() || !t.RollingBack() && st.Status == SubtaskPending
		if !will {
			continue
		}
		for _, r := range holds(st) {
			if !seen[r] {
				seen[r] = true
				rs = append(rs, r)
			}
		}
	}
	return rs
}
