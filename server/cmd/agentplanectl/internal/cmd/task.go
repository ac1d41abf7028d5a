package cmd

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	taskv1 "agentplane/gen/agentplane/task/v1"
	"agentplane/server/cmd/agentplanectl/internal/client"
	"agentplane/server/cmd/agentplanectl/internal/render"
)

func (a *app) taskCmd() *cobra.Command {
	task := &cobra.Command{Use: "task", Aliases: []string{"tasks"}, Short: "List, show, follow and operate tasks"}
	task.AddCommand(a.taskListCmd(), a.taskGetCmd(), a.taskWatchCmd(), a.taskLogCmd(),
		a.taskOpCmd("retry", "TASK [SUBTASK]", "Retry a FAILED task's failed subtasks, or one subtask", 1, 2,
			func(ctx context.Context, c *client.Client, id, sub int64) (*taskv1.Task, error) {
				if sub == 0 {
					r, err := c.Tasks.RetryTask(ctx, &taskv1.RetryTaskRequest{Id: id})
					return r.GetTask(), err
				}
				r, err := c.Tasks.RetrySubtask(ctx, &taskv1.RetrySubtaskRequest{TaskId: id, SubtaskId: sub})
				return r.GetTask(), err
			}),
		a.taskOpCmd("rollback", "TASK", "Undo the subtasks of a FAILED task that ran, in reverse order", 1, 1,
			func(ctx context.Context, c *client.Client, id, _ int64) (*taskv1.Task, error) {
				r, err := c.Tasks.RollbackTask(ctx, &taskv1.RollbackTaskRequest{Id: id})
				return r.GetTask(), err
			}),
		a.taskOpCmd("skip", "TASK SUBTASK", "Mark a FAILED subtask done without running it", 2, 2,
			func(ctx context.Context, c *client.Client, id, sub int64) (*taskv1.Task, error) {
				r, err := c.Tasks.SkipSubtask(ctx, &taskv1.SkipSubtaskRequest{TaskId: id, SubtaskId: sub})
				return r.GetTask(), err
			}),
		a.taskOpCmd("cancel", "TASK [SUBTASK]", "Cancel a RUNNING subtask (default: the task's one running subtask)", 1, 2, a.cancel),
	)
	return task
}

func (a *app) taskListCmd() *cobra.Command {
	var req taskv1.ListTasksRequest
	var host, st, typ string
	c := &cobra.Command{
		Use:   "list",
		Short: "List tasks, newest first (filters as the REST list)",
		Args:  argsN(0, 0, "list [--host HOST] [--status S] [--name TEXT] [--type T]"),
		RunE: func(c *cobra.Command, _ []string) error {
			var err error
			if host != "" {
				if req.HostId, err = a.hostID(c.Context(), host); err != nil {
					return err
				}
			}
			if req.Status, err = enumFlag("--status", st, "TASK_STATUS_", taskv1.TaskStatus_value, taskv1.TaskStatus(0)); err != nil {
				return err
			}
			if req.Type, err = enumFlag("--type", typ, "TASK_TYPE_", taskv1.TaskType_value, taskv1.TaskType(0)); err != nil {
				return err
			}
			cl, err := a.conn()
			if err != nil {
				return err
			}
			r, err := cl.Tasks.ListTasks(c.Context(), &req)
			if err != nil {
				return err
			}
			return a.print(r, func(w io.Writer) error { return render.Tasks(w, r.GetTasks()) })
		},
	}
	f := c.Flags()
	f.StringVar(&host, "host", "", "tasks of this host (id or name)")
	f.StringVar(&st, "status", "", "RUNNING, FAILED or SUCCESSFUL")
	f.StringVar(&req.Name, "name", "", "name contains this text (case-insensitive)")
	f.StringVar(&typ, "type", "", "MANUAL, SCHEDULED or SYS_SCHEDULED")
	f.Int32Var(&req.Page, "page", 1, "page, from 1")
	f.Int32Var(&req.Size, "size", 20, "page size (at most 2000)")
	f.StringVar(&req.Sort, "sort", "", "sort, e.g. id,desc (id, name, status, startTime, endTime)")
	return c
}

