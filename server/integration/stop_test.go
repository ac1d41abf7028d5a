package integration_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	hostv1 "agentplane/gen/agentplane/host/v1"
	taskv1 "agentplane/gen/agentplane/task/v1"
)

// The stop task's subtasks, in order, as the spec names them.
var wantSubtasks = []struct {
	name, class string
	timeout     float64
}{
	{"Prepare stop OCP agent", "com.alipay.ocp.service.task.business.obagent.PrepareStopOcpAgentTask", 60},
	{"Stop all OCP agent processes", "com.alipay.ocp.service.task.business.obagent.StopAllOcpAgentProcessesTask", 600},
	{"Finish OCP agent operation", "com.alipay.ocp.service.task.business.obagent.FinishOcpAgentOperationTask", 60},
}

// checkStopped checks the aftermath of a successful stop: the task and each
// subtask SUCCESSFUL, nothing left under home, bystanders untouched, and the
// host's agent STOPPED with no operation holding it.
func checkStopped(t *testing.T, s *server, tk taskJSON, home string, by *bystanders, hostID int64) {
	t.Helper()
	if tk.Status != "SUCCESSFUL" {
		t.Errorf("task %d ended %s, want SUCCESSFUL; subtasks %+v", tk.ID, tk.Status, tk.Subtasks)
	}
	for _, st := range tk.Subtasks {
		if st.Status != "SUCCESSFUL" {
			t.Errorf("subtask %q ended %s: %s", st.Name, st.Status, st.Message)
		}
	}
	checkNoneUnder(t, home)
	if by != nil {
		by.checkAlive(t)
	}
	h := s.getHost(t, hostID)
	if h.AgentStatus != "STOPPED" || h.OperationTaskID != 0 {
		t.Errorf("host after the stop: agentStatus %q operationTaskId %d, want STOPPED 0", h.AgentStatus, h.OperationTaskID)
	}
}

func TestStopREST(t *testing.T) {
	t.Parallel()
	s, by, home, a := fleetOfOne(t, time.Second)
	if h := s.getHost(t, a.hostID); h.AgentStatus != "STARTED" || h.OperationTaskID != 0 {
		t.Errorf("host before the stop: agentStatus %q operationTaskId %d, want STARTED 0", h.AgentStatus, h.OperationTaskID)
	}

	r := s.stopREST(t, a.hostID, admin)
	if r.status != http.StatusOK {
		t.Fatalf("stop: status %d: %s", r.status, r.body)
	}
	for _, k := range []string{"data", "successful", "timestamp", "duration", "status", "traceId", "server"} {
		if _, ok := r.obj[k]; !ok {
			t.Errorf("envelope lacks %q: %s", k, r.body)
		}
	}
	if r.obj["successful"] != true || r.obj["status"] != float64(200) {
		t.Errorf("envelope successful %v status %v, want true 200", r.obj["successful"], r.obj["status"])
	}
	if trace, _ := r.obj["traceId"].(string); trace == "" || r.header.Get("X-Trace-Id") != trace {
		t.Errorf("X-Trace-Id header %q, body traceId %q: want equal, non-empty", r.header.Get("X-Trace-Id"), trace)
	}
	data, _ := r.obj["data"].(map[string]any)
	if data["name"] != "Stop OCP agent" {
		t.Errorf("data.name %v, want Stop OCP agent", data["name"])
	}
	if data["hostId"] != float64(a.hostID) {
		t.Errorf("data.hostId %v, want %d", data["hostId"], a.hostID)
	}
	if ctx, _ := data["context"].(map[string]any); ctx != nil {
		sm, _ := ctx["stringMap"].(map[string]any)
		if sm["host_id"] != strconv.FormatInt(a.hostID, 10) || sm["prohibit_rollback"] == nil {
			t.Errorf("context.stringMap %v, want host_id %d and prohibit_rollback", sm, a.hostID)
		}
	} else {
		t.Errorf("data.context missing: %s", r.body)
	}
	subs, _ := data["subtasks"].([]any)
	if len(subs) != len(wantSubtasks) {
		t.Fatalf("%d subtasks, want %d: %s", len(subs), len(wantSubtasks), r.body)
	}
	for i, w := range wantSubtasks {
		st, _ := subs[i].(map[string]any)
		if st["name"] != w.name || st["className"] != w.class || st["timeout"] != w.timeout {
			t.Errorf("subtask %d: name %v className %v timeout %v, want %q %q %v", i, st["name"], st["className"], st["timeout"], w.name, w.class, w.timeout)
		}
	}
	var created taskJSON
	r.decode(t, &created)
	if created.ID <= 0 {
		t.Fatalf("task id %d", created.ID)
	}

	tk := s.waitFinal(t, created.ID)
	checkStopped(t, s, tk, home, by, a.hostID)
}

// statusRank orders statuses so that a watcher can check they only advance.
var statusRank = map[string]int{
	"SUBTASK_STATUS_PENDING": 1, "SUBTASK_STATUS_READY": 2, "SUBTASK_STATUS_RUNNING": 3, "SUBTASK_STATUS_CANCELING": 4,
	"SUBTASK_STATUS_FAILED": 5, "SUBTASK_STATUS_SUCCESSFUL": 5,
	"TASK_STATUS_RUNNING": 1, "TASK_STATUS_FAILED": 2, "TASK_STATUS_SUCCESSFUL": 2,
}

