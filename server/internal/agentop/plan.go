// Package agentop owns the operations on hosts' OCP Agents that become
// tasks: the plans of OCP's agent tasks (stop, start, restart, and their
// batch forms), the executors of their subtasks, the host lock such a task
// holds (lock.go: where it is taken and released), and the host API that
// adapters serve.
package agentop

import (
	"strconv"
	"time"

	"agentplane/server/internal/task"
)

// Class names of the subtasks, as OCP reports them.
const (
	classPrefix         = "com.alipay.ocp.service.task.business.obagent."
	ClassPrepareStop    = classPrefix + "PrepareStopOcpAgentTask"
	ClassPrepareStart   = classPrefix + "PrepareStartOcpAgentTask"
	ClassPrepareRestart = classPrefix + "PrepareRestartOcpAgentTask"
	ClassStopAll        = classPrefix + "StopAllOcpAgentProcessesTask"
	ClassStartAll       = classPrefix + "StartAllOcpAgentProcessesTask"
	ClassFinish         = classPrefix + "FinishOcpAgentOperationTask"
)

// Task and subtask names, as OCP reports them.
const (
	TaskStopAgent         = "Stop OCP agent"
	TaskStartAgent        = "Start OCP agent"
	TaskRestartAgent      = "Restart OCP agent"
	TaskBatchStopAgents   = "Batch stop OCP agent"
	TaskBatchStartAgent   = "Batch start OCP agent"
	TaskBatchRestartAgent = "Batch restart OCP agent"

	NamePrepareStop    = "Prepare stop OCP agent"
	NamePrepareStart   = "Prepare start OCP agent"
	NamePrepareRestart = "Prepare restart OCP agent"
	NameStopAll        = "Stop all OCP agent processes"
	NameStartAll       = "Start all OCP agent processes"
	NameFinish         = "Finish OCP agent operation"
)

// Op is an agent operation.
type Op string

// Operations.
const (
	OpStop    Op = "STOP"
	OpStart   Op = "START"
	OpRestart Op = "RESTART"
)

// step is one subtask of an agent operation's chain on one host.
type step struct {
	name, class string
	timeout     time.Duration
}

var (
	stepFinish   = step{NameFinish, ClassFinish, 60 * time.Second}
	stepStopAll  = step{NameStopAll, ClassStopAll, 600 * time.Second}
	stepStartAll = step{NameStartAll, ClassStartAll, 600 * time.Second}
)

// chains are the steps of each operation, as OCP builds them.
var chains = map[Op][]step{
	OpStop:    {{NamePrepareStop, ClassPrepareStop, 60 * time.Second}, stepStopAll, stepFinish},
	OpStart:   {{NamePrepareStart, ClassPrepareStart, 60 * time.Second}, stepStartAll, stepFinish},
	OpRestart: {{NamePrepareRestart, ClassPrepareRestart, 60 * time.Second}, stepStopAll, stepStartAll, stepFinish},
}

// names of the single-host and batch tasks of each operation.
var taskNames = map[Op]string{OpStop: TaskStopAgent, OpStart: TaskStartAgent, OpRestart: TaskRestartAgent}
var batchNames = map[Op]string{OpStop: TaskBatchStopAgents, OpStart: TaskBatchStartAgent, OpRestart: TaskBatchRestartAgent}

// StopPlan is the "Stop OCP agent" task for one host: Prepare stop (60 s) →
// Stop all OCP agent processes (600 s) → Finish (60 s).
func StopPlan(hostID int64, creator string) task.Plan { return HostPlan(OpStop, hostID, creator) }

// HostPlan is the task of op on one host: a chain whose series ids count
// from the end, as OCP builds the DAG. The task holds the host's lock (see
// lock.go).
func HostPlan(op Op, hostID int64, creator string) task.Plan {
	p := plan(taskNames[op], op, creator, []int64{hostID}, -1)
	p.Task.HostID = hostID
	p.Task.Context.StringMap["host_id"] = strconv.FormatInt(hostID, 10)
	return p
}

// BatchPlan is the batch task of op on several hosts: one parallel branch
// per host (parallelIdx 0..n-1), the host ids in context.listMap.host_ids.
// One branch's failure does not stop the others.
func BatchPlan(op Op, hostIDs []int64, creator string) task.Plan {
	p := plan(batchNames[op], op, creator, hostIDs, 0)
	ids := make([]string, len(hostIDs))
	for i, h := range hostIDs {
		ids[i] = strconv.FormatInt(h, 10)
	}
	p.Task.Context.ListMap["host_ids"] = ids
	p.Task.Context.Parallel = true
	return p
}

// plan builds the chain of op for each host; parallelIdx is -1 for a single
// host, else the branch's index counting from first.
func plan(name string, op Op, creator string, hostIDs []int64, first int) task.Plan {
	p := task.Plan{
		Task: task.Task{
			Name: name, Type: task.TypeManual, Operation: task.OpExecute, Creator: creator, TaskDefinitionID: -1,
			Context: task.Context{
				ListMap:     map[string][]string{},
				ParallelIdx: -1,
				StringMap:   map[string]string{"prohibit_rollback": "false"},
			},
		},
		Resources: hostResources(hostIDs),
	}
	steps := chains[op]
	for b, h := range hostIDs {
		idx := -1
		if first >= 0 {
			idx = first + b
		}
		base := len(p.Task.Subtasks)
		for i, s := range steps {
			p.Task.Subtasks = append(p.Task.Subtasks, task.Subtask{
				Name: s.name, Description: s.name, ClassName: s.class, NodeType: task.NodeTypeJavaTask,
				SeriesID: len(steps) - 1 - i, Timeout: s.timeout, ParallelIdx: idx, HostID: h,
			})
			if i > 0 {
				p.Edges = append(p.Edges, [2]int{base + i - 1, base + i})
			}
		}
	}
	return p
}
