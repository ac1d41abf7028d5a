package cmd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	taskv1 "agentplane/gen/agentplane/task/v1"
	"agentplane/server/cmd/agentplanectl/internal/client"
	"agentplane/server/cmd/agentplanectl/internal/render"
)

// Resuming a lost watch: at most watchRetries attempts in a row without a
// message, waiting from watchBackoff doubling up to watchBackoffMax.
const (
	watchRetries    = 6
	watchBackoff    = 250 * time.Millisecond
	watchBackoffMax = 4 * time.Second
)

// follow follows t through WatchTask until it ends: drawn live on a
// terminal, as plain lines otherwise, silently for -o json/yaml (which then
// print the final task). SIGINT or SIGTERM stops following (exit 130), not
// the task. A FAILED end is an ExitError naming the failed subtasks.
func (a *app) follow(ctx context.Context, t *taskv1.Task) error {
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	names := a.namer(ctx)
	var f render.Follower
	switch {
	case a.output != render.Table:
		f = nopFollower{}
	case a.io.StdoutTTY:
		f = render.NewLive(a.io.Stdout, names)
	default:
		f = render.NewPlain(a.io.Stdout, names)
	}
	if t != nil {
		f.Update(t)
	}
	last, err := a.watch(ctx, t.GetId(), f)
	f.Close()
	if err != nil {
		if ctx.Err() != nil && errors.Is(err, context.Canceled) {
			return client.Exitf(client.ExitInterrupted, "stopped watching task %d, which goes on ('agentplanectl task watch %d' follows it again)", t.GetId(), t.GetId())
		}
		return err
	}
	if a.output != render.Table {
		if err := render.Message(a.io.Stdout, a.output, last); err != nil {
			return err
		}
	} else {
		fmt.Fprintf(a.io.Stdout, "task %d %s %s in %s\n", last.GetId(), last.GetName(), render.TaskState(last.GetStatus()),
			render.Duration(render.TaskElapsed(last, time.Now())))
	}
	if last.GetStatus() != taskv1.TaskStatus_TASK_STATUS_SUCCESSFUL {
		return client.Exitf(client.ExitFailed, "%s", failure(last, names))
	}
	return nil
}

// watch receives the task's states until it is final. A stream that breaks
// (or ends early) is opened again, up to watchRetries times in a row.
func (a *app) watch(ctx context.Context, id int64, f render.Follower) (*taskv1.Task, error) {
	c, err := a.conn()
	if err != nil {
		return nil, err
	}
	req := &taskv1.WatchTaskRequest{Id: id}
	var last *taskv1.Task
	backoff := watchBackoff
	for failures := 0; ; {
		err := func() error {
			sctx, cancel := context.WithCancel(ctx)
			defer cancel()
			sctx, err := c.Outgoing(sctx, taskv1.TaskService_WatchTask_FullMethodName, req)
			if err != nil {
				return err
			}
			stream, err := c.Tasks.WatchTask(sctx, req)
			if err != nil {
				return err
			}
			for {
				r, err := stream.Recv()
				if err != nil {
					return err
				}
				failures, backoff = 0, watchBackoff
				last = r.GetTask()
				f.Update(last)
				if render.TaskFinal(last) {
					return nil
				}
			}
		}()
		switch {
		case err == nil:
			return last, nil
		case ctx.Err() != nil:
			return last, ctx.Err()
		case !resumable(err):
			return last, err
		}
		failures++
		if failures > watchRetries {
			msg, _ := c.Describe(err)
			return last, client.Exitf(client.ExitUnreachable, "lost the watch of task %d %d times in a row: %s", id, failures, msg)
		}
		f.Note(fmt.Sprintf("watch lost, resuming (%d/%d)", failures, watchRetries))
		select {
		case <-ctx.Done():
			return last, ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, watchBackoffMax)
	}
}

// resumable reports whether a broken watch may be opened again: the
// stream ended before the task did, or the connection failed.
func resumable(err error) bool {
	if errors.Is(err, io.EOF) {
		return true
	}
	switch status.Code(err) {
	case codes.Unavailable, codes.Internal, codes.Unknown, codes.DeadlineExceeded, codes.Aborted:
		return true
	}
	return false
}

// failure says why a task FAILED: its failed subtasks with their hosts and
// messages, the first few of them.
func failure(t *taskv1.Task, names render.HostNamer) string {
	v := render.NewView(t)
	var b strings.Builder
	fmt.Fprintf(&b, "task %d %s %s", t.GetId(), t.GetName(), render.TaskState(t.GetStatus()))
	if v.Batch {
		fmt.Fprintf(&b, " on %d of %d hosts (%s)", v.Failed, v.Branches, render.FailedHostList(v, names, 10))
	}
	n := 0
	for _, st := range render.DAGOrder(t) {
		if st.GetStatus() != taskv1.SubtaskStatus_SUBTASK_STATUS_FAILED {
			continue
		}
		if n++; n > 3 {
			b.WriteString("\n  …")
			break
		}
		fmt.Fprintf(&b, "\n  %s", render.SubtaskLine(t, st, names))
	}
	return b.String()
}

// nopFollower draws nothing (-o json/yaml print the final task).
type nopFollower struct{}

func (nopFollower) Update(*taskv1.Task) {}
func (nopFollower) Note(string)         {}
func (nopFollower) Close()              {}
