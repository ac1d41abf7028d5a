package render

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"

	taskv1 "agentplane/gen/agentplane/task/v1"
)

var t0 = time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC)

const (
	pending = taskv1.SubtaskStatus_SUBTASK_STATUS_PENDING
	running = taskv1.SubtaskStatus_SUBTASK_STATUS_RUNNING
	failed  = taskv1.SubtaskStatus_SUBTASK_STATUS_FAILED
	success = taskv1.SubtaskStatus_SUBTASK_STATUS_SUCCESSFUL
)

var steps = []string{"Prepare stop OCP agent", "Stop all OCP agent processes", "Finish OCP agent operation"}

// stopTask is a stop of the hosts (a batch for several) whose subtasks are
// in the given states, branch by branch; ids count down as the server's.
func stopTask(hosts []int64, states ...[]taskv1.SubtaskStatus) *taskv1.Task {
	t := &taskv1.Task{Id: 7, Name: "Stop OCP agent", Status: taskv1.TaskStatus_TASK_STATUS_RUNNING, StartTime: timestamppb.New(t0),
		Context: &taskv1.TaskContext{ListMap: map[string]*taskv1.StringList{}}}
	if len(hosts) > 1 {
		t.Name = "Batch stop OCP agent"
		t.Context.Parallel = true
		for _, h := range hosts {
			t.Context.ListMap["host_ids"] = &taskv1.StringList{Values: append(t.Context.ListMap["host_ids"].GetValues(), fmt.Sprint(h))}
		}
	} else {
		t.HostId = hosts[0]
	}
	id := int64(3 * len(hosts))
	for b := range hosts {
		idx := int32(b)
		if len(hosts) == 1 {
			idx = -1
		}
		var prev *taskv1.Subtask
		for i, name := range steps {
			st := &taskv1.Subtask{Id: id, Name: name, Status: states[b][i], ParallelIdx: idx, RunTime: 1}
			id--
			if st.Status != pending {
				st.StartTime = timestamppb.New(t0.Add(time.Duration(i) * time.Second))
			}
			if Final(st.Status) {
				st.EndTime = timestamppb.New(t0.Add(time.Duration(i)*time.Second + 500*time.Millisecond))
			}
			if st.Status == failed {
				st.Message = "agentd not connected"
			}
			if prev != nil {
				st.Upstreams = []int64{prev.Id}
				prev.Downstreams = []int64{st.Id}
			}
			prev = st
			t.Subtasks = append(t.Subtasks, st)
		}
	}
	return t
}

func names(id int64) string { return map[int64]string{1: "db-1", 2: "db-2"}[id] }

