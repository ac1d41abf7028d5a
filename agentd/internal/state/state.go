// Package state owns agentd's on-disk state in --state-dir: the host id the
// server assigned, how the OCP Agent's base processes were started, and the
// command journal that makes every (subtask, attempt) run at most once and
// keeps its result until the server acknowledges it.
//
// Layout:
//
//	lock                      flock held while a State is open
//	host_id                   decimal host id, written atomically
//	processes.json            start specs of the base processes last seen
//	                          running (0600: it holds their environments)
//	runs/<subtask>-<attempt>  marker created (O_EXCL) before a command runs;
//	                          holds the result's JSON once the command ended
//	outbox/<subtask>-<attempt>.json
//	                          a result not yet acknowledged by the server
//	agent.key, agent.crt      the mTLS identity, owned by package identity
//
// Markers are kept (a repeated command is answered from them) and removed
// by Open once older than MarkerTTL, unless their result is still pending.
//
// A marker or outbox entry that does not decode (a disk or filesystem fault)
// does not stop Open: it is renamed aside (<name>.corrupt-<time>, kept for
// the operator), logged at error level, and its command, whose state is
// unknown, is never run again: it is answered with the result the other
// file still holds, else FAILED with StateLostMessage.
package state

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"agentplane/agentd/internal/atomicfile"
	"agentplane/agentd/internal/proc"
)

// MarkerTTL is how long a run marker is kept after it was last written.
const MarkerTTL = 7 * 24 * time.Hour

// RestartedMessage is the result message of a command that was running when
// agentd stopped: it is not run again.
const RestartedMessage = "agentd restarted while the command ran; not re-run"

// StateLostMessage is the result message of a command whose journal entry
// was found corrupt: whether and how it ran is unknown, and it is not run
// again.
const StateLostMessage = "state lost: agentd's journal entry for this command was corrupt; not re-run"

// Errors returned by State.
var (
	// ErrInvalidArgument: a subtask id or attempt that is not positive, or a
	// host id that is not positive.
	ErrInvalidArgument = errors.New("invalid argument")
	// ErrLocked: another process holds the state dir.
	ErrLocked = errors.New("state dir in use by another process")
)

// Outcome is how a command ended.
type Outcome string

// Outcomes.
const (
	OutcomeSucceeded Outcome = "SUCCEEDED"
	OutcomeFailed    Outcome = "FAILED"
	OutcomeCanceled  Outcome = "CANCELED"
)

// Result is the final outcome of a command, as stored in the journal.
type Result struct {
	SubtaskID  int64     `json:"subtask_id"`
	Attempt    int32     `json:"attempt"`
	Outcome    Outcome   `json:"outcome"`
	Message    string    `json:"message"`
	FinishTime time.Time `json:"finish_time"`
}

// State is an open state dir. Its methods are safe for concurrent use.
// Close releases the dir's lock.
type State struct {
	dir  string
	lock *os.File
	now  func() time.Time
	log  zerolog.Logger

	mu sync.Mutex // serialises journal changes
}

// Option configures Open.
type Option func(*State)

// WithLog sets the logger of what Open finds wrong (default: none).
func WithLog(l zerolog.Logger) Option { return func(s *State) { s.log = l } }

// Open opens (creating if needed) the state dir and takes its lock. It
// removes markers older than MarkerTTL whose result is not pending, and
// turns every marker without a result (a command that was running when
// agentd stopped) into a FAILED result with RestartedMessage, pending in the
// outbox. A corrupt marker or outbox entry is quarantined (see the package
// comment). It returns ErrLocked when another process has the dir open.
func Open(dir string, opts ...Option) (*State, error) {
	return open(dir, time.Now, opts...)
}

func open(dir string, now func() time.Time, opts ...Option) (*State, error) {
	for _, d := range []string{dir, filepath.Join(dir, "runs"), filepath.Join(dir, "outbox")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("creating state dir: %w", err)
		}
	}
	lock, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening state lock: %w", err)
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		lock.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("locking %s: %w", dir, ErrLocked)
		}
		return nil, fmt.Errorf("locking %s: %w", dir, err)
	}
	s := &State{dir: dir, lock: lock, now: now, log: zerolog.Nop()}
	for _, o := range opts {
		o(s)
	}
	if err := s.recover(); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// Close releases the state dir. The State must not be used afterwards.
