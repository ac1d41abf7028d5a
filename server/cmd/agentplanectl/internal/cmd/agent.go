package cmd

import (
	"context"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	hostv1 "agentplane/gen/agentplane/host/v1"
	taskv1 "agentplane/gen/agentplane/task/v1"
	"agentplane/server/cmd/agentplanectl/internal/client"
	"agentplane/server/cmd/agentplanectl/internal/render"
)

func (a *app) agentCmd() *cobra.Command {
	agent := &cobra.Command{Use: "agent", Short: "Show, stop, start or restart the OCP Agent of hosts"}
	get := &cobra.Command{
		Use:   "get HOST",
		Short: "Show a host's OCP Agent as its agentd last reported it",
		Args:  argsN(1, 1, "get HOST"),
		RunE: func(c *cobra.Command, args []string) error {
			id, cl, err := a.hostConn(c.Context(), args[0])
			if err != nil {
				return err
			}
			r, err := cl.Hosts.GetHostAgent(c.Context(), &hostv1.GetHostAgentRequest{HostId: id})
			if err != nil {
				return err
			}
			return a.print(r.GetAgent(), func(w io.Writer) error { return render.HostAgent(w, r.GetAgent()) })
		},
	}
	agent.AddCommand(get,
		a.agentOpCmd("stop", "Stop the OCP Agent of hosts (several hosts: one batch task)", a.stop),
		a.agentOpCmd("start", "Start the OCP Agent of hosts (several hosts: one batch task)", a.start),
		a.agentOpCmd("restart", "Restart the OCP Agent of hosts (several hosts: one batch task)", a.restart))
	return agent
}

// agentOpCmd is stop, start or restart: HOST… by id or name, --wait.
func (a *app) agentOpCmd(verb, short string, op func(context.Context, *client.Client, []int64) (*taskv1.Task, error)) *cobra.Command {
	var wait bool
	c := &cobra.Command{
		Use:   verb + " HOST...",
		Short: short,
		Long: short + `.

HOST is a host id or name. The answer is the task, RUNNING; --wait follows it to its end,
drawn live on a terminal, and exits 0 if it ends SUCCESSFUL, 1 if FAILED. Ctrl-C stops
watching, not the task.`,
		Args: argsN(1, -1, verb+" HOST... [--wait]"),
		RunE: func(c *cobra.Command, args []string) error {
			ids, err := a.hostIDs(c.Context(), args)
			if err != nil {
				return err
			}
			cl, err := a.conn()
			if err != nil {
				return err
			}
			t, err := op(c.Context(), cl, ids)
			if err != nil {
				return err
			}
			return a.created(c.Context(), t, wait)
		},
	}
	c.Flags().BoolVarP(&wait, "wait", "w", false, "follow the task until it ends; the exit status says how")
	return c
}

func (a *app) stop(ctx context.Context, c *client.Client, ids []int64) (*taskv1.Task, error) {
	if len(ids) == 1 {
		r, err := c.Hosts.StopAgent(ctx, &hostv1.StopAgentRequest{HostId: ids[0]})
		return r.GetTask(), err
	}
	r, err := c.Hosts.BatchStopAgents(ctx, &hostv1.BatchStopAgentsRequest{HostIds: ids})
	return r.GetTask(), err
}

func (a *app) start(ctx context.Context, c *client.Client, ids []int64) (*taskv1.Task, error) {
	if len(ids) == 1 {
		r, err := c.Hosts.StartAgent(ctx, &hostv1.StartAgentRequest{HostId: ids[0]})
		return r.GetTask(), err
	}
	r, err := c.Hosts.BatchStartAgents(ctx, &hostv1.BatchStartAgentsRequest{HostIds: ids})
	return r.GetTask(), err
}

func (a *app) restart(ctx context.Context, c *client.Client, ids []int64) (*taskv1.Task, error) {
	if len(ids) == 1 {
		r, err := c.Hosts.RestartAgent(ctx, &hostv1.RestartAgentRequest{HostId: ids[0]})
		return r.GetTask(), err
	}
	r, err := c.Hosts.BatchRestartAgents(ctx, &hostv1.BatchRestartAgentsRequest{HostIds: ids})
	return r.GetTask(), err
}

// created reports a task a command created or changed, and follows it with
// wait.
func (a *app) created(ctx context.Context, t *taskv1.Task, wait bool) error {
	if wait {
		return a.follow(ctx, t)
	}
	return a.print(t, func(w io.Writer) error {
		_, err := fmt.Fprintf(w, "task %d %s: %s ('agentplanectl task watch %d' follows it)\n",
			t.GetId(), t.GetName(), render.TaskState(t.GetStatus()), t.GetId())
		return err
	})
}
