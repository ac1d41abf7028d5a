package api

import (
	"context"

	"agentplane/server/internal/task"
)

// TaskReader reads tasks and their subtasks' logs (task.Service).
type TaskReader interface {
	GetTask(ctx context.Context, id int64) (*task.Task, error)
	ListTasks(ctx context.Context, q task.ListQuery) (task.Page, error)
	SubtaskLog(ctx context.Context, taskID, subtaskID int64, q task.LogQuery) (task.LogPage, error)
}

// TaskWatcher follows a task (task.Service): WatchTask calls send with the
// task now and after every change, and returns nil once it has sent the task
// in a final status, or early with send's error or ctx's.
type TaskWatcher interface {
	WatchTask(ctx context.Context, id int64, send func(*task.Task) error) error
}

// TaskOperations act on a task or one of its subtasks (task.Service).
type TaskOperations interface {
	RetryTask(ctx context.Context, id int64) (*task.Task, error)
	RollbackTask(ctx context.Context, id int64) (*task.Task, error)
	RetrySubtask(ctx context.Context, taskID, subtaskID int64) (*task.Task, error)
	SkipSubtask(ctx context.Context, taskID, subtaskID int64) (*task.Task, error)
	CancelSubtask(ctx context.Context, taskID, subtaskID int64) (*task.Task, error)
}

// Tasks is the task API both adapters serve; the gRPC adapter adds
// TaskWatcher.
type Tasks interface {
	TaskReader
	TaskOperations
}
