package store_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"agentplane/server/internal/errs"
	"agentplane/server/internal/host"
	"agentplane/server/internal/task"
)

// hostLocks is the agent-operation locks of hosts, as task resources.
func hostLocks(hosts []int64) []task.Resource {
	var rs []task.Resource
	for _, h := range hosts {
		rs = append(rs, task.Resource{Kind: host.ResourceKind, ID: h})
	}
	return rs
}

// batchPlan is a task of n chains first → second → third (series 2, 1, 0),
// chain i on hosts[i] when hosts are given.
func batchPlan(n int, hosts []int64) task.Plan {
	p := plan(0)
	p.Edges, p.Resources = nil, hostLocks(hosts)
	for i := range n {
		var h int64
		if hosts != nil {
			h = hosts[i]
		}
		base := len(p.Task.Subtasks)
		for j, name := range []string{"first", "second", "third"} {
			status := task.SubtaskPending
			if j == 0 {
				status = task.SubtaskReady
			}
			p.Task.Subtasks = append(p.Task.Subtasks, task.Subtask{Name: name, ClassName: name, Operation: task.OpExecute,
				Status: status, SeriesID: 2 - j, Timeout: time.Minute, RunTime: 1, ParallelIdx: i, HostID: h})
			if j > 0 {
				p.Edges = append(p.Edges, [2]int{base + j - 1, base + j})
			}
		}
	}
	return p
}

// TestCreateTaskBatch stores a task of 1,203 subtasks (several multi-row
// INSERTs): ids follow the series order and continue in the next task, and
// every edge is stored.
func TestCreateTaskBatch(t *testing.T) {
	ctx := context.Background()
	s := open(t, t.TempDir())
	const n = 401
	created, _, err := s.CreateTask(ctx, batchPlan(n, nil))
	if err != nil {
		t.Fatal(err)
	}
	got, err := s.GetTask(ctx, created.ID)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Subtasks) != 3*n {
		t.Fatalf("%d subtasks stored, want %d", len(got.Subtasks), 3*n)
	}
	var ids []int64
	for i, st := range got.Subtasks {
		c := created.Subtasks[i]
		if st.ID != c.ID || st.TaskID != created.ID || st.ParallelIdx != i/3 || st.Name != c.Name ||
			!slices.Equal(st.Upstreams, c.Upstreams) || !slices.Equal(st.Downstreams, c.Downstreams) {
			t.Fatalf("subtask %d stored as %+v, created as %+v", i, st, c)
		}
		ids = append(ids, st.ID)
	}
	for i := 0; i < len(got.Subtasks); i += 3 {
		first, second, third := got.Subtasks[i], got.Subtasks[i+1], got.Subtasks[i+2]
		if !slices.Equal(first.Upstreams, []int64{}) || !slices.Equal(first.Downstreams, []int64{second.ID}) ||
			!slices.Equal(second.Upstreams, []int64{first.ID}) || !slices.Equal(second.Downstreams, []int64{third.ID}) ||
			!slices.Equal(third.Upstreams, []int64{second.ID}) || !slices.Equal(third.Downstreams, []int64{}) {
			t.Fatalf("chain %d: %+v %+v %+v", i/3, first, second, third)
		}
		// Series order: every third (series 0) before every second, before every first.
		if third.ID > int64(n) || second.ID <= int64(n) || second.ID > int64(2*n) || first.ID <= int64(2*n) {
			t.Fatalf("chain %d ids %d %d %d do not follow the series order", i/3, first.ID, second.ID, third.ID)
		}
	}
	slices.Sort(ids)
	if ids[0] != 1 || ids[len(ids)-1] != int64(3*n) || len(slices.Compact(ids)) != 3*n {
		t.Fatalf("ids are not 1..%d", 3*n)
	}
	p := withSubtasks(plan(0))
	p.Resources = nil
	next, _, err := s.CreateTask(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	if next.Subtasks[1].ID != int64(3*n+1) || next.Subtasks[0].ID != int64(3*n+2) {
		t.Fatalf("next task's subtask ids %d, %d; want %d, %d", next.Subtasks[0].ID, next.Subtasks[1].ID, 3*n+2, 3*n+1)
	}
}

