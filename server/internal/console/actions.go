package console

import (
	"context"
	"net/http"

	"agentplane/server/internal/task"
)

// The actions answer {"taskId": id} (the task created or acted on), or
// {"error": message} with the status of the error's kind. The domain
// services check the roles; the pages only hide what a user may not do.

// idOp is an operation on one id (a host or a task).
type idOp = func(context.Context, int64) (*task.Task, error)

// hostAction: POST /ui/api/hosts/{hostId}/agent/{stop,start,restart}.
func (c *Console) hostAction(w http.ResponseWriter, r *http.Request) error {
	return c.onID(w, r, "hostId", "host action %q: use stop, start or restart", map[string]idOp{
		"stop": c.cfg.Hosts.StopAgent, "start": c.cfg.Hosts.StartAgent, "restart": c.cfg.Hosts.RestartAgent,
	})
}

// taskAction: POST /ui/api/tasks/{taskId}/{retry,rollback}.
func (c *Console) taskAction(w http.ResponseWriter, r *http.Request) error {
	return c.onID(w, r, "taskId", "task action %q: use retry or rollback", map[string]idOp{
		"retry": c.cfg.Tasks.RetryTask, "rollback": c.cfg.Tasks.RollbackTask,
	})
}

// onID runs the operation ops names by the path's {op} on the id in the
// path's wildcard param; unknown names the refusal of another {op}.
func (c *Console) onID(w http.ResponseWriter, r *http.Request, param, unknown string, ops map[string]idOp) error {
	op, ok := ops[r.PathValue("op")]
	if !ok {
		return c.answer(w, r, nil, invalid("unknown "+unknown, r.PathValue("op")))
	}
	id, err := pathID(r, param)
	if err != nil {
		return c.answer(w, r, nil, err)
	}
	t, err := op(r.Context(), id)
	return c.answer(w, r, t, err)
}

// subtaskAction: POST /ui/api/tasks/{taskId}/subtasks/{subtaskId}/{retry,skip,cancel}.
func (c *Console) subtaskAction(w http.ResponseWriter, r *http.Request) error {
	op, ok := map[string]func(context.Context, int64, int64) (*task.Task, error){
		"retry": c.cfg.Tasks.RetrySubtask, "skip": c.cfg.Tasks.SkipSubtask, "cancel": c.cfg.Tasks.CancelSubtask,
	}[r.PathValue("op")]
	if !ok {
		return c.answer(w, r, nil, invalid("unknown subtask action %q: use retry, skip or cancel", r.PathValue("op")))
	}
	id, err := pathID(r, "taskId")
	if err != nil {
		return c.answer(w, r, nil, err)
	}
	sid, err := pathID(r, "subtaskId")
	if err != nil {
		return c.answer(w, r, nil, err)
	}
	t, err := op(r.Context(), id, sid)
	return c.answer(w, r, t, err)
}

// answer writes an action's outcome and returns err, for the audit record.
func (c *Console) answer(w http.ResponseWriter, r *http.Request, t *task.Task, err error) error {
	if err != nil {
		c.fail(w, r, err)
		return err
	}
	writeJSON(w, http.StatusOK, map[string]int64{"taskId": t.ID})
	return nil
}
