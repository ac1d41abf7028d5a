package proc

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// events counts what a Stopper reports to its Observer.
type events struct {
	mu     sync.Mutex
	counts map[string]int
}

func (e *events) add(k string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.counts[k]++
}

func (e *events) get(k string) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.counts[k]
}

func (e *events) ScanDone(took time.Duration, err error) {
	e.add(fmt.Sprintf("scan err=%v positive=%v", err != nil, took > 0))
}

func (e *events) SignalSent(sig string) { e.add(sig) }

func (e *events) CommandDone(kind string, _ time.Duration, err error) {
	e.add(fmt.Sprintf("%s failed=%v", kind, err != nil))
}

// A stop of processes that ignore SIGTERM reports one SIGTERM and one
// SIGKILL per process, its scans, and one command; a failing stop and a
// failing start are reported with their errors.
func TestObserver(t *testing.T) {
	home := newHome(t)
	start(t, true, []string{"FAKE_OCP_MODE=ignore-term"}, filepath.Join(home, "bin", "ocp_agentd"))
	ev := &events{counts: map[string]int{}}
	s := &Stopper{InstallHome: home, Grace: 200 * time.Millisecond, Log: testLogger(t), Observer: ev}
	found := waitNames(t, s, BaseNames...)
	scans := ev.get("scan err=false positive=true")
	if err := s.StopAll(context.Background(), 0, nil); err != nil {
		t.Fatalf("StopAll: %v", err)
	}
	if got := ev.get("SIGTERM"); got != len(found) {
		t.Errorf("%d SIGTERM reported, want %d", got, len(found))
	}
	if got := ev.get("SIGKILL"); got != len(found) {
		t.Errorf("%d SIGKILL reported, want %d", got, len(found))
	}
	if got := ev.get("stop failed=false"); got != 1 {
		t.Errorf("%d successful stops reported, want 1", got)
	}
	if got := ev.get("scan err=false positive=true") - scans; got < 2 {
		t.Errorf("%d scans reported for a stop, want at least 2 (before and after)", got)
	}

	bad := &Stopper{InstallHome: "relative/home", Observer: ev}
	_ = bad.StopAll(context.Background(), time.Second, nil)
	_, _ = bad.StartAll(context.Background(), nil, nil)
	if ev.get("scan err=true positive=true")+ev.get("scan err=true positive=false") != 1 {
		t.Errorf("failed scan not reported: %v", ev.counts)
	}
	if ev.get("stop failed=true") != 1 || ev.get("start failed=true") != 1 {
		t.Errorf("failed stop and start not reported once each: %v", ev.counts)
	}
}
