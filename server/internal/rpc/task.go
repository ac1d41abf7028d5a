package rpc

import (
	"context"
	"fmt"

	taskv1 "agentplane/gen/agentplane/task/v1"
	"agentplane/server/internal/errs"
	"agentplane/server/internal/task"
)

// Tasks is the task API the adapter serves (task.Service). Each method checks
// the caller's role itself.
type Tasks interface {
	GetTask(ctx context.Context, id int64) (*task.Task, error)
	ListTasks(ctx context.Context, q task.ListQuery) (task.Page, error)
	WatchTask(ctx context.Context, id int64, send func(*task.Task) error) error
	RetryTask(ctx context.Context, id int64) (*task.Task, error)
	RollbackTask(ctx context.Context, id int64) (*task.Task, error)
	RetrySubtask(ctx context.Context, taskID, subtaskID int64) (*task.Task, error)
	SkipSubtask(ctx context.Context, taskID, subtaskID int64) (*task.Task, error)
	CancelSubtask(ctx context.Context, taskID, subtaskID int64) (*task.Task, error)
	SubtaskLog(ctx context.Context, taskID, subtaskID int64, q task.LogQuery) (task.LogPage, error)
}

var _ Tasks = (*task.Service)(nil)

type taskServer struct {
	taskv1.UnimplementedTaskServiceServer
	tasks Tasks
}

var _ taskv1.TaskServiceServer = (*taskServer)(nil)

func (s *taskServer) GetTask(ctx context.Context, req *taskv1.GetTaskRequest) (*taskv1.GetTaskResponse, error) {
	t, err := s.tasks.GetTask(ctx, req.GetId())
	if err != nil {
		return nil, toStatus(ctx, err)
	}
	return &taskv1.GetTaskResponse{Task: toTask(t)}, nil
}

func (s *taskServer) ListTasks(ctx context.Context, req *taskv1.ListTasksRequest) (*taskv1.ListTasksResponse, error) {
	q, err := listQuery(req)
	if err != nil {
		return nil, toStatus(ctx, err)
	}
	p, err := s.tasks.ListTasks(ctx, q)
	if err != nil {
		return nil, toStatus(ctx, err)
	}
	out := &taskv1.ListTasksResponse{TotalElements: p.Total}
	for i := range p.Tasks {
		out.Tasks = append(out.Tasks, toTask(&p.Tasks[i]))
	}
	return out, nil
}

// listQuery converts a ListTasksRequest; ErrInvalidArgument for an unknown
// status or type, or a malformed sort.
func listQuery(req *taskv1.ListTasksRequest) (task.ListQuery, error) {
	q := task.ListQuery{
		Name: req.GetName(), HostID: req.GetHostId(), Page: int(req.GetPage()), Size: int(req.GetSize()),
		Status: fromTaskStatus(req.GetStatus()), Type: fromTaskType(req.GetType()),
	}
	if q.Status == "" && req.GetStatus() != taskv1.TaskStatus_TASK_STATUS_UNSPECIFIED {
		return q, fmt.Errorf("status %d: unknown task status: %w", req.GetStatus(), errs.ErrInvalidArgument)
	}
	if q.Type == "" && req.GetType() != taskv1.TaskType_TASK_TYPE_UNSPECIFIED {
		return q, fmt.Errorf("type %d: unknown task type: %w", req.GetType(), errs.ErrInvalidArgument)
	}
	var err error
	q.Sort, err = task.ParseSort(req.GetSort())
	return q, err
}

func fromTaskType(t taskv1.TaskType) task.Type {
	for k, v := range taskType {
		if v == t {
			return k
		}
	}
	return ""
}

func (s *taskServer) WatchTask(req *taskv1.WatchTaskRequest, stream taskv1.TaskService_WatchTaskServer) error {
	ctx := stream.Context()
	err := s.tasks.WatchTask(ctx, req.GetId(), func(t *task.Task) error {
		return stream.Send(&taskv1.WatchTaskResponse{Task: toTask(t)})
	})
	return toStatus(ctx, err)
}

func (s *taskServer) RetryTask(ctx context.Context, req *taskv1.RetryTaskRequest) (*taskv1.RetryTaskResponse, error) {
	t, err := s.tasks.RetryTask(ctx, req.GetId())
	if err != nil {
		return nil, toStatus(ctx, err)
	}
	return &taskv1.RetryTaskResponse{Task: toTask(t)}, nil
}

func (s *taskServer) RollbackTask(ctx context.Context, req *taskv1.RollbackTaskRequest) (*taskv1.RollbackTaskResponse, error) {
	t, err := s.tasks.RollbackTask(ctx, req.GetId())
	if err != nil {
		return nil, toStatus(ctx, err)
	}
	return &taskv1.RollbackTaskResponse{Task: toTask(t)}, nil
}

func (s *taskServer) RetrySubtask(ctx context.Context, req *taskv1.RetrySubtaskRequest) (*taskv1.RetrySubtaskResponse, error) {
	t, err := s.tasks.RetrySubtask(ctx, req.GetTaskId(), req.GetSubtaskId())
	if err != nil {
		return nil, toStatus(ctx, err)
	}
	return &taskv1.RetrySubtaskResponse{Task: toTask(t)}, nil
}

func (s *taskServer) SkipSubtask(ctx context.Context, req *taskv1.SkipSubtaskRequest) (*taskv1.SkipSubtaskResponse, error) {
	t, err := s.tasks.SkipSubtask(ctx, req.GetTaskId(), req.GetSubtaskId())
	if err != nil {
		return nil, toStatus(ctx, err)
	}
	return &taskv1.SkipSubtaskResponse{Task: toTask(t)}, nil
}

func (s *taskServer) CancelSubtask(ctx context.Context, req *taskv1.CancelSubtaskRequest) (*taskv1.CancelSubtaskResponse, error) {
	t, err := s.tasks.CancelSubtask(ctx, req.GetTaskId(), req.GetSubtaskId())
	if err != nil {
		return nil, toStatus(ctx, err)
	}
	return &taskv1.CancelSubtaskResponse{Task: toTask(t)}, nil
}

func (s *taskServer) GetSubtaskLog(ctx context.Context, req *taskv1.GetSubtaskLogRequest) (*taskv1.GetSubtaskLogResponse, error) {
	page, err := s.tasks.SubtaskLog(ctx, req.GetTaskId(), req.GetSubtaskId(),
		task.LogQuery{After: req.GetOffset(), Limit: int(req.GetLimit())})
	if err != nil {
		return nil, toStatus(ctx, err)
	}
	return &taskv1.GetSubtaskLogResponse{Log: page.Text, NextOffset: page.Next, More: page.More, Lines: int32(page.Lines)}, nil
}
