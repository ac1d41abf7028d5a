package rpc

import (
	"context"

	taskv1 "agentplane/gen/agentplane/task/v1"
	"agentplane/server/task"
)

// Tasks is the task API the adapter serves.
type Tasks interface {
	GetTask(ctx context.Context, id int64) (*task.Task, error)
	ListTasks(ctx context.Context, q task.ListQuery) (task.Page, error)
	WatchTask(ctx context.Context, id int64, send func(*task.Task) error) error
}

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
	p, err := s.tasks.ListTasks(ctx, task.ListQuery{
		HostID: req.GetHostId(), Status: fromTaskStatus(req.GetStatus()), Page: int(req.GetPage()), Size: int(req.GetSize()),
	})
	if err != nil {
		return nil, toStatus(ctx, err)
	}
	out := &taskv1.ListTasksResponse{TotalElements: p.Total}
	for i := range p.Tasks {
		out.Tasks = append(out.Tasks, toTask(&p.Tasks[i]))
	}
	return out, nil
}

func (s *taskServer) WatchTask(req *taskv1.WatchTaskRequest, stream taskv1.TaskService_WatchTaskServer) error {
	ctx := stream.Context()
	err := s.tasks.WatchTask(ctx, req.GetId(), func(t *task.Task) error {
		return stream.Send(&taskv1.WatchTaskResponse{Task: toTask(t)})
	})
	return toStatus(ctx, err)
}
