package console

import (
	"context"
	"sync"

	"agentplane/server/internal/task"
)

// LogNotifier is a task.LogStore that tells the console's log streams when
// lines were stored for a subtask: the server stores agents' progress lines
// through it (task.NewLogWriter(notifier)). Lines another replica stores
// reach a stream at its task's next change (WatchTask's notifications).
type LogNotifier struct {
	task.LogStore

	mu   sync.Mutex
	subs map[int64]map[chan struct{}]struct{}
}

// NewLogNotifier returns a LogNotifier storing lines in s.
func NewLogNotifier(s task.LogStore) *LogNotifier {
	return &LogNotifier{LogStore: s, subs: map[int64]map[chan struct{}]struct{}{}}
}

// AppendSubtaskLogs stores lines, then wakes the streams of their subtasks.
func (n *LogNotifier) AppendSubtaskLogs(ctx context.Context, lines []task.SubtaskLogLine) error {
	if err := n.LogStore.AppendSubtaskLogs(ctx, lines); err != nil {
		return err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, l := range lines {
		for ch := range n.subs[l.SubtaskID] {
			select {
			case ch <- struct{}{}:
			default: // already woken
			}
		}
	}
	return nil
}

// subscribe returns a channel that receives after lines of subtask id are
// stored (changes that follow each other are merged), and the call that
// ends the subscription.
func (n *LogNotifier) subscribe(id int64) (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	n.mu.Lock()
	if n.subs[id] == nil {
		n.subs[id] = map[chan struct{}]struct{}{}
	}
	n.subs[id][ch] = struct{}{}
	n.mu.Unlock()
	return ch, func() {
		n.mu.Lock()
		delete(n.subs[id], ch)
		if len(n.subs[id]) == 0 {
			delete(n.subs, id)
		}
		n.mu.Unlock()
	}
}
