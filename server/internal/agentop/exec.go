package agentop

import (
	"context"
	"errors"
	"fmt"
	"time"

	"agentplane/server/internal/errs"
	"agentplane/server/internal/fleet"
	"agentplane/server/internal/host"
	"agentplane/server/internal/task"
)

// Hosts is what the executors and the service need from the host store.
type Hosts interface {
	GetHost(ctx context.Context, id int64) (*host.Host, error)
	// HostState is GetHost without the process list, for the checks of
	// every operation.
	HostState(ctx context.Context, id int64) (*host.Host, error)
	ListHosts(ctx context.Context, q host.ListQuery) (host.Page, error)
	GetHostAgent(ctx context.Context, id int64) (*host.Agent, error)
	LockHost(ctx context.Context, hostID, taskID int64) error
	FinishAgentOperation(ctx context.Context, hostID, taskID int64, st host.AgentStatus) error
}

// Agents is what the executors need from the fleet.
type Agents interface {
	// WaitConnected returns nil once the host's agentd is connected, an
	// error when it gives up: after wait, or for a host expected back
	// after a server restart, once the restart's bound has passed.
	WaitConnected(ctx context.Context, hostID int64, wait time.Duration) error
	Dispatch(ctx context.Context, hostID int64, cmd fleet.Command) (fleet.Result, error)
	Ack(hostID, subtaskID int64, attempt int)
}

// endsStarted says, by task name, whether the operation leaves the agent
// STARTED: Finish looks it up rather than scan a batch's 30,000 subtasks in
// each of its 10,000 branches.
var endsStarted = map[string]bool{
	TaskStopAgent: false, TaskBatchStopAgents: false,
	TaskStartAgent: true, TaskBatchStartAgent: true, TaskRestartAgent: true, TaskBatchRestartAgent: true,
}

// ConnectWait is how long Prepare waits for the agentd of a host to
// connect: short enough that a stop of an offline host fails at once to a
// person. A host connected to the previous server is waited for longer
// after a restart: until the fleet's restart bound (fleet.Fleet.Expect).
const ConnectWait = 5 * time.Second

// Executors returns the executors of the agent tasks' subtasks, by class.
func Executors(hosts Hosts, agents Agents) map[string]task.Executor {
	p := prepare{hosts, agents}
	return map[string]task.Executor{
		ClassPrepareStop:    p,
		ClassPrepareStart:   p,
		ClassPrepareRestart: p,
		ClassStopAll:        dispatch{agents, actionStop},
		ClassStartAll:       dispatch{agents, actionStart},
		ClassFinish:         finishOp{hosts},
	}
}

// nothingToUndo is the rollback of a subtask whose work leaves nothing to
// undo.
func nothingToUndo(_ context.Context, r task.Run) task.Result {
	r.Log("nothing to roll back")
	return task.Result{Message: "nothing to roll back"}
}

// prepare checks that the host exists and its agentd is connected (waiting
// up to ConnectWait for it, longer after a restart), and takes the host's
// agent-operation lock should the task not hold it (see lock.go).
type prepare struct {
	hosts  Hosts
	agents Agents
}

func (p prepare) Execute(ctx context.Context, r task.Run) task.Result {
	id := r.Subtask.HostID
	h, err := p.hosts.HostState(ctx, id)
	if err != nil {
		return task.Result{Err: err}
	}
	if err := p.agents.WaitConnected(ctx, id, ConnectWait); err != nil {
		return task.Result{Err: fmt.Errorf("host %d: %w", id, err)}
	}
	if err := holdHost(ctx, p.hosts, id, h.OpTaskID, r.Task.ID); err != nil {
		return task.Result{Err: err}
	}
	r.Log(fmt.Sprintf("host %d: agentd connected, agent-operation lock held by task %d", id, r.Task.ID))
	return task.Result{Message: fmt.Sprintf("host %d ready", id)}
}

func (p prepare) Rollback(ctx context.Context, r task.Run) task.Result { return nothingToUndo(ctx, r) }

// action is what a dispatch asks of agentd.
type action int

const (
	actionStop action = iota + 1
	actionStart
)

func (a action) String() string {
	if a == actionStart {
		return "start"
	}
	return "stop"
}

// undo is the action that reverses a.
func (a action) undo() action {
	if a == actionStart {
		return actionStop
	}
	return actionStart
}

// dispatch sends an action to the host's agentd and waits for its result;
// its rollback sends the reverse action (a stop is undone by a start). The
// subtask's deadline is the command's timeout; when it passes, or an
// operator cancels, agentd is told to stop, and reports what it had done.
type dispatch struct {
	agents Agents
	action action
}