func TestViewOfABatch(t *testing.T) {
	tk := stopTask([]int64{1, 2}, []taskv1.SubtaskStatus{success, running, pending}, []taskv1.SubtaskStatus{failed, pending, pending})
	v := NewView(tk)
	if !v.Batch || v.Branches != 2 || v.Done != 0 || v.Failed != 1 || len(v.FailedHosts) != 1 || v.FailedHosts[0] != 2 {
		t.Fatalf("view %+v", v)
	}
	var got []string
	for _, g := range v.Groups {
		got = append(got, fmt.Sprintf("%d %s [%s] %q", g.Depth, g.Name, g.State(), g.Mark()))
	}
	want := []string{
		`0 Prepare stop OCP agent [1 FAILED, 1 SUCCESSFUL] "✗"`,
		`1 Stop all OCP agent processes [1 RUNNING, 1 PENDING] ""`,
		`2 Finish OCP agent operation [PENDING] "·"`,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("groups:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if e := v.Groups[0].Elapsed(t0.Add(time.Hour)); e != 500*time.Millisecond {
		t.Errorf("elapsed of a final group %s, want 500ms", e)
	}
	if e := v.Groups[1].Elapsed(t0.Add(3 * time.Second)); e != 2*time.Second {
		t.Errorf("elapsed of a running group %s, want 2s", e)
	}
	if s := FailedHostList(v, names, 5); s != "db-2" {
		t.Errorf("failed hosts %q", s)
	}
	if s := BatchSummary(v); s != "hosts: 0/2 done, 1 failed, 1 running" {
		t.Errorf("summary %q", s)
	}
}

func TestPlainFollowsChanges(t *testing.T) {
	var buf bytes.Buffer
	p := NewPlain(&buf, names)
	p.now = func() time.Time { return t0 }
	p.Update(stopTask([]int64{1}, []taskv1.SubtaskStatus{running, pending, pending}))
	p.Update(stopTask([]int64{1}, []taskv1.SubtaskStatus{running, pending, pending})) // no change: no line
	p.Note("watch lost, resuming (1/6)")
	done := stopTask([]int64{1}, []taskv1.SubtaskStatus{success, success, failed})
	done.Status = taskv1.TaskStatus_TASK_STATUS_FAILED
	p.Update(done)
	p.Close()
	got := strings.ReplaceAll(buf.String(), t0.Local().Format("15:04:05"), "T")
	want := `T  task 7 Stop OCP agent: RUNNING
T  subtask 3 Prepare stop OCP agent: RUNNING
T  subtask 2 Stop all OCP agent processes: PENDING
T  subtask 1 Finish OCP agent operation: PENDING
T  watch lost, resuming (1/6)
T  subtask 3 Prepare stop OCP agent: SUCCESSFUL (0.5s)
T  subtask 2 Stop all OCP agent processes: SUCCESSFUL (0.5s)
T  subtask 1 Finish OCP agent operation: FAILED (0.5s): agentd not connected
T  task 7 Stop OCP agent: FAILED
`
	if got != want {
		t.Errorf("plain output:\n%s\nwant:\n%s", got, want)
	}
}

func TestPlainBigBatchSummarizes(t *testing.T) {
	hosts := make([]int64, 30) // 90 subtasks: over PlainLimit
	var states [][]taskv1.SubtaskStatus
	for i := range hosts {
		hosts[i] = int64(i + 1)
		st := []taskv1.SubtaskStatus{success, success, success}
		if i == 1 {
			st = []taskv1.SubtaskStatus{failed, pending, pending}
		}
		states = append(states, st)
	}
	var buf bytes.Buffer
	p := NewPlain(&buf, names)
	p.Update(stopTask(hosts, states...))
	p.Close()
	out := buf.String()
	if n := strings.Count(out, "\n"); n != 3 {
		t.Errorf("%d lines, want 3 (task, the failed subtask, the summary):\n%s", n, out)
	}
	for _, w := range []string{"subtask 87 Prepare stop OCP agent (db-2): FAILED", "hosts: 29/30 done, 1 failed, 0 running"} {
		if !strings.Contains(out, w) {
			t.Errorf("output lacks %q:\n%s", w, out)
		}
	}
}

func TestTaskTableInDAGOrder(t *testing.T) {
	tk := stopTask([]int64{1, 2}, []taskv1.SubtaskStatus{success, success, success}, []taskv1.SubtaskStatus{failed, pending, pending})
	var buf bytes.Buffer
	if err := Task(&buf, tk, names); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	for _, w := range []string{"Hosts:      1/2 done, 1 failed", "Failed on:  db-2", "HOST", t0.Local().Format(TimeFormat)} {
		if !strings.Contains(out, w) {
			t.Errorf("table lacks %q:\n%s", w, out)
		}
	}
	// Branch by branch, each in chain order: ids 6 5 4 then 3 2 1.
	var ids []string
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) > 0 && len(f[0]) == 1 && f[0] >= "1" && f[0] <= "9" {
			ids = append(ids, f[0])
		}
	}
	if strings.Join(ids, " ") != "6 5 4 3 2 1" {
		t.Errorf("subtask order %v, want 6 5 4 3 2 1:\n%s", ids, out)
	}
}

func TestMessageJSONIsProtoJSON(t *testing.T) {
	tk := stopTask([]int64{1}, []taskv1.SubtaskStatus{success, success, success})
	var buf bytes.Buffer
	if err := Message(&buf, JSON, tk); err != nil {
		t.Fatal(err)
	}
	var back taskv1.Task
	if err := protojson.Unmarshal(buf.Bytes(), &back); err != nil || back.GetId() != 7 {
		t.Fatalf("does not parse back: %v\n%s", err, buf.String())
	}
	var generic map[string]any
	if err := json.Unmarshal(buf.Bytes(), &generic); err != nil {
		t.Fatal(err)
	}
	if generic["startTime"] != "2026-12-03T10:00:00Z" || generic["status"] != "TASK_STATUS_RUNNING" {
		t.Errorf("startTime %v status %v, want ISO-8601 UTC and the enum's name", generic["startTime"], generic["status"])
	}
	buf.Reset()
	if err := Message(&buf, YAML, tk); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(buf.String(), `startTime: "2026-12-03T10:00:00Z"`) {
		t.Errorf("yaml:\n%s", buf.String())
	}
}
