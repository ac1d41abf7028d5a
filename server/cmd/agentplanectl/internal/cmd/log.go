package cmd

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	taskv1 "agentplane/gen/agentplane/task/v1"
	"agentplane/server/cmd/agentplanectl/internal/client"
	"agentplane/server/cmd/agentplanectl/internal/render"
)

// logPoll is how often --follow asks for new lines.
const logPoll = time.Second

func (a *app) taskLogCmd() *cobra.Command {
	var follow bool
	c := &cobra.Command{
		Use:   "log TASK [SUBTASK]",
		Short: "Print a subtask's log, or every subtask's in DAG order",
		Long: `Print a subtask's log (every attempt, each under its header), or without SUBTASK the log of
every subtask that has one, in DAG order, each under a "==> subtask N NAME <==" line.
--follow prints new lines of one subtask as they come, until the subtask ends or Ctrl-C.
The log is text: -o does not apply.`,
		Args: argsN(1, 2, "log TASK [SUBTASK] [--follow]"),
		RunE: func(c *cobra.Command, args []string) error {
			t, err := a.getTask(c.Context(), args[0])
			if err != nil {
				return err
			}
			if len(args) == 1 {
				if follow {
					return usage("--follow needs a SUBTASK")
				}
				for _, st := range render.DAGOrder(t) {
					if st.GetRunTime() == 0 && st.GetStartTime() == nil {
						continue
					}
					fmt.Fprintf(a.io.Stdout, "==> subtask %d %s: %s <==\n", st.GetId(), st.GetName(), render.SubtaskState(st.GetStatus()))
					if _, err := a.printLog(c.Context(), t.GetId(), st.GetId(), 0); err != nil {
						return err
					}
				}
				return nil
			}
			sub, err := idArg("subtask", args[1])
			if err != nil {
				return err
			}
			next, err := a.printLog(c.Context(), t.GetId(), sub, 0)
			if err != nil || !follow {
				return err
			}
			return a.followLog(c.Context(), t.GetId(), sub, next)
		},
	}
	c.Flags().BoolVarP(&follow, "follow", "f", false, "print new lines as they come until the subtask ends")
	return c
}

// printLog prints a subtask's log from offset, every page, and returns the
// offset after it.
func (a *app) printLog(ctx context.Context, task, sub, offset int64) (int64, error) {
	c, err := a.conn()
	if err != nil {
		return offset, err
	}
	for {
		r, err := c.Tasks.GetSubtaskLog(ctx, &taskv1.GetSubtaskLogRequest{TaskId: task, SubtaskId: sub, Offset: offset})
		if err != nil {
			return offset, err
		}
		if _, err := fmt.Fprint(a.io.Stdout, r.GetLog()); err != nil {
			return offset, err
		}
		if r.GetLines() > 0 && len(r.GetLog()) > 0 && r.GetLog()[len(r.GetLog())-1] != '\n' {
			fmt.Fprintln(a.io.Stdout)
		}
		offset = r.GetNextOffset()
		if !r.GetMore() {
			return offset, nil
		}
	}
}

// followLog polls the subtask's log until the subtask is final and its log
// read to the end, or Ctrl-C.
func (a *app) followLog(ctx context.Context, task, sub, offset int64) error {
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	c, err := a.conn()
	if err != nil {
		return err
	}
	for {
		r, err := c.Tasks.GetTask(ctx, &taskv1.GetTaskRequest{Id: task})
		if err != nil {
			return a.interrupted(ctx, err)
		}
		final := true
		for _, st := range r.GetTask().GetSubtasks() {
			if st.GetId() == sub {
				final = render.Final(st.GetStatus())
			}
		}
		if offset, err = a.printLog(ctx, task, sub, offset); err != nil {
			return a.interrupted(ctx, err)
		}
		if final {
			return nil
		}
		select {
		case <-ctx.Done():
			return a.interrupted(ctx, ctx.Err())
		case <-time.After(logPoll):
		}
	}
}

// interrupted turns an error after Ctrl-C into a quiet end.
func (a *app) interrupted(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return client.Exitf(client.ExitInterrupted, "interrupted")
	}
	return err
}
