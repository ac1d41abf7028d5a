package render

import (
	"cmp"
	"fmt"
	"io"
	"slices"
	"strings"

	auditv1 "agentplane/gen/agentplane/audit/v1"
	hostv1 "agentplane/gen/agentplane/host/v1"
	iamv1 "agentplane/gen/agentplane/iam/v1"
	taskv1 "agentplane/gen/agentplane/task/v1"
)

// Hosts writes a table of hosts.
func Hosts(w io.Writer, hosts []*hostv1.Host) error {
	t := NewTab(w, "ID", "NAME", "IP", "STATUS", "AGENT", "AGENTD", "LAST SEEN", "TASK")
	for _, h := range hosts {
		t.Row(h.GetId(), h.GetName(), Or(h.GetInnerIpAddress()), Enum(h.GetStatus().String(), "HOST_STATUS_"),
			Enum(h.GetAgentStatus().String(), "AGENT_STATUS_"), Or(h.GetAgentdVersion()), Time(h.GetLastAvailableTime()),
			ID(h.GetOperationTaskId()))
	}
	return t.Flush()
}

// HostAgent writes the agent view of a host and its processes.
func HostAgent(w io.Writer, a *hostv1.HostAgent) error {
	fmt.Fprintf(w, "Host:          %d (%s)\n", a.GetHostId(), Or(a.GetHostInnerIpAddress()))
	fmt.Fprintf(w, "Agent status:  %s\n", Enum(a.GetStatus().String(), "AGENT_STATUS_"))
	fmt.Fprintf(w, "Install home:  %s\n", Or(a.GetInstallHome()))
	fmt.Fprintf(w, "Version:       %s\n", Or(a.GetVersion()))
	fmt.Fprintf(w, "Last seen:     %s\n", Time(a.GetLastAvailableTime()))
	if len(a.GetProcesses()) == 0 {
		fmt.Fprintln(w, "Processes:     none reported")
		return nil
	}
	fmt.Fprintln(w)
	t := NewTab(w, "PROCESS", "STATUS", "PID", "USER", "STARTED", "COMMAND")
	for _, p := range a.GetProcesses() {
		pid := "-"
		if p.GetPid() > 0 {
			pid = fmt.Sprint(p.GetPid())
		}
		t.Row(p.GetAlias(), Enum(p.GetStatus().String(), "AGENT_STATUS_"), pid, Or(p.GetUser()), Time(p.GetStartTime()), Or(p.GetStartCommand()))
	}
	return t.Flush()
}

// Tasks writes a table of tasks.
func Tasks(w io.Writer, tasks []*taskv1.Task) error {
	t := NewTab(w, "ID", "NAME", "STATUS", "OPERATION", "HOST", "CREATOR", "START", "END")
	for _, tk := range tasks {
		t.Row(tk.GetId(), tk.GetName(), TaskState(tk.GetStatus()), Enum(tk.GetOperation().String(), "OPERATION_"),
			ID(tk.GetHostId()), Or(tk.GetCreator()), Time(tk.GetStartTime()), Time(tk.GetEndTime()))
	}
	return t.Flush()
}

// Task writes a task and its subtasks, in DAG order, with each batch
// subtask's host.
func Task(w io.Writer, tk *taskv1.Task, names HostNamer) error {
	fmt.Fprintf(w, "Task:       %d %s\n", tk.GetId(), tk.GetName())
	fmt.Fprintf(w, "Status:     %s (operation %s)\n", TaskState(tk.GetStatus()), Enum(tk.GetOperation().String(), "OPERATION_"))
	if tk.GetHostId() != 0 {
		fmt.Fprintf(w, "Host:       %s (id %d)\n", HostLabel(names, tk.GetHostId()), tk.GetHostId())
	}
	fmt.Fprintf(w, "Creator:    %s\n", Or(tk.GetCreator()))
	fmt.Fprintf(w, "Started:    %s\n", Time(tk.GetStartTime()))
	fmt.Fprintf(w, "Ended:      %s\n", Time(tk.GetEndTime()))
	v := NewView(tk)
	if v.Batch {
		fmt.Fprintf(w, "Hosts:      %s\n", strings.TrimPrefix(BatchSummary(v), "hosts: "))
		if v.Failed > 0 {
			fmt.Fprintf(w, "Failed on:  %s\n", FailedHostList(v, names, 50))
		}
	}
	fmt.Fprintln(w)
	header := []string{"SUBTASK", "NAME", "STATUS", "OPERATION", "ATTEMPTS", "START", "END", "MESSAGE"}
	if v.Batch {
		header = append(header[:2], append([]string{"HOST"}, header[2:]...)...)
	}
	t := NewTab(w, header...)
	for _, st := range DAGOrder(tk) {
		row := []any{st.GetId(), st.GetName(), SubtaskState(st.GetStatus()), Enum(st.GetOperation().String(), "OPERATION_"),
			st.GetRunTime(), Time(st.GetStartTime()), Time(st.GetEndTime()), Or(st.GetMessage())}
		if v.Batch {
			row = append(row[:2], append([]any{HostLabel(names, BranchHost(tk, st.GetParallelIdx()))}, row[2:]...)...)
		}
		t.Row(row...)
	}
	return t.Flush()
}

// DAGOrder is the task's subtasks by branch, then by depth in the DAG: each
// host's chain in order.
func DAGOrder(tk *taskv1.Task) []*taskv1.Subtask {
	d := depths(tk.GetSubtasks())
	out := append([]*taskv1.Subtask(nil), tk.GetSubtasks()...)
	slices.SortStableFunc(out, func(a, b *taskv1.Subtask) int {
		return cmp.Or(cmp.Compare(a.GetParallelIdx(), b.GetParallelIdx()), cmp.Compare(d[a.GetId()], d[b.GetId()]))
	})
	return out
}

// AccessKeys writes a table of access keys (never a secret).
func AccessKeys(w io.Writer, keys []*iamv1.AccessKey) error {
	t := NewTab(w, "ACCESS KEY", "USER", "CREATED", "LAST USED")
	for _, k := range keys {
		t.Row(k.GetAccessKeyId(), k.GetUsername(), Time(k.GetCreateTime()), Time(k.GetLastUsedTime()))
	}
	return t.Flush()
}

// AuditEvents writes a table of audit events.
func AuditEvents(w io.Writer, events []*auditv1.AuditEvent) error {
	t := NewTab(w, "ID", "TIME", "USER", "ACCESS KEY", "SOURCE", "OPERATION", "HOST", "TASK", "TARGET", "OUTCOME", "MESSAGE")
	for _, e := range events {
		t.Row(e.GetId(), Time(e.GetTime()), Or(e.GetUsername()), Or(e.GetAccessKeyId()), Or(e.GetSourceAddress()), e.GetOperation(),
			ID(e.GetHostId()), ID(e.GetTaskId()), Or(e.GetTarget()), e.GetOutcome(), Or(e.GetMessage()))
	}
	return t.Flush()
}
