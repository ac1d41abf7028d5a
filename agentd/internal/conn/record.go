package conn

import (
	"cmp"
	"context"
	"slices"
	"sync"

	"github.com/rs/zerolog"

	"agentplane/agentd/internal/proc"
	"agentplane/agentd/internal/state"
)

// recorder keeps, for each base name, how the process last seen running
// under it was started (a proc.StartSpec), in memory and in the state dir,
// so that a start after everything was stopped, even by a restarted agentd,
// knows what to run. Its methods are safe for concurrent use.
type recorder struct {
	runner Runner
	state  *state.State
	log    zerolog.Logger

	mu     sync.Mutex
	byName map[string]proc.StartSpec
	failed map[identity]bool // processes whose spec could not be read, among those last seen
	dirty  bool              // byName differs from the state dir
}

// identity names one process: a PID and its start time in Unix milliseconds.
type identity struct {
	pid        int32
	createTime int64
}

// newRecorder loads the specs recorded in st.
func newRecorder(runner Runner, st *state.State, log zerolog.Logger) *recorder {
	r := &recorder{runner: runner, state: st, log: log, byName: map[string]proc.StartSpec{}, failed: map[identity]bool{}}
	specs, err := st.StartSpecs()
	if err != nil {
		log.Error().Err(err).Msg("cannot read recorded start specs; recording anew")
	}
	for _, sp := range specs {
		r.byName[sp.Name] = sp
	}
	return r
}

// observe records the processes of a scan. A base name's spec is read again
// only when no process of that name matches the recorded (pid, create time),
// so a scan that finds the same processes costs a map lookup per process.
// The state dir is written (and synced) only when how a process is started
// changed: a process started again the same way (a new pid and create time,
// the rest equal) is recorded in memory only, since the file already starts
// it the same way. The file's stale pid only makes a restarted agentd read
// that spec once more.
func (r *recorder) observe(ctx context.Context, ts []proc.Target) {
	r.mu.Lock()
	defer r.mu.Unlock()
	fresh := map[string]bool{}
	seen := make(map[identity]bool, len(ts))
	for _, t := range ts {
		id := identity{t.PID, t.CreateTime.UnixMilli()}
		seen[id] = true
		if sp, ok := r.byName[t.Name]; ok && id == (identity{sp.PID, sp.CreateTime.UnixMilli()}) {
			fresh[t.Name] = true
		}
	}
	for id := range r.failed {
		if !seen[id] {
			delete(r.failed, id)
		}
	}
	for _, t := range ts {
		id := identity{t.PID, t.CreateTime.UnixMilli()}
		if fresh[t.Name] || r.failed[id] {
			continue
		}
		sp, err := r.runner.ReadStartSpec(ctx, t)
		if err != nil {
			r.failed[id] = true // warned once, not read again
			r.log.Warn().Err(err).Int32("pid", t.PID).Str("name", t.Name).Msg("cannot record how the process was started")
			continue
		}
		if old, ok := r.byName[t.Name]; !ok || !sameStart(old, sp) {
			r.dirty = true
		}
		r.byName[t.Name] = sp
		fresh[t.Name] = true
		r.log.Info().Int32("pid", t.PID).Str("name", t.Name).Str("user", sp.User).Strs("args", sp.Args).
			Msg("recorded how the process was started")
	}
	if !r.dirty {
		return
	}
	if err := r.state.SaveStartSpecs(r.sorted()); err != nil {
		r.log.Error().Err(err).Msg("cannot save start specs")
		return
	}
	r.dirty = false
}

// specs returns the recorded specs, sorted by name.
func (r *recorder) specs() []proc.StartSpec {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.sorted()
}

func (r *recorder) sorted() []proc.StartSpec {
	out := make([]proc.StartSpec, 0, len(r.byName))
	for _, sp := range r.byName {
		out = append(out, sp)
	}
	slices.SortFunc(out, func(a, b proc.StartSpec) int { return cmp.Compare(a.Name, b.Name) })
	return out
}

// sameStart reports whether a and b start a process the same way: equal but
// for the process they were read from (PID, CreateTime).
func sameStart(a, b proc.StartSpec) bool {
	return a.Name == b.Name && a.Exe == b.Exe && slices.Equal(a.Args, b.Args) &&
		(a.Env == nil) == (b.Env == nil) && slices.Equal(a.Env, b.Env) && a.Dir == b.Dir &&
		a.UID == b.UID && a.GID == b.GID && slices.Equal(a.Groups, b.Groups) && a.User == b.User
}
