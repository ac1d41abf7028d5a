package console

import (
	"time"

	"agentplane/server/internal/task"
)

// taskView is a task as the page's script draws it.
type taskView struct {
	ID        int64         `json:"id"`
	Name      string        `json:"name"`
	Status    task.Status   `json:"status"`
	Operation string        `json:"operation"`
	Creator   string        `json:"creator"`
	HostID    int64         `json:"hostId"`
	StartTime string        `json:"startTime"`
	EndTime   string        `json:"endTime"`
	Subtasks  []subtaskView `json:"subtasks"`
}

// subtaskView is one node of the DAG: its edges are Upstreams; a batch's
// branches are the subtasks of one ParallelIdx (-1: none).
type subtaskView struct {
	ID          int64              `json:"id"`
	Name        string             `json:"name"`
	Description string             `json:"description"`
	Status      task.SubtaskStatus `json:"status"`
	Operation   string             `json:"operation"`
	Upstreams   []int64            `json:"upstreams"`
	ParallelIdx int                `json:"parallelIdx"`
	HostID      int64              `json:"hostId"`
	RunTime     int                `json:"runTime"`
	Executor    string             `json:"executor"`
	StartTime   string             `json:"startTime"`
	EndTime     string             `json:"endTime"`
	Message     string             `json:"message"`
}

func toTaskView(t *task.Task) taskView {
	v := taskView{
		ID: t.ID, Name: t.Name, Status: t.Status, Operation: string(t.Operation), Creator: t.Creator, HostID: t.HostID,
		StartTime: viewTime(t.StartTime), EndTime: viewTime(t.EndTime), Subtasks: make([]subtaskView, 0, len(t.Subtasks)),
	}
	for i := range t.Subtasks {
		st := &t.Subtasks[i]
		ups := st.Upstreams
		if ups == nil {
			ups = []int64{}
		}
		v.Subtasks = append(v.Subtasks, subtaskView{
			ID: st.ID, Name: st.Name, Description: st.Description, Status: st.Status, Operation: string(st.Operation),
			Upstreams: ups, ParallelIdx: st.ParallelIdx, HostID: st.HostID, RunTime: st.RunTime, Executor: st.Executor,
			StartTime: viewTime(st.StartTime), EndTime: viewTime(st.EndTime), Message: st.Message,
		})
	}
	return v
}

// viewTime is formatTime, "" for the zero time.
func viewTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return formatTime(t)
}
