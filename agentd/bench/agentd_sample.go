package bench

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// agentdSampler follows one process's RSS (sampled) and CPU time (between
// start and stop).
type agentdSampler struct {
	pid                       int
	n                         int
	maxRSS, firstRSS, lastRSS int64
	sumRSS                    float64
	cpu0, ticks0              time.Duration
	cpu, ticks                time.Duration // used between start and stop
	began, ended              time.Time
}

func newAgentdSampler(pid int) *agentdSampler { return &agentdSampler{pid: pid} }

func (s *agentdSampler) start() error {
	s.began = time.Now()
	var err1, err2 error
	s.cpu0, err1 = agentdSchedCPU(s.pid)
	s.ticks0, err2 = CPUTime(s.pid)
	return errors.Join(err1, err2, s.sample())
}

func (s *agentdSampler) sample() error {
	rss, err := RSS(s.pid)
	if err != nil {
		return fmt.Errorf("pid %d: %w", s.pid, err)
	}
	if s.n == 0 {
		s.firstRSS = rss
	}
	s.lastRSS = rss
	s.maxRSS = max(s.maxRSS, rss)
	s.sumRSS += float64(rss)
	s.n++
	return nil
}

func (s *agentdSampler) stop() error {
	s.ended = time.Now()
	cpu, err1 := agentdSchedCPU(s.pid)
	ticks, err2 := CPUTime(s.pid)
	s.cpu, s.ticks = cpu-s.cpu0, ticks-s.ticks0
	return errors.Join(err1, err2, s.sample())
}

func (s *agentdSampler) meanRSS() float64 { return s.sumRSS / float64(max(s.n, 1)) }

// cpuPercent is the CPU time used (schedstat) as a percentage of one core
// over the window.
func (s *agentdSampler) cpuPercent() float64 {
	return 100 * float64(s.cpu) / float64(s.ended.Sub(s.began))
}

// agentdSchedCPU is the CPU time a process's threads have used, in
// nanoseconds, from /proc/pid/task/*/schedstat (the stat ticks are 10 ms
// coarse, too coarse for 60 ms in a minute).
func agentdSchedCPU(pid int) (time.Duration, error) {
	dir := fmt.Sprintf("/proc/%d/task", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0, err
	}
	var sum time.Duration
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name(), "schedstat"))
		if err != nil {
			continue // the thread exited
		}
		f := strings.Fields(string(b))
		if len(f) == 0 {
			return 0, fmt.Errorf("%s/%s/schedstat: empty", dir, e.Name())
		}
		ns, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("%s/%s/schedstat: %w", dir, e.Name(), err)
		}
		sum += time.Duration(ns)
	}
	return sum, nil
}