func (d dispatch) Execute(ctx context.Context, r task.Run) task.Result {
	return d.run(ctx, r, d.action)
}

func (d dispatch) Rollback(ctx context.Context, r task.Run) task.Result {
	return d.run(ctx, r, d.action.undo())
}

func (d dispatch) run(ctx context.Context, r task.Run, a action) task.Result {
	id := r.Subtask.HostID
	cmd := fleet.Command{SubtaskID: r.Subtask.ID, Attempt: r.Subtask.RunTime, Resumed: r.Resumed}
	if a == actionStart {
		cmd.StartAgent = &fleet.StartAgent{}
	} else {
		cmd.StopAgent = &fleet.StopAgent{}
	}
	if dl, ok := ctx.Deadline(); ok {
		cmd.Timeout = time.Until(dl)
	}
	// Not waited for: the command goes out at once. The line is stored
	// before agentd's lines and the result's (one writer, in order; a
	// peer replica is sent the command once it is stored: cluster.Router).
	r.QueueLog(fmt.Sprintf("dispatching %s to the agentd of host %d (attempt %d)", a, id, cmd.Attempt))
	res, err := d.agents.Dispatch(ctx, id, cmd)
	ack := func() { d.agents.Ack(id, cmd.SubtaskID, cmd.Attempt) }
	if err != nil {
		if res.Outcome != 0 {
			r.Log("agentd: " + res.Message)
			return task.Result{Err: errs.WithMessage(fmt.Errorf("host %d: %w (agentd: %s)", id, err, res.Message),
				endedMessage(id, a, err, res)), AfterCommit: ack}
		}
		return task.Result{Err: fmt.Errorf("host %d: %w", id, err)}
	}
	r.Log("agentd: " + res.Message)
	switch res.Outcome {
	case fleet.Succeeded:
		return task.Result{Message: res.Message, AfterCommit: ack}
	case fleet.Canceled:
		return task.Result{Err: fmt.Errorf("host %d: %s canceled: %s", id, a, res.Message), AfterCommit: ack}
	default:
		return task.Result{Err: fmt.Errorf("host %d: %s failed: %s", id, a, res.Message), AfterCommit: ack}
	}
}

// endedMessage is the sentence for the user of a dispatch its subtask's
// end stopped (cause: an operator's cancel, or the timeout), once agentd
// has answered with res: "Host 2: stop canceled by an operator." (agentd's
// own words are in the subtask's log).
func endedMessage(id int64, a action, cause error, res fleet.Result) string {
	switch res.Outcome {
	case fleet.Canceled:
		return fmt.Sprintf("Host %d: %s %s.", id, a, cause)
	case fleet.Succeeded:
		return fmt.Sprintf("Host %d: %s %s after agentd had finished it (%s).", id, a, cause, res.Message)
	default:
		return fmt.Sprintf("Host %d: %s %s; agentd reported: %s.", id, a, cause, res.Message)
	}
}

// finishOp records the agent's status after the operation (STARTED when
// the task's chain on this host starts the agent, else STOPPED) and
// releases the host's lock (see lock.go).
type finishOp struct {
	hosts Hosts
}

func (f finishOp) Execute(ctx context.Context, r task.Run) task.Result {
	id := r.Subtask.HostID
	st := host.AgentStopped
	if started, ok := endsStarted[r.Task.Name]; ok {
		if started {
			st = host.AgentStarted
		}
	} else {
		for _, s := range r.Task.Subtasks { // not one of ours: read the plan
			if s.HostID == id && s.ClassName == ClassStartAll {
				st = host.AgentStarted
			}
		}
	}
	if err := releaseHost(ctx, f.hosts, id, r.Task.ID, st); err != nil {
		return task.Result{Err: err}
	}
	r.Log(fmt.Sprintf("host %d: OCP agent %s, lock released", id, st))
	return task.Result{Message: fmt.Sprintf("host %d: OCP agent %s", id, st)}
}

func (f finishOp) Rollback(ctx context.Context, r task.Run) task.Result { return nothingToUndo(ctx, r) }

// whileStoreDown calls write again, with a capped backoff, while it fails
// because the store cannot be written (errs.ErrStoreUnavailable, e.g. a
// full disk), until ctx (the subtask's timeout) ends: a disk full for a
// moment must not fail the operation. It returns write's last error.
func whileStoreDown(ctx context.Context, write func() error) error {
	wait := 100 * time.Millisecond
	for {
		err := write()
		if !errors.Is(err, errs.ErrStoreUnavailable) {
			return err
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
		wait = min(2*wait, 5*time.Second)
	}
}
