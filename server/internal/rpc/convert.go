package rpc

import (
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	agentv1 "agentplane/gen/agentplane/agent/v1"
	hostv1 "agentplane/gen/agentplane/host/v1"
	taskv1 "agentplane/gen/agentplane/task/v1"
	"agentplane/server/internal/host"
	"agentplane/server/internal/task"
)

func ts(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

func fromTS(t *timestamppb.Timestamp) time.Time {
	if t == nil {
		return time.Time{}
	}
	return t.AsTime()
}

var taskStatus = map[task.Status]taskv1.TaskStatus{
	task.StatusRunning:    taskv1.TaskStatus_TASK_STATUS_RUNNING,
	task.StatusFailed:     taskv1.TaskStatus_TASK_STATUS_FAILED,
	task.StatusSuccessful: taskv1.TaskStatus_TASK_STATUS_SUCCESSFUL,
}

var subtaskStatus = map[task.SubtaskStatus]taskv1.SubtaskStatus{
	task.SubtaskPending:    taskv1.SubtaskStatus_SUBTASK_STATUS_PENDING,
	task.SubtaskReady:      taskv1.SubtaskStatus_SUBTASK_STATUS_READY,
	task.SubtaskRunning:    taskv1.SubtaskStatus_SUBTASK_STATUS_RUNNING,
	task.SubtaskCanceling:  taskv1.SubtaskStatus_SUBTASK_STATUS_CANCELING,
	task.SubtaskFailed:     taskv1.SubtaskStatus_SUBTASK_STATUS_FAILED,
	task.SubtaskSuccessful: taskv1.SubtaskStatus_SUBTASK_STATUS_SUCCESSFUL,
}

var taskType = map[task.Type]taskv1.TaskType{
	task.TypeManual:       taskv1.TaskType_TASK_TYPE_MANUAL,
	task.TypeScheduled:    taskv1.TaskType_TASK_TYPE_SCHEDULED,
	task.TypeSysScheduled: taskv1.TaskType_TASK_TYPE_SYS_SCHEDULED,
}

var operation = map[task.Operation]taskv1.Operation{
	task.OpExecute:      taskv1.Operation_OPERATION_EXECUTE,
	task.OpRetry:        taskv1.Operation_OPERATION_RETRY,
	task.OpRollback:     taskv1.Operation_OPERATION_ROLLBACK,
	task.OpSkip:         taskv1.Operation_OPERATION_SKIP,
	task.OpCancel:       taskv1.Operation_OPERATION_CANCEL,
	task.OpRollbackSkip: taskv1.Operation_OPERATION_ROLLBACK_SKIP,
}

func toTask(t *task.Task) *taskv1.Task {
	out := &taskv1.Task{
		Id: t.ID, Name: t.Name, Type: taskType[t.Type], Operation: operation[t.Operation],
		Status: taskStatus[t.Status], Creator: t.Creator, Executor: t.Executor, HostId: t.HostID,
		StartTime: ts(t.StartTime), EndTime: ts(t.EndTime), TaskDefinitionId: t.TaskDefinitionID,
		Context: &taskv1.TaskContext{
			ListMap: map[string]*taskv1.StringList{}, Parallel: t.Context.Parallel,
			ParallelIdx: int32(t.Context.ParallelIdx), StringMap: t.Context.StringMap,
		},
	}
	for k, v := range t.Context.ListMap {
		out.Context.ListMap[k] = &taskv1.StringList{Values: v}
	}
	for _, st := range t.Subtasks {
		out.Subtasks = append(out.Subtasks, &taskv1.Subtask{
			Id: st.ID, Name: st.Name, Description: st.Description, ClassName: st.ClassName, NodeType: st.NodeType,
			Operation: operation[st.Operation], Status: subtaskStatus[st.Status], SeriesId: int32(st.SeriesID),
			Upstreams: st.Upstreams, Downstreams: st.Downstreams, TimeoutSeconds: int32(st.Timeout / time.Second),
			RunTime: int32(st.RunTime), ParallelIdx: int32(st.ParallelIdx), ProhibitRollback: st.ProhibitRollback,
			Executor: st.Executor, StartTime: ts(st.StartTime), EndTime: ts(st.EndTime), Message: st.Message,
		})
	}
	return out
}

func fromTaskStatus(s taskv1.TaskStatus) task.Status {
	for k, v := range taskStatus {
		if v == s {
			return k
		}
	}
	return ""
}

var hostStatus = map[host.Status]hostv1.HostStatus{
	host.StatusNew:       hostv1.HostStatus_HOST_STATUS_NEW,
	host.StatusAvailable: hostv1.HostStatus_HOST_STATUS_AVAILABLE,
	host.StatusOnline:    hostv1.HostStatus_HOST_STATUS_ONLINE,
	host.StatusOffline:   hostv1.HostStatus_HOST_STATUS_OFFLINE,
	host.StatusDeleting:  hostv1.HostStatus_HOST_STATUS_DELETING,
}

var agentStatus = map[host.AgentStatus]hostv1.AgentStatus{
	host.AgentStarted:      hostv1.AgentStatus_AGENT_STATUS_STARTED,
	host.AgentStopped:      hostv1.AgentStatus_AGENT_STATUS_STOPPED,
	host.AgentNotInstalled: hostv1.AgentStatus_AGENT_STATUS_NOT_INSTALLED,
}

func toHost(h *host.Host) *hostv1.Host {
	return &hostv1.Host{
		Id: h.ID, Name: h.Name, InnerIpAddress: h.InnerIP, MachineId: h.MachineID, Status: hostStatus[h.Status],
		AgentStatus: agentStatus[h.AgentStatus], AgentdVersion: h.AgentdVersion, LastAvailableTime: ts(h.LastSeen),
		OperationTaskId: h.OpTaskID, CreateTime: ts(h.CreateTime), UpdateTime: ts(h.UpdateTime),
		RevokeTime: ts(h.RevokeTime),
	}
}

// fromProcesses converts the processes agentd reports: all running now.
func fromProcesses(ps []*agentv1.Process) []host.Process {
	out := make([]host.Process, 0, len(ps))
	for _, p := range ps {
		out = append(out, host.Process{
			PID: p.GetPid(), Name: p.GetName(), Exe: p.GetExe(), Cmdline: p.GetCmdline(), User: p.GetUser(),
			CreateTime: fromTS(p.GetCreateTime()), Status: host.AgentStarted,
		})
	}
	return out
}