func (s *State) Close() error {
	return s.lock.Close() // closing the descriptor drops the flock
}

// Dir returns the state dir.
func (s *State) Dir() string { return s.dir }

// HostID returns the stored host id, 0 when none was stored yet.
func (s *State) HostID() (int64, error) {
	b, err := os.ReadFile(filepath.Join(s.dir, "host_id"))
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("reading host id: %w", err)
	}
	id, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("parsing host id file: %w", err)
	}
	return id, nil
}

// SetHostID stores the host id atomically (temp file, fsync, rename).
func (s *State) SetHostID(id int64) error {
	if id <= 0 {
		return fmt.Errorf("host id %d: %w", id, ErrInvalidArgument)
	}
	if err := atomicfile.WriteFile(filepath.Join(s.dir, "host_id"), []byte(strconv.FormatInt(id, 10)+"\n")); err != nil {
		return fmt.Errorf("writing host id: %w", err)
	}
	return nil
}

// specsFile is the JSON document in processes.json.
type specsFile struct {
	StartSpecs []proc.StartSpec `json:"start_specs"`
}

// StartSpecs returns the recorded start specs in the order saved; none when
// nothing was recorded yet.
func (s *State) StartSpecs() ([]proc.StartSpec, error) {
	b, err := os.ReadFile(filepath.Join(s.dir, "processes.json"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading start specs: %w", err)
	}
	var f specsFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("decoding start specs: %w", err)
	}
	return f.StartSpecs, nil
}

// SaveStartSpecs replaces the recorded start specs atomically. The file is
// 0600: the specs hold the processes' environments.
func (s *State) SaveStartSpecs(specs []proc.StartSpec) error {
	b, err := json.MarshalIndent(specsFile{StartSpecs: specs}, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding start specs: %w", err)
	}
	if err := atomicfile.WriteFile(filepath.Join(s.dir, "processes.json"), append(b, '\n')); err != nil {
		return fmt.Errorf("writing start specs: %w", err)
	}
	return nil
}

// Begin records that (subtask, attempt) is about to run, durably, before it
// runs. alreadyRan is true when it was begun before (by this process or an
// earlier one): the caller must not run it, and answers with Lookup's result.
func (s *State) Begin(subtask int64, attempt int32) (alreadyRan bool, err error) {
	if err := validKey(subtask, attempt); err != nil {
		return false, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	f, err := os.OpenFile(s.marker(subtask, attempt), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("creating run marker: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return false, fmt.Errorf("syncing run marker: %w", err)
	}
	if err := f.Close(); err != nil {
		return false, fmt.Errorf("closing run marker: %w", err)
	}
	if err := atomicfile.SyncDir(filepath.Join(s.dir, "runs")); err != nil {
		return false, fmt.Errorf("syncing runs dir: %w", err)
	}
	return false, nil
}

// SaveResult stores the final result of a begun command: in the outbox
// (pending until Ack) and in its run marker (kept, to answer a repeated
// command). Both writes are atomic.
func (s *State) SaveResult(r Result) error {
	if err := validKey(r.SubtaskID, r.Attempt); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.saveResult(r)
}

// saveResult is SaveResult with s.mu held.
func (s *State) saveResult(r Result) error {
	b, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("encoding result: %w", err)
	}
	if err := atomicfile.WriteFile(s.outbox(r.SubtaskID, r.Attempt), b); err != nil {
		return fmt.Errorf("writing outbox: %w", err)
	}
	if err := atomicfile.WriteFile(s.marker(r.SubtaskID, r.Attempt), b); err != nil {
		return fmt.Errorf("writing run marker: %w", err)
	}
	return nil
}

// Lookup returns the stored result of (subtask, attempt); ok is false when
// it never ran or is still running (or crashed before Open recovered it).
func (s *State) Lookup(subtask int64, attempt int32) (r Result, ok bool, err error) {
	if err := validKey(subtask, attempt); err != nil {
		return Result{}, false, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return readResult(s.marker(subtask, attempt))
}

// PendingResults returns the results not yet acknowledged, ordered by
// subtask and attempt.
func (s *State) PendingResults() ([]Result, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ents, err := os.ReadDir(filepath.Join(s.dir, "outbox"))
	if err != nil {
		return nil, fmt.Errorf("reading outbox: %w", err)
	}
	var out []Result
	for _, e := range ents {
		name, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok {
			continue // a temp file of an interrupted write
		}
		subtask, attempt, ok := parseKey(name)
		if !ok {
			continue
		}
		r, ok, lost, err := s.readOrQuarantine(filepath.Join(s.dir, "outbox", e.Name()))
		if err != nil {
			return nil, err
		}
		if lost {
			// Corrupted since Open: pending again, from the marker if it
			// holds the result.
			if r, ok, err = s.lostPending(subtask, attempt); err != nil {
				return nil, err
			}
		}
		if ok {
			out = append(out, r)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].SubtaskID != out[j].SubtaskID {
			return out[i].SubtaskID < out[j].SubtaskID
		}
		return out[i].Attempt < out[j].Attempt
	})
	return out, nil
}

// Ack forgets the pending result of (subtask, attempt) once the server
// stored it. Acknowledging an unknown or already acknowledged result is not
// an error. The run marker is kept.
func (s *State) Ack(subtask int64, attempt int32) error {
	if err := validKey(subtask, attempt); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	err := os.Remove(s.outbox(subtask, attempt))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("removing outbox entry: %w", err)
	}
	return nil
}

