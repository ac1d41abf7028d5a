package agentop

import (
	"context"
	"fmt"
	"time"

	"agentplane/server/fleet"
	"agentplane/server/host"
	"agentplane/server/task"
)

// Hosts is what the executors and the service need from the host store.
type Hosts interface {
	GetHost(ctx context.Context, id int64) (*host.Host, error)
	ListHosts(ctx context.Context, q host.ListQuery) (host.Page, error)
	LockHost(ctx context.Context, hostID, taskID int64) error
	FinishAgentOperation(ctx context.Context, hostID, taskID int64, st host.AgentStatus) error
}

// Agents is what the executors need from the fleet.
type Agents interface {
	WaitConnected(ctx context.Context, hostID int64) bool
	Dispatch(ctx context.Context, hostID int64, cmd fleet.Command) (fleet.Result, error)
	Ack(hostID, subtaskID int64, attempt int)
}

// ConnectWait is how long Prepare waits for a host's agentd to connect: long
// enough for agents to come back after a server restart, short enough that a
// stop of an offline host fails at once to a person.
const ConnectWait = 5 * time.Second

// Executors returns the executors of the stop task's subtasks, by class.
func Executors(hosts Hosts, agents Agents) map[string]task.Executor {
	return map[string]task.Executor{
		ClassPrepareStop: prepare{hosts, agents},
		ClassStopAll:     stopAll{agents},
		ClassFinish:      finishOp{hosts},
	}
}

// prepare checks that the host exists and its agentd is connected (waiting
// up to ConnectWait for it), and takes the host's agent-operation lock (held
// since creation; taking it again is idempotent).
type prepare struct {
	hosts  Hosts
	agents Agents
}

func (p prepare) Execute(ctx context.Context, r task.Run) task.Result {
	id := r.Subtask.HostID
	if _, err := p.hosts.GetHost(ctx, id); err != nil {
		return task.Result{Err: err}
	}
	wait, cancel := context.WithTimeout(ctx, ConnectWait)
	connected := p.agents.WaitConnected(wait, id)
	cancel()
	if !connected {
		return task.Result{Err: fmt.Errorf("host %d: agentd not connected", id)}
	}
	if err := p.hosts.LockHost(ctx, id, r.Task.ID); err != nil {
		return task.Result{Err: err}
	}
	r.Log(fmt.Sprintf("host %d: agentd connected, agent-operation lock held by task %d", id, r.Task.ID))
	return task.Result{Message: fmt.Sprintf("host %d ready", id)}
}

// stopAll dispatches the stop to the host's agentd and waits for its result.
// The subtask's deadline is the command's timeout; when it passes, agentd is
// told to stop signalling.
type stopAll struct {
	agents Agents
}

func (s stopAll) Execute(ctx context.Context, r task.Run) task.Result {
	id := r.Subtask.HostID
	cmd := fleet.Command{SubtaskID: r.Subtask.ID, Attempt: r.Subtask.RunTime, StopAgent: &fleet.StopAgent{}}
	if d, ok := ctx.Deadline(); ok {
		cmd.Timeout = time.Until(d)
	}
	r.Log(fmt.Sprintf("dispatching stop to the agentd of host %d (attempt %d)", id, cmd.Attempt))
	res, err := s.agents.Dispatch(ctx, id, cmd)
	ack := func() { s.agents.Ack(id, cmd.SubtaskID, cmd.Attempt) }
	if err != nil {
		if res.Outcome != 0 {
			r.Log("agentd: " + res.Message)
			return task.Result{Err: fmt.Errorf("host %d: %w", id, err), AfterCommit: ack}
		}
		return task.Result{Err: fmt.Errorf("host %d: %w", id, err)}
	}
	switch res.Outcome {
	case fleet.Succeeded:
		r.Log("agentd: " + res.Message)
		return task.Result{Message: res.Message, AfterCommit: ack}
	case fleet.Canceled:
		return task.Result{Err: fmt.Errorf("host %d: stop canceled: %s", id, res.Message), AfterCommit: ack}
	default:
		return task.Result{Err: fmt.Errorf("host %d: stop failed: %s", id, res.Message), AfterCommit: ack}
	}
}

// finishOp records the agent as STOPPED and releases the host's lock.
type finishOp struct {
	hosts Hosts
}

func (f finishOp) Execute(ctx context.Context, r task.Run) task.Result {
	id := r.Subtask.HostID
	if err := f.hosts.FinishAgentOperation(ctx, id, r.Task.ID, host.AgentStopped); err != nil {
		return task.Result{Err: err}
	}
	r.Log(fmt.Sprintf("host %d: OCP agent STOPPED, lock released", id))
	return task.Result{Message: fmt.Sprintf("host %d: OCP agent stopped", id)}
}
