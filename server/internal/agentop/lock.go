package agentop

import (
	"context"

	"agentplane/server/internal/host"
	"agentplane/server/internal/task"
)

// HostResource is host id's agent-operation lock, as a task resource: the
// one place where an agent operation (stop, start, restart, and their batch
// forms) holds its host. The lock is stored as the host's OpTaskID; while a
// task holds it, no other agent operation on the host can be created
// (ErrConflict naming the holder). A stop's host lock is taken:
//
//   - when the task is created: plan lists the task's hosts as the plan's
//     Resources, and the store takes them in the transaction that creates
//     the task (store.CreateTask);
//   - when an operator retries or rolls back the ended task: the engine
//     takes again, in the same transaction as that change, what Holds names
//     for the subtasks that will run (the server sets task.Config.Holds to
//     Holds; store.UpdateTask);
//   - by Prepare, should the task not hold it then (holdHost).
//
// And it is released:
//
//   - by Finish, once the host's chain is done, with the agent's new status
//     (releaseHost): a batch frees each host as its branch ends;
//   - when the task ends, whatever its status: the store releases every
//     resource of a task in the step that makes it final
//     (store.UpdateTask).
func HostResource(id int64) task.Resource {
	return task.Resource{Kind: host.ResourceKind, ID: id}
}

// hostResources is the locks of hosts, in order.
func hostResources(hostIDs []int64) []task.Resource {
	rs := make([]task.Resource, len(hostIDs))
	for i, id := range hostIDs {
		rs[i] = HostResource(id)
	}
	return rs
}

// Holds names what a subtask of an agent operation holds while it runs: the
// lock of the host it acts on (none when it acts on no host). It is the
// engine's task.Config.Holds.
func Holds(st *task.Subtask) []task.Resource {
	if st.HostID == 0 {
		return nil
	}
	return []task.Resource{HostResource(st.HostID)}
}

// holdHost takes host hostID's lock for taskID unless the task holds it
// already (holder, as read: it has since creation, or since an operator
// reopened the task), retrying while the store is down.
func holdHost(ctx context.Context, hosts Hosts, hostID, holder, taskID int64) error {
	if holder == taskID {
		return nil
	}
	return whileStoreDown(ctx, func() error { return hosts.LockHost(ctx, hostID, taskID) })
}

// releaseHost records the agent's status st on host hostID after taskID's
// operation and releases the host's lock (if taskID holds it), retrying
// while the store is down.
func releaseHost(ctx context.Context, hosts Hosts, hostID, taskID int64, st host.AgentStatus) error {
	return whileStoreDown(ctx, func() error { return hosts.FinishAgentOperation(ctx, hostID, taskID, st) })
}
