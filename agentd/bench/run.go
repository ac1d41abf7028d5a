package bench

import (
	"context"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Scenario is one benchmark: it measures and returns its rows.
type Scenario struct {
	Order int    // run order
	Name  string // selects it with -only
	Run   func(ctx context.Context, env *Env) ([]Row, error)
}

var (
	regMu     sync.Mutex
	scenarios []Scenario
)

// register adds a scenario; each scenario's file registers itself.
func register(s Scenario) {
	regMu.Lock()
	defer regMu.Unlock()
	scenarios = append(scenarios, s)
}

// Scenarios returns the registered scenarios in run order.
func Scenarios() []Scenario {
	regMu.Lock()
	defer regMu.Unlock()
	s := slices.Clone(scenarios)
	slices.SortFunc(s, func(a, b Scenario) int { return a.Order - b.Order })
	return s
}

// Options configure a run.
type Options struct {
	Bin     string   // built binaries
	Work    string   // scratch root; each scenario gets a dir in it
	Short   bool     // the short mode
	Only    []string // scenario names; empty runs all
	Skip    []string // scenario names not to run (e.g. cluster where mariadbd is missing)
	Version string
	Logf    func(format string, args ...any)
	// ClusterBatch, when above 0, makes the cluster scenario run only its
	// batch row, with this many simulated hosts; ClusterNoKill runs it
	// without killing a replica (the batch alone, with the database's
	// statement counts).
	ClusterBatch  int
	ClusterNoKill bool
}

// Run runs the selected scenarios one after another (they measure the same
// machine, so never at once) and returns the report. A scenario that fails
// is recorded in Report.Errors and the run goes on.
func Run(ctx context.Context, o Options) (*Report, error) {
	known := map[string]bool{}
	for _, s := range Scenarios() {
		known[s.Name] = true
	}
	for _, name := range slices.Concat(o.Only, o.Skip) {
		if !known[name] {
			return nil, fmt.Errorf("no scenario %q: want one of %s", name, strings.Join(slices.Sorted(maps.Keys(known)), ", "))
		}
	}
	if err := RaiseFileLimit(); err != nil {
		return nil, err
	}
	rep := &Report{Start: time.Now().UTC(), Short: o.Short, Machine: ReadMachine(o.Version)}
	for _, s := range Scenarios() {
		if len(o.Only) > 0 && !slices.Contains(o.Only, s.Name) || slices.Contains(o.Skip, s.Name) {
			continue
		}
		if ctx.Err() != nil {
			return rep, ctx.Err()
		}
		dir := filepath.Join(o.Work, s.Name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return rep, err
		}
		env := &Env{Bin: o.Bin, Work: dir, Short: o.Short, Logf: o.Logf, ClusterBatch: o.ClusterBatch, ClusterNoKill: o.ClusterNoKill}
		o.Logf("== %s", s.Name)
		began := time.Now()
		rows, err := s.Run(ctx, env)
		env.Cleanup()
		rep.Rows = append(rep.Rows, rows...)
		if err != nil {
			rep.Errors = append(rep.Errors, fmt.Sprintf("%s: %v (logs in %s)", s.Name, err, dir))
			o.Logf("%s failed after %s: %v", s.Name, time.Since(began).Round(time.Second), err)
			continue
		}
		o.Logf("%s done in %s", s.Name, time.Since(began).Round(time.Second))
	}
	return rep, nil
}

// RaiseFileLimit raises this process's open-file limit (which the processes
// it starts inherit) as far as it goes: 10,000 streams need 10,000 sockets
// on each side.
func RaiseFileLimit() error {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return err
	}
	want := uint64(1 << 20)
	if l.Max < want {
		// Raising the hard limit needs CAP_SYS_RESOURCE; fall back to it.
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: want, Max: want}); err == nil {
			return nil
		}
		want = l.Max
	}
	return syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: want, Max: l.Max})
}

// FileLimit is the current soft open-file limit.
func FileLimit() uint64 {
	var l syscall.Rlimit
	_ = syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l)
	return l.Cur
}

// ReadMachine describes this machine.
func ReadMachine(version string) Machine {
	m := Machine{Cores: runtime.NumCPU(), Go: runtime.Version(), Version: version}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "model name"); ok {
				m.CPU = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	var si syscall.Sysinfo_t
	if syscall.Sysinfo(&si) == nil {
		m.MemGiB = int((uint64(si.Totalram)*uint64(si.Unit) + 1<<29) >> 30) //nolint:unconvert // Totalram is a uint32 on 32-bit Linux
	}
	var u syscall.Utsname
	if syscall.Uname(&u) == nil {
		m.Kernel = "Linux " + cstr(u.Release[:])
	}
	return m
}

func cstr(b []int8) string {
	var s []byte
	for _, c := range b {
		if c == 0 {
			break
		}
		s = append(s, byte(c))
	}
	return string(s)
}
