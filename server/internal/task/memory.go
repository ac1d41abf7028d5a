package task

import (
	"context"
	"fmt"
	"sync"
	"time"

	"agentplane/server/internal/errs"
)

// memory is what the engine keeps of tasks between steps: each task that is
// not final (or is watched) as it last stored it, the outcomes queued on a
// task, and the channels of the task's watchers. It is safe for concurrent
// use.
type memory struct {
	mu       sync.Mutex
	watchers map[int64]map[chan struct{}]struct{}
	tasks    map[int64]*held // tasks kept between steps, or with outcomes queued
}

// held is what the engine keeps of one task (under memory.mu).
type held struct {
	// stored is the task as this engine last stored it, or nil (read it
	// from the store). It is never modified: a step changes a copy.
	stored *Task
	pos    map[int64]int // positions of stored's subtasks
	// outcomes are finished attempts waiting to be stored; draining says a
	// goroutine stores them.
	outcomes []*outcome
	draining bool
}

// load returns the task as this engine last stored it, else as st has it,
// with its subtasks' positions. The task's lock is held.
func (m *memory) load(ctx context.Context, st Store, id int64) (*Task, map[int64]int, error) {
	m.mu.Lock()
	if h := m.tasks[id]; h != nil && h.stored != nil {
		t, pos := h.stored, h.pos
		m.mu.Unlock()
		return t, pos, nil
	}
	m.mu.Unlock()
	t, err := st.GetTask(ctx, id)
	if err != nil {
		return nil, nil, err
	}
	return t, positions(t), nil
}

// current returns the task as this engine last stored it, else as st has
// it. It must not be modified.
func (m *memory) current(ctx context.Context, st Store, id int64) (*Task, error) {
	if t := m.kept(id); t != nil {
		return t, nil
	}
	return st.GetTask(ctx, id)
}

// kept returns task id as this engine last stored it, or nil.
func (m *memory) kept(id int64) *Task {
	m.mu.Lock()
	defer m.mu.Unlock()
	if h := m.tasks[id]; h != nil {
		return h.stored
	}
	return nil
}

// keep records t as stored: kept until it is final, or, while someone
// watches it, until the last watcher has seen it final.
func (m *memory) keep(t *Task, pos map[int64]int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	h := m.tasks[t.ID]
	switch {
	case !t.Status.Final() || len(m.watchers[t.ID]) > 0:
		if h == nil {
			h = &held{}
			m.tasks[t.ID] = h
		}
		h.stored, h.pos = t, pos
	case h != nil:
		h.stored, h.pos = nil, nil
		m.tidy(t.ID, h)
	}
}

// forget drops what the engine keeps of task id: the next step reads it.
func (m *memory) forget(id int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if h := m.tasks[id]; h != nil {
		h.stored, h.pos = nil, nil
		m.tidy(id, h)
	}
}

// tidy removes h, task id's entry, once it holds nothing. m.mu is held.
func (m *memory) tidy(id int64, h *held) {
	if h.stored == nil && len(h.outcomes) == 0 && !h.draining {
		delete(m.tasks, id)
	}
}

// queue queues o on task taskID; drain says the caller must start the
// goroutine that stores the task's outcomes (none runs).
func (m *memory) queue(taskID int64, o *outcome) (drain bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	h := m.tasks[taskID]
	if h == nil {
		h = &held{}
		m.tasks[taskID] = h
	}
	h.outcomes = append(h.outcomes, o)
	drain = !h.draining
	h.draining = true
	return drain
}

// take returns the outcomes queued on task id, and removes them; when none
// is left it returns nil and the draining goroutine must end.
func (m *memory) take(id int64) []*outcome {
	m.mu.Lock()
	defer m.mu.Unlock()
	h := m.tasks[id]
	batch := h.outcomes
	h.outcomes = nil
	if len(batch) == 0 {
		h.draining = false
		m.tidy(id, h)
	}
	return batch
}

// notify wakes the watchers of task id; a pending wake-up is enough.
func (m *memory) notify(id int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for ch := range m.watchers[id] {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// watch registers a watcher of task id: ch receives a wake-up after each
// change. Call stop when done.
func (m *memory) watch(id int64) (ch chan struct{}, stop func()) {
	ch = make(chan struct{}, 1)
	m.mu.Lock()
	if m.watchers[id] == nil {
		m.watchers[id] = map[chan struct{}]struct{}{}
	}
	m.watchers[id][ch] = struct{}{}
	m.mu.Unlock()
	return ch, func() {
		m.mu.Lock()
		defer m.mu.Unlock()
		delete(m.watchers[id], ch)
		if len(m.watchers[id]) == 0 {
			delete(m.watchers, id)
			if h := m.tasks[id]; h != nil && h.stored != nil && h.stored.Status.Final() {
				h.stored, h.pos = nil, nil // kept only for its watchers (see keep)
				m.tidy(id, h)
			}
		}
	}
}

// watchRefresh is how often a watch reads its task again without being
// woken: a task another replica runs changes there, and the wake-up comes
// through Changed, unless the routing layer lost it.
const watchRefresh = 5 * time.Second

// watch calls send with the task now and after every change, and returns
// nil once it has sent the task in a final status (see Service.WatchTask).
// The task is the one this engine keeps when it runs it, else the store's.
func (e *Engine) watch(ctx context.Context, id int64, send func(*Task) error) error {
	ch, stop := e.mem.watch(id)
	defer stop()
	var last *Task
	for {
		began := time.Now()
		t, err := e.mem.current(ctx, e.cfg.Store, id)
		if err != nil {
			return err
		}
		if last == nil || t != last && !sameTask(last, t) {
			if err := send(t); err != nil {
				return err
			}
			last = t
		}
		if t.Status.Final() {
			return nil
		}
		ended := time.Now()
		cost := ended.Sub(began)
		refresh := time.NewTimer(watchRefresh)
		select {
		case <-ctx.Done():
			refresh.Stop()
			return ctx.Err()
		case <-e.base.Done():
			refresh.Stop()
			return fmt.Errorf("watching task %d: server shutting down: %w", id, errs.ErrUnavailable)
		case <-ch:
			refresh.Stop()
		case <-refresh.C:
		}
		if wait := cost - time.Since(ended); wait > 0 {
			timer := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				timer.Stop()
				return ctx.Err()
			case <-e.base.Done():
				timer.Stop()
				return fmt.Errorf("watching task %d: server shutting down: %w", id, errs.ErrUnavailable)
			case <-timer.C:
			}
		}
	}
}

// sameTask reports whether a and b, versions of the same task, agree on
// everything a step changes.
func sameTask(a, b *Task) bool {
	if a.Status != b.Status || a.Operation != b.Operation || !a.EndTime.Equal(b.EndTime) ||
		len(a.Subtasks) != len(b.Subtasks) {
		return false
	}
	for i := range a.Subtasks {
		x, y := &a.Subtasks[i], &b.Subtasks[i]
		if x.ID != y.ID || x.Status != y.Status || x.Operation != y.Operation || x.RunTime != y.RunTime ||
			x.Executor != y.Executor || !x.StartTime.Equal(y.StartTime) || !x.EndTime.Equal(y.EndTime) ||
			x.Message != y.Message || x.ProhibitRollback != y.ProhibitRollback {
			return false
		}
	}
	return true
}

func cloneTask(t *Task) *Task {
	c := *t
	c.Subtasks = make([]Subtask, len(t.Subtasks))
	copy(c.Subtasks, t.Subtasks)
	return &c
}