// recover handles markers left by earlier processes: results of crashed runs,
// and garbage collection.
func (s *State) recover() error {
	for _, d := range []string{s.dir, filepath.Join(s.dir, "outbox")} {
		tmps, _ := filepath.Glob(filepath.Join(d, atomicfile.TempPattern))
		for _, t := range tmps {
			os.Remove(t) // left by an interrupted atomic write
		}
	}
	runs := filepath.Join(s.dir, "runs")
	ents, err := os.ReadDir(runs)
	if err != nil {
		return fmt.Errorf("reading runs: %w", err)
	}
	now := s.now()
	type entry struct {
		subtask int64
		attempt int32
		info    fs.DirEntry // the marker's; nil when there is none
	}
	var keys []entry
	for _, e := range ents {
		subtask, attempt, ok := parseKey(e.Name())
		if !ok {
			if strings.HasPrefix(e.Name(), ".tmp-") {
				os.Remove(filepath.Join(runs, e.Name()))
			}
			continue
		}
		keys = append(keys, entry{subtask, attempt, e})
	}
	// Outbox entries without a marker (a marker lost with its file system
	// entry): recovered as well, so that their command is not run again.
	outs, err := os.ReadDir(filepath.Join(s.dir, "outbox"))
	if err != nil {
		return fmt.Errorf("reading outbox: %w", err)
	}
	for _, e := range outs {
		name, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok {
			continue
		}
		subtask, attempt, ok := parseKey(name)
		if !ok {
			continue
		}
		if _, err := os.Lstat(s.marker(subtask, attempt)); errors.Is(err, fs.ErrNotExist) {
			keys = append(keys, entry{subtask, attempt, nil})
		}
	}
	for _, k := range keys {
		subtask, attempt := k.subtask, k.attempt
		path := s.marker(subtask, attempt)
		r, done, lost, err := s.readOrQuarantine(path)
		if err != nil {
			return err
		}
		pending, pendingOK, pendingLost, err := s.readOrQuarantine(s.outbox(subtask, attempt))
		if err != nil {
			return err
		}
		switch {
		case !done && pendingOK:
			// Crashed between the outbox write and the marker write (or
			// the marker was corrupt): the outbox holds the result.
			if err := s.SaveResult(pending); err != nil {
				return err
			}
		case done && pendingLost:
			// The pending result was the marker's: pending again.
			if err := s.SaveResult(r); err != nil {
				return err
			}
		case !done:
			msg := RestartedMessage
			if lost || pendingLost || k.info == nil {
				msg = StateLostMessage
			}
			r = Result{SubtaskID: subtask, Attempt: attempt, Outcome: OutcomeFailed, Message: msg, FinishTime: now}
			if err := s.SaveResult(r); err != nil {
				return err
			}
		case !pendingOK:
			info, err := k.info.Info()
			if err != nil {
				continue // removed meanwhile
			}
			if now.Sub(info.ModTime()) > MarkerTTL {
				if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
					return fmt.Errorf("removing old run marker: %w", err)
				}
			}
		}
	}
	return nil
}

