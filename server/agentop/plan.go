// Package agentop owns the operations on a host's OCP Agent that become
// tasks: the stop task's plan (OCP's DAG), the executors of its subtasks,
// and the host API (stop, get, list) that adapters serve.
package agentop

import (
	"strconv"
	"time"

	"agentplane/server/task"
)

// Class names of the subtasks, as OCP reports them.
const (
	ClassPrepareStop = "com.alipay.ocp.service.task.business.obagent.PrepareStopOcpAgentTask"
	ClassStopAll     = "com.alipay.ocp.service.task.business.obagent.StopAllOcpAgentProcessesTask"
	ClassFinish      = "com.alipay.ocp.service.task.business.obagent.FinishOcpAgentOperationTask"
)

// Task and subtask names, as OCP reports them.
const (
	TaskStopAgent   = "Stop OCP agent"
	NamePrepareStop = "Prepare stop OCP agent"
	NameStopAll     = "Stop all OCP agent processes"
	NameFinish      = "Finish OCP agent operation"
)

// StopPlan is the "Stop OCP agent" task for one host: Prepare stop (60 s) →
// Stop all OCP agent processes (600 s) → Finish (60 s). The series ids
// count from the end, as OCP builds the DAG; the host's lock is taken at
// creation.
func StopPlan(hostID int64, creator string) task.Plan {
	sub := func(name, class string, series int, timeout time.Duration) task.Subtask {
		return task.Subtask{
			Name: name, Description: name, ClassName: class, NodeType: task.NodeTypeJavaTask,
			SeriesID: series, Timeout: timeout, ParallelIdx: -1, HostID: hostID,
		}
	}
	return task.Plan{
		Task: task.Task{
			Name: TaskStopAgent, Type: task.TypeManual, Operation: task.OpExecute, Creator: creator,
			HostID: hostID, TaskDefinitionID: -1,
			Context: task.Context{
				ListMap:     map[string][]string{},
				ParallelIdx: -1,
				StringMap:   map[string]string{"host_id": strconv.FormatInt(hostID, 10), "prohibit_rollback": "false"},
			},
			Subtasks: []task.Subtask{
				sub(NamePrepareStop, ClassPrepareStop, 2, 60*time.Second),
				sub(NameStopAll, ClassStopAll, 1, 600*time.Second),
				sub(NameFinish, ClassFinish, 0, 60*time.Second),
			},
		},
		Edges: [][2]int{{0, 1}, {1, 2}},
		Locks: []int64{hostID},
	}
}
