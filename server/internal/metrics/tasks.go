package metrics

import (
	"context"

	"github.com/prometheus/client_golang/prometheus"

	"agentplane/internal/metrics"
	"agentplane/server/internal/task"
)

type taskMetrics struct {
	created, ended *prometheus.CounterVec
	subtask        *prometheus.HistogramVec
	names          *metrics.Bounded // task names
	subtaskNames   *metrics.Bounded
}

func newTaskMetrics() taskMetrics {
	return taskMetrics{
		created: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "tasks_created_total",
			Help: "Tasks created by this replica, by task name (e.g. \"Stop OCP agent\") and type (MANUAL, SCHEDULED, SYS_SCHEDULED); an idempotent repeat that returns an existing task is not counted.",
		}, []string{"name", "type"}),
		ended: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "tasks_ended_total",
			Help: "Tasks that became final (status SUCCESSFUL or FAILED) on this replica, by task name, type and status; a task reopened (retry, rollback) and ended again counts again.",
		}, []string{"name", "type", "status"}),
		subtask: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: ns, Name: "subtask_duration_seconds",
			Help:    "Time from a subtask attempt's start to its end, by subtask name and final status (SUCCESSFUL, FAILED).",
			Buckets: subtaskBuckets,
		}, []string{"name", "status"}),
		names:        metrics.NewBounded(maxLabelValues),
		subtaskNames: metrics.NewBounded(maxLabelValues),
	}
}

func (t *taskMetrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{t.created, t.ended, t.subtask}
}

// TaskStore returns s reporting to m what it stores: the tasks created,
// those that become final, and the subtasks that end. Hand it to the
// engine (task.Config.Store) in place of s.
func (m *Server) TaskStore(s task.Store) task.Store { return taskStore{Store: s, m: &m.tasks} }

// taskStore is a task.Store that counts what is stored through it.
type taskStore struct {
	task.Store
	m *taskMetrics
}

func (s taskStore) CreateTask(ctx context.Context, p task.Plan) (*task.Task, bool, error) {
	t, existed, err := s.Store.CreateTask(ctx, p)
	if err == nil && !existed && t != nil {
		s.m.created.WithLabelValues(s.m.names.Value(t.Name), string(t.Type)).Inc()
	}
	return t, existed, err
}

func (s taskStore) UpdateTask(ctx context.Context, before, after *task.Task, take []task.Resource, logs ...task.SubtaskLogLine) error {
	err := s.Store.UpdateTask(ctx, before, after, take, logs...)
	if err == nil && before != nil && after != nil {
		s.m.stored(before, after)
	}
	return err
}

// stored counts what the step from before to after ended: the task, and
// each subtask attempt that became final.
func (t *taskMetrics) stored(before, after *task.Task) {
	if after.Status.Final() && !before.Status.Final() {
		t.ended.WithLabelValues(t.names.Value(after.Name), string(after.Type), string(after.Status)).Inc()
	}
	for i := range after.Subtasks {
		a := &after.Subtasks[i]
		if !subtaskFinal(a.Status) {
			continue
		}
		// The engine steps a copy of before: the subtasks are in the
		// same order (looked up by id otherwise).
		var b *task.Subtask
		if i < len(before.Subtasks) && before.Subtasks[i].ID == a.ID {
			b = &before.Subtasks[i]
		} else {
			b = before.Subtask(a.ID)
		}
		if b != nil && subtaskFinal(b.Status) && b.RunTime == a.RunTime && b.EndTime.Equal(a.EndTime) {
			continue // ended before this step
		}
		if a.StartTime.IsZero() || a.EndTime.Before(a.StartTime) {
			continue // skipped without running: no duration
		}
		t.subtask.WithLabelValues(t.subtaskNames.Value(a.Name), string(a.Status)).Observe(a.EndTime.Sub(a.StartTime).Seconds())
	}
}

func subtaskFinal(s task.SubtaskStatus) bool {
	return s == task.SubtaskSuccessful || s == task.SubtaskFailed
}
