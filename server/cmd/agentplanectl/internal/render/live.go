package render

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"

	taskv1 "agentplane/gen/agentplane/task/v1"
)

// Live draws a followed task on a terminal with mpb, redrawn in place ten
// times a second:
//
//	task 7 Batch stop OCP agent  RUNNING  4.1s
//	  ✓ Prepare stop OCP agent          3 SUCCESSFUL           0.6s
//	  ⠹ Stop all OCP agent processes    1 FAILED, 2 RUNNING    3.4s
//	  · Finish OCP agent operation      PENDING
//	  hosts [=========>-------------] 1/3 done, 1 failed: db-7
//
// Each line is an mpb bar whose filler and decorators read the latest view;
// the hosts line shows only for a batch.
type Live struct {
	w     io.Writer
	names HostNamer
	now   func() time.Time

	mu   sync.Mutex
	view *View
	note string

	p     *mpb.Progress
	bars  []*mpb.Bar
	hosts *mpb.Bar // the batch's progress bar
}

// NewLive returns a live follower drawing on the terminal w.
func NewLive(w io.Writer, names HostNamer) *Live {
	return &Live{w: w, names: names, now: time.Now}
}

// Update takes the task's new state; the next refresh draws it.
func (l *Live) Update(t *taskv1.Task) {
	v := NewView(t)
	l.mu.Lock()
	l.view, l.note = v, ""
	l.mu.Unlock()
	if l.p == nil {
		l.start(v)
	}
	if l.hosts != nil {
		l.hosts.SetCurrent(int64(v.Done + v.Failed))
	}
}

// Note shows msg on the header line until the next update.
func (l *Live) Note(msg string) {
	l.mu.Lock()
	l.note = msg
	l.mu.Unlock()
}

// snapshot returns the latest view.
func (l *Live) snapshot() (*View, string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.view, l.note
}

// start builds the bars: the groups of the DAG are fixed by the task's plan.
func (l *Live) start(v *View) {
	l.p = mpb.New(mpb.WithOutput(l.w), mpb.WithRefreshRate(100*time.Millisecond), mpb.WithAutoRefresh())
	line := func(fn func() string) *mpb.Bar {
		b := l.p.New(1, mpb.NopStyle(), mpb.PrependDecorators(decor.Any(func(decor.Statistics) string { return fn() })))
		l.bars = append(l.bars, b)
		return b
	}
	line(l.header)
	for i := range v.Groups {
		l.groupBar(i)
	}
	if v.Batch {
		l.hosts = l.p.New(int64(v.Branches), mpb.BarStyle().Lbound("[").Rbound("]"),
			mpb.PrependDecorators(decor.Any(func(decor.Statistics) string { return "  hosts " })),
			mpb.AppendDecorators(decor.Any(func(decor.Statistics) string {
				v, _ := l.snapshot()
				s := fmt.Sprintf(" %d/%d done, %d failed", v.Done, v.Branches, v.Failed)
				if v.Failed > 0 {
					s += ": " + FailedHostList(v, l.names, 5)
				}
				return s
			})))
		l.bars = append(l.bars, l.hosts)
	}
}

// groupBar adds the line of the i-th group: a spinner while it runs, else
// its mark; its name, state and elapsed time.
func (l *Live) groupBar(i int) {
	group := func() *Group {
		v, _ := l.snapshot()
		if i < len(v.Groups) {
			return v.Groups[i]
		}
		return &Group{Counts: map[taskv1.SubtaskStatus]int{}}
	}
	filler := mpb.BarFillerFunc(func(w io.Writer, _ decor.Statistics) error {
		_, err := io.WriteString(w, colorMark(group(), l.now()))
		return err
	})
	b, _ := l.p.Add(1, filler,
		mpb.PrependDecorators(decor.Any(func(decor.Statistics) string { return "  " })),
		mpb.AppendDecorators(
			decor.Any(func(decor.Statistics) string {
				return " " + strings.Repeat("  ", min(group().Depth, 8)) + group().Name
			}, decor.WCSyncSpaceR),
			decor.Any(func(decor.Statistics) string { return group().State() }, decor.WCSyncSpaceR),
			decor.Any(func(decor.Statistics) string {
				if d := group().Elapsed(l.now()); d > 0 {
					return Duration(d)
				}
				return ""
			}),
		),
		mpb.BarWidth(1))
	l.bars = append(l.bars, b)
}

var spinner = []string{"⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"}

// colorMark is the group's mark, green ✓ or red ✗, or a spinner frame
// while it runs.
func colorMark(g *Group, now time.Time) string {
	switch m := g.Mark(); m {
	case "":
		return "\x1b[36m" + spinner[now.UnixMilli()/100%int64(len(spinner))] + "\x1b[0m"
	case "✓":
		return "\x1b[32m✓\x1b[0m"
	case "✗":
		return "\x1b[31m✗\x1b[0m"
	default:
		return m
	}
}

// header is the task's line: id, name, state, elapsed, and a note.
func (l *Live) header() string {
	v, note := l.snapshot()
	t := v.Task
	s := fmt.Sprintf("task %d %s  %s  %s", t.GetId(), t.GetName(), TaskState(t.GetStatus()), Duration(TaskElapsed(t, l.now())))
	if note != "" {
		s += "  (" + note + ")"
	}
	return s
}

// Close completes every bar, so that mpb draws the last state once more
// and leaves it on the screen.
func (l *Live) Close() {
	if l.p == nil {
		return
	}
	for _, b := range l.bars {
		b.SetTotal(-1, true)
	}
	l.p.Wait()
}