// enumFlag parses a flag naming an enum value without its prefix.
func enumFlag[E ~int32](flag, v, prefix string, values map[string]int32, zero E) (E, error) {
	if v == "" {
		return zero, nil
	}
	n, ok := values[prefix+strings.ToUpper(v)]
	if !ok || n == 0 {
		return zero, usage("%s %q: unknown value", flag, v)
	}
	return E(n), nil
}

// idArg parses a task or subtask id.
func idArg(what, s string) (int64, error) {
	id, err := strconv.ParseInt(s, 10, 64)
	if err != nil || id <= 0 {
		return 0, usage("%s id %q: want a positive number", what, s)
	}
	return id, nil
}

// getTask reads a task.
func (a *app) getTask(ctx context.Context, arg string) (*taskv1.Task, error) {
	id, err := idArg("task", arg)
	if err != nil {
		return nil, err
	}
	c, err := a.conn()
	if err != nil {
		return nil, err
	}
	r, err := c.Tasks.GetTask(ctx, &taskv1.GetTaskRequest{Id: id})
	return r.GetTask(), err
}

func (a *app) taskGetCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "get TASK",
		Short: "Show a task and its subtasks in DAG order",
		Args:  argsN(1, 1, "get TASK"),
		RunE: func(c *cobra.Command, args []string) error {
			t, err := a.getTask(c.Context(), args[0])
			if err != nil {
				return err
			}
			return a.print(t, func(w io.Writer) error { return render.Task(w, t, a.namer(c.Context())) })
		},
	}
}

func (a *app) taskWatchCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "watch TASK",
		Short: "Follow a task until it ends (exit 0 SUCCESSFUL, 1 FAILED; Ctrl-C stops watching)",
		Args:  argsN(1, 1, "watch TASK"),
		RunE: func(c *cobra.Command, args []string) error {
			t, err := a.getTask(c.Context(), args[0])
			if err != nil {
				return err
			}
			return a.follow(c.Context(), t)
		},
	}
}

// taskOpCmd is an operation on a task or one of its subtasks, with --wait.
func (a *app) taskOpCmd(verb, argsUse, short string, lo, hi int,
	op func(ctx context.Context, c *client.Client, id, sub int64) (*taskv1.Task, error)) *cobra.Command {
	var wait bool
	c := &cobra.Command{
		Use:   verb + " " + argsUse,
		Short: short,
		Args:  argsN(lo, hi, verb+" "+argsUse+" [--wait]"),
		RunE: func(c *cobra.Command, args []string) error {
			id, err := idArg("task", args[0])
			if err != nil {
				return err
			}
			var sub int64
			if len(args) > 1 {
				if sub, err = idArg("subtask", args[1]); err != nil {
					return err
				}
			}
			cl, err := a.conn()
			if err != nil {
				return err
			}
			t, err := op(c.Context(), cl, id, sub)
			if err != nil {
				return err
			}
			return a.created(c.Context(), t, wait)
		},
	}
	c.Flags().BoolVarP(&wait, "wait", "w", false, "follow the task until it ends; the exit status says how")
	return c
}

// cancel cancels a subtask; without one, the task's only running subtask.
func (a *app) cancel(ctx context.Context, c *client.Client, id, sub int64) (*taskv1.Task, error) {
	if sub == 0 {
		r, err := c.Tasks.GetTask(ctx, &taskv1.GetTaskRequest{Id: id})
		if err != nil {
			return nil, err
		}
		var running []string
		for _, st := range r.GetTask().GetSubtasks() {
			if st.GetStatus() == taskv1.SubtaskStatus_SUBTASK_STATUS_RUNNING {
				sub = st.GetId()
				running = append(running, fmt.Sprint(st.GetId()))
			}
		}
		switch len(running) {
		case 0:
			return nil, client.Exitf(client.ExitRefused, "task %d has no RUNNING subtask to cancel", id)
		case 1:
		default:
			return nil, usage("task %d runs %d subtasks (%s): name the one to cancel", id, len(running), strings.Join(running, ", "))
		}
	}
	r, err := c.Tasks.CancelSubtask(ctx, &taskv1.CancelSubtaskRequest{TaskId: id, SubtaskId: sub})
	return r.GetTask(), err
}
