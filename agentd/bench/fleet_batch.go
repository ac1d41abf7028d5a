package bench

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	hostv1 "agentplane/gen/agentplane/host/v1"
	taskv1 "agentplane/gen/agentplane/task/v1"
)

type fleetBatch struct {
	took, accept time.Duration
	final        []*taskv1.Task
	note         string
}

func (b fleetBatch) ok() bool {
	for _, t := range b.final {
		if t.GetStatus() != taskv1.TaskStatus_TASK_STATUS_SUCCESSFUL {
			return false
		}
	}
	return len(b.final) > 0
}

// summary names the tasks' final states, with the first failed subtask's
// message.
func (b fleetBatch) summary() string {
	var parts []string
	for _, t := range b.final {
		failed := 0
		var first string
		for _, st := range t.GetSubtasks() {
			if st.GetStatus() == taskv1.SubtaskStatus_SUBTASK_STATUS_FAILED {
				if failed == 0 {
					first = fmt.Sprintf("%s: %s", st.GetName(), st.GetMessage())
				}
				failed++
			}
		}
		s := fmt.Sprintf("task %d %s", t.GetId(), strings.TrimPrefix(t.GetStatus().String(), "TASK_STATUS_"))
		if failed > 0 {
			s += fmt.Sprintf(" (%d subtasks failed, first %q)", failed, first)
		}
		parts = append(parts, s)
	}
	if len(parts) > 3 {
		parts = append(parts[:3], fmt.Sprintf("and %d more", len(parts)-3))
	}
	return strings.Join(parts, ", ") + ";"
}

// batchStop stops ids in one batch task (or in chunks when the server
// refuses the size) and waits for the final status through WatchTask.
func (f *fleetRun) batchStop(ctx context.Context, ids []int64) (fleetBatch, error) {
	began := time.Now()
	created, note, err := f.createBatches(ctx, ids)
	if err != nil {
		return fleetBatch{}, err
	}
	accept := time.Since(began)
	final, err := f.watchAll(ctx, created)
	if err != nil {
		return fleetBatch{}, err
	}
	last := began
	for _, t := range final {
		if t.seen.After(last) {
			last = t.seen
		}
	}
	b := fleetBatch{took: last.Sub(began), accept: accept, note: note}
	for _, t := range final {
		b.final = append(b.final, t.task)
	}
	return b, nil
}

// fleetMaxBatch finds the server's batch bound in its refusal ("hostIds:
// 20000 hosts, must be 1..10000").
var fleetMaxBatch = regexp.MustCompile(`hosts, must be 1\.\.(\d+)`)

// createBatches creates one batch stop task for ids; when the server
// refuses that many hosts (InvalidArgument naming its bound), it creates a
// task per chunk of the bound instead and says so in note.
func (f *fleetRun) createBatches(ctx context.Context, ids []int64) (created []int64, note string, err error) {
	resp, err := f.hosts.BatchStopAgents(ctx, &hostv1.BatchStopAgentsRequest{HostIds: ids}, grpc.WaitForReady(true), grpc.MaxCallRecvMsgSize(fleetMaxRecvMsg))
	if err == nil {
		return []int64{resp.GetTask().GetId()}, "", nil
	}
	st := status.Convert(err)
	m := fleetMaxBatch.FindStringSubmatch(st.Message())
	if st.Code() != codes.InvalidArgument || m == nil {
		return nil, "", fmt.Errorf("BatchStopAgents of %d hosts: %w", len(ids), err)
	}
	size, _ := strconv.Atoi(m[1])
	if size < 1 || size >= len(ids) {
		return nil, "", fmt.Errorf("BatchStopAgents of %d hosts: %w", len(ids), err)
	}
	for chunk := range slices.Chunk(ids, size) {
		resp, err := f.hosts.BatchStopAgents(ctx, &hostv1.BatchStopAgentsRequest{HostIds: chunk}, grpc.WaitForReady(true), grpc.MaxCallRecvMsgSize(fleetMaxRecvMsg))
		if err != nil {
			return created, "", fmt.Errorf("BatchStopAgents of %d hosts (a chunk): %w", len(chunk), err)
		}
		created = append(created, resp.GetTask().GetId())
	}
	note = fmt.Sprintf("SPLIT: the server refused one batch of %d hosts (%s), so %d batch tasks of at most %d ran at once.",
		len(ids), st.Message(), len(created), size)
	return created, note, nil
}

type fleetFinal struct {
	task *taskv1.Task
	seen time.Time
}

// watchAll follows each task through WatchTask until it is final, watching
// again when the stream breaks (a server restart).
func (f *fleetRun) watchAll(ctx context.Context, ids []int64) ([]fleetFinal, error) {
	out := make([]fleetFinal, len(ids))
	errs := make([]error, len(ids))
	var wg sync.WaitGroup
	for i, id := range ids {
		wg.Go(func() { out[i], errs[i] = f.watch(ctx, id) })
	}
	wg.Wait()
	return out, errors.Join(errs...)
}

func (f *fleetRun) watch(ctx context.Context, id int64) (fleetFinal, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	var last error
	for try := 0; try < 20; try++ {
		if try > 0 {
			if err := sleepCtx(ctx, 500*time.Millisecond); err != nil {
				return fleetFinal{}, fmt.Errorf("watching task %d: %w (last: %w)", id, err, last)
			}
		}
		w, err := f.tasks.WatchTask(ctx, &taskv1.WatchTaskRequest{Id: id}, grpc.WaitForReady(true), grpc.MaxCallRecvMsgSize(fleetMaxRecvMsg))
		if err != nil {
			last = err
			continue
		}
		for {
			resp, err := w.Recv()
			if err != nil {
				last = err
				break
			}
			t := resp.GetTask()
			if s := t.GetStatus(); s == taskv1.TaskStatus_TASK_STATUS_SUCCESSFUL || s == taskv1.TaskStatus_TASK_STATUS_FAILED {
				return fleetFinal{task: t, seen: time.Now()}, nil
			}
		}
		if ctx.Err() != nil {
			break
		}
	}
	return fleetFinal{}, fmt.Errorf("watching task %d: %w", id, last)
}