// lostPending stores again the pending result of (subtask, attempt) whose
// outbox entry was lost: the marker's, else FAILED with StateLostMessage.
// s.mu is held.
func (s *State) lostPending(subtask int64, attempt int32) (Result, bool, error) {
	r, done, _, err := s.readOrQuarantine(s.marker(subtask, attempt))
	if err != nil {
		return Result{}, false, err
	}
	if !done {
		r = Result{SubtaskID: subtask, Attempt: attempt, Outcome: OutcomeFailed, Message: StateLostMessage, FinishTime: s.now()}
	}
	return r, true, s.saveResult(r)
}

// readOrQuarantine reads a result file as readResult does; a file that
// does not decode is renamed aside, logged, and reported as lost. Only a
// failure to read or rename is an error.
func (s *State) readOrQuarantine(path string) (r Result, ok, lost bool, err error) {
	r, ok, err = readResult(path)
	if subtask, attempt, _ := parseKey(strings.TrimSuffix(filepath.Base(path), ".json")); err == nil && ok &&
		(r.SubtaskID != subtask || r.Attempt != attempt) {
		err = fmt.Errorf("%s holds the result of subtask %d attempt %d: %w", filepath.Base(path), r.SubtaskID, r.Attempt, errInvalidResult)
	}
	var syntax *json.SyntaxError
	var typ *json.UnmarshalTypeError
	if err == nil || !errors.As(err, &syntax) && !errors.As(err, &typ) && !errors.Is(err, errInvalidResult) {
		return r, ok, false, err
	}
	aside := path + ".corrupt-" + s.now().UTC().Format("20060102T150405.000000000")
	if rerr := os.Rename(path, aside); rerr != nil {
		return Result{}, false, false, fmt.Errorf("quarantining corrupt %s: %w", path, rerr)
	}
	rel, _ := filepath.Rel(s.dir, path)
	s.log.Error().Err(err).Str("file", rel).Str("quarantined_as", filepath.Base(aside)).
		Msg("corrupt journal file quarantined; its command is not run again")
	return Result{}, false, true, nil
}

func (s *State) marker(subtask int64, attempt int32) string {
	return filepath.Join(s.dir, "runs", key(subtask, attempt))
}

func (s *State) outbox(subtask int64, attempt int32) string {
	return filepath.Join(s.dir, "outbox", key(subtask, attempt)+".json")
}

func key(subtask int64, attempt int32) string {
	return strconv.FormatInt(subtask, 10) + "-" + strconv.FormatInt(int64(attempt), 10)
}

func parseKey(name string) (int64, int32, bool) {
	a, b, ok := strings.Cut(name, "-")
	if !ok {
		return 0, 0, false
	}
	subtask, err1 := strconv.ParseInt(a, 10, 64)
	attempt, err2 := strconv.ParseInt(b, 10, 32)
	if err1 != nil || err2 != nil || validKey(subtask, int32(attempt)) != nil {
		return 0, 0, false
	}
	return subtask, int32(attempt), true
}

func validKey(subtask int64, attempt int32) error {
	if subtask <= 0 || attempt <= 0 {
		return fmt.Errorf("subtask %d attempt %d: %w", subtask, attempt, ErrInvalidArgument)
	}
	return nil
}

// errInvalidResult: a result file that decodes but is not a result.
var errInvalidResult = errors.New("not a valid result")

// readResult reads a result file; ok is false when it is missing or empty.
func readResult(path string) (r Result, ok bool, err error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) || (err == nil && len(b) == 0) {
		return Result{}, false, nil
	}
	if err != nil {
		return Result{}, false, fmt.Errorf("reading result: %w", err)
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return Result{}, false, fmt.Errorf("decoding result %s: %w", filepath.Base(path), err)
	}
	if validKey(r.SubtaskID, r.Attempt) != nil {
		return Result{}, false, fmt.Errorf("result %s names subtask %d attempt %d: %w", filepath.Base(path), r.SubtaskID, r.Attempt, errInvalidResult)
	}
	return r, true, nil
}