// TestCreateTaskBatchLockConflict: one host of 700, held by another task,
// refuses the whole task, naming the holder; nothing is stored or locked.
func TestCreateTaskBatchLockConflict(t *testing.T) {
	ctx := context.Background()
	s := open(t, t.TempDir())
	var hosts []int64
	for i := range 700 {
		h, err := s.RegisterHost(ctx, host.Host{Name: fmt.Sprintf("h%d", i)}, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		hosts = append(hosts, h.ID)
	}
	holder, _, err := s.CreateTask(ctx, withSubtasks(plan(hosts[650])))
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = s.CreateTask(ctx, batchPlan(len(hosts), hosts))
	if !errors.Is(err, errs.ErrConflict) || !strings.Contains(err.Error(), fmt.Sprintf("task %d", holder.ID)) {
		t.Fatalf("batch over a held host: %v, want a conflict naming task %d", err, holder.ID)
	}
	if page, _ := s.ListTasks(ctx, task.ListQuery{}); page.Total != 1 {
		t.Fatalf("%d tasks stored, want 1", page.Total)
	}
	for _, h := range []int64{hosts[0], hosts[649], hosts[699]} {
		if hh, _ := s.GetHost(ctx, h); hh.OpTaskID != 0 {
			t.Fatalf("host %d locked by %d after a refused task", h, hh.OpTaskID)
		}
	}
	// Released, the same batch takes every host.
	final := *holder
	final.Subtasks = slices.Clone(holder.Subtasks)
	final.Status = task.StatusFailed
	if err := s.UpdateTask(ctx, holder, &final, nil); err != nil {
		t.Fatal(err)
	}
	batch, _, err := s.CreateTask(ctx, batchPlan(len(hosts), hosts))
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range []int64{hosts[0], hosts[650], hosts[699]} {
		if hh, _ := s.GetHost(ctx, h); hh.OpTaskID != batch.ID {
			t.Fatalf("host %d locked by %d, want %d", h, hh.OpTaskID, batch.ID)
		}
	}
}

// TestUpdateTaskWritesLogsWithTheChange: the logs given to UpdateTask are
// stored with the change, and not at all when the compare-and-swap loses.
func TestUpdateTaskWritesLogsWithTheChange(t *testing.T) {
	ctx := context.Background()
	s := open(t, t.TempDir())
	p := batchPlan(2, nil)
	before, _, err := s.CreateTask(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	change := func(from *task.Task, status task.SubtaskStatus) *task.Task {
		after := *from
		after.Subtasks = slices.Clone(from.Subtasks)
		after.Subtasks[0].Status, after.Subtasks[3].Status = status, status
		return &after
	}
	line := func(i int, text string) task.SubtaskLogLine {
		return task.SubtaskLogLine{SubtaskID: before.Subtasks[i].ID, LogLine: task.LogLine{RunTime: 1, Time: time.Now(), Line: text}}
	}
	if err := s.UpdateTask(ctx, before, change(before, task.SubtaskRunning), nil,
		line(0, "header 0"), line(3, "header 3"), line(0, "second line")); err != nil {
		t.Fatal(err)
	}
	if err := s.UpdateTask(ctx, before, change(before, task.SubtaskFailed), nil, line(0, "lost")); !errors.Is(err, task.ErrChanged) {
		t.Fatalf("stale update: %v, want ErrChanged", err)
	}
	for i, want := range map[int][]string{0: {"header 0", "second line"}, 3: {"header 3"}} {
		lines, _, err := s.SubtaskLog(ctx, before.ID, before.Subtasks[i].ID, 0, 100, 1<<20)
		var got []string
		for _, l := range lines {
			got = append(got, l.Line)
		}
		if err != nil || !slices.Equal(got, want) {
			t.Fatalf("log of subtask %d: %q %v, want %q", i, got, err, want)
		}
	}
	if err := s.AppendSubtaskLogs(ctx, []task.SubtaskLogLine{line(3, "appended")}); err != nil {
		t.Fatal(err)
	}
	if lines, _, _ := s.SubtaskLog(ctx, before.ID, before.Subtasks[3].ID, 0, 100, 1<<20); len(lines) != 2 || lines[1].Line != "appended" {
		t.Fatalf("log after AppendSubtaskLogs: %+v", lines)
	}
}

// TestUpdateTaskManySubtasks: a step changing 250 subtasks of a batch
// (several multi-row UPDATEs, every changed column) stores each as given;
// a stale one, whose only outdated subtask is in its last chunk, writes
// none of them.
func TestUpdateTaskManySubtasks(t *testing.T) {
	ctx := context.Background()
	s := open(t, t.TempDir())
	before, _, err := s.CreateTask(ctx, batchPlan(150, nil))
	if err != nil {
		t.Fatal(err)
	}
	const n = 250
	start := time.UnixMilli(time.Now().UnixMilli())
	change := func(from *task.Task, tag string) *task.Task {
		after := *from
		after.Subtasks = slices.Clone(from.Subtasks)
		for i := range n {
			st := &after.Subtasks[i]
			st.Status, st.Executor, st.StartTime = task.SubtaskRunning, "r1", start.Add(time.Duration(i)*time.Millisecond)
			st.Message, st.ProhibitRollback = fmt.Sprintf("%s %d", tag, i), i%2 == 0
			if i%3 == 0 {
				st.Operation, st.RunTime, st.EndTime = task.OpRollback, st.RunTime+1, start.Add(time.Hour)
			}
		}
		return &after
	}
	first := change(before, "first")
	if err := s.UpdateTask(ctx, before, first, nil); err != nil {
		t.Fatal(err)
	}
	check := func(want *task.Task) {
		t.Helper()
		got, err := s.GetTask(ctx, before.ID)
		if err != nil {
			t.Fatal(err)
		}
		for i, w := range want.Subtasks {
			g := got.Subtasks[i]
			if g.ID != w.ID || g.Status != w.Status || g.Operation != w.Operation || g.RunTime != w.RunTime ||
				g.Executor != w.Executor || !g.StartTime.Equal(w.StartTime) || !g.EndTime.Equal(w.EndTime) ||
				g.Message != w.Message || g.ProhibitRollback != w.ProhibitRollback {
				t.Fatalf("subtask %d: stored %+v, want %+v", i, g, w)
			}
		}
	}
	check(first)
	// Another writer moves subtask 240 on (the last chunk).
	moved := *first
	moved.Subtasks = slices.Clone(first.Subtasks)
	moved.Subtasks[240].Status = task.SubtaskSuccessful
	if err := s.UpdateTask(ctx, first, &moved, nil); err != nil {
		t.Fatal(err)
	}
	stale := change(first, "stale")
	for i := range stale.Subtasks[:n] {
		stale.Subtasks[i].Status = task.SubtaskFailed
	}
	if err := s.UpdateTask(ctx, first, stale, nil); !errors.Is(err, task.ErrChanged) {
		t.Fatalf("stale update of %d subtasks: %v, want ErrChanged", n, err)
	}
	check(&moved)
}