func TestStopGRPC(t *testing.T) {
	t.Parallel()
	s, by, home, a := fleetOfOne(t, time.Second)

	cc := s.conn(t)
	ctx, cancel := context.WithTimeout(withCreds(context.Background(), admin), 90*time.Second)
	defer cancel()
	resp, err := hostv1.NewHostServiceClient(cc).StopAgent(ctx, &hostv1.StopAgentRequest{HostId: a.hostID})
	if err != nil {
		t.Fatalf("StopAgent: %v", err)
	}
	created := resp.GetTask()
	if created.GetId() <= 0 || created.GetName() != "Stop OCP agent" || len(created.GetSubtasks()) != 3 || created.GetHostId() != a.hostID {
		t.Fatalf("StopAgent returned %v", created)
	}
	for i, w := range wantSubtasks {
		st := created.GetSubtasks()[i]
		if st.GetName() != w.name || st.GetClassName() != w.class || float64(st.GetTimeoutSeconds()) != w.timeout {
			t.Errorf("subtask %d: %q %q %ds, want %q %q %vs", i, st.GetName(), st.GetClassName(), st.GetTimeoutSeconds(), w.name, w.class, w.timeout)
		}
	}

	stream, err := taskv1.NewTaskServiceClient(cc).WatchTask(ctx, &taskv1.WatchTaskRequest{Id: created.GetId()})
	if err != nil {
		t.Fatalf("WatchTask: %v", err)
	}
	var last *taskv1.Task
	rank := map[int64]int{} // subtask id, or 0 for the task → last rank seen
	n := 0
	for {
		m, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("WatchTask after %d messages: %v", n, err)
		}
		n++
		last = m.GetTask()
		if r := statusRank[last.GetStatus().String()]; r < rank[0] {
			t.Errorf("message %d: task status went back to %s", n, last.GetStatus())
		} else {
			rank[0] = r
		}
		for _, st := range last.GetSubtasks() {
			if r := statusRank[st.GetStatus().String()]; r < rank[st.GetId()] {
				t.Errorf("message %d: subtask %q status went back to %s", n, st.GetName(), st.GetStatus())
			} else {
				rank[st.GetId()] = r
			}
		}
	}
	if last == nil {
		t.Fatal("WatchTask ended without a message")
	}
	t.Logf("WatchTask sent %d messages", n)
	if last.GetStatus() != taskv1.TaskStatus_TASK_STATUS_SUCCESSFUL {
		t.Errorf("last watched status %s, want SUCCESSFUL; task %v", last.GetStatus(), last)
	}
	checkStopped(t, s, s.getTask(t, created.GetId()), home, by, a.hostID)

	h, err := hostv1.NewHostServiceClient(cc).GetHost(ctx, &hostv1.GetHostRequest{Id: a.hostID})
	if err != nil {
		t.Fatalf("GetHost: %v", err)
	}
	if h.GetHost().GetAgentStatus() != hostv1.AgentStatus_AGENT_STATUS_STOPPED {
		t.Errorf("GetHost agent status %s, want STOPPED", h.GetHost().GetAgentStatus())
	}
}

// TestStopGrpcurl stops through grpcurl, which has no proto files: it must
// learn the API through server reflection.
func TestStopGrpcurl(t *testing.T) {
	t.Parallel()
	bin := grpcurl(t)
	s := startServer(t)
	home := newHome(t)
	startFake(t, home)
	a := s.startAgentd(t, home, time.Second)

	run := func(args ...string) []byte {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("grpcurl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return out
	}
	list := string(run("-cacert", s.caFile, s.grpcAddr, "list"))
	for _, svc := range []string{"agentplane.host.v1.HostService", "agentplane.task.v1.TaskService", "grpc.health.v1.Health"} {
		if !strings.Contains(list, svc) {
			t.Errorf("grpcurl list lacks %s:\n%s", svc, list)
		}
	}
	out := run("-cacert", s.caFile, "-H", "authorization: "+admin.basic(), "-d", fmt.Sprintf(`{"host_id": %d}`, a.hostID),
		s.grpcAddr, "agentplane.host.v1.HostService/StopAgent")
	var resp struct {
		Task struct {
			ID       string `json:"id"` // protojson renders int64 as a string
			Name     string `json:"name"`
			Status   string `json:"status"`
			Subtasks []any  `json:"subtasks"`
		} `json:"task"`
	}
	if err := json.Unmarshal(out, &resp); err != nil {
		t.Fatalf("grpcurl StopAgent output is not JSON: %v\n%s", err, out)
	}
	id, err := strconv.ParseInt(resp.Task.ID, 10, 64)
	if err != nil || id <= 0 || resp.Task.Name != "Stop OCP agent" || len(resp.Task.Subtasks) != 3 {
		t.Fatalf("grpcurl StopAgent output lacks the task:\n%s", out)
	}
	tk := s.waitFinal(t, id)
	checkStopped(t, s, tk, home, nil, a.hostID)
}

// TestStopIgnoringSIGTERM: every fake ignores SIGTERM; agentd (grace 1s)
// must SIGKILL each.
func TestStopIgnoringSIGTERM(t *testing.T) {
	t.Parallel()
	s, by, home, a := fleetOfOne(t, time.Second, "FAKE_OCP_MODE=ignore-term")

	created := s.stopOK(t, a.hostID)
	tk := s.waitFinal(t, created.ID)
	checkStopped(t, s, tk, home, by, a.hostID)
	log := a.proc.log()
	for _, name := range baseNames {
		if !strings.Contains(log, "sent SIGKILL to "+name) {
			t.Errorf("agentd log does not say it sent SIGKILL to %s", name)
		}
	}
}
