// Package state owns agentd's on-disk state in --state-dir: the host id the
// server assigned, the newest stream epoch seen, how the OCP Agent's base
// processes were started, and the command journal that makes every (subtask, attempt) run at most once and
// keeps its result until the server acknowledges it.
//
// Layout:
//
//	lock                      flock held while a State is open
//	host_id                   decimal host id, written atomically
//	epoch                     decimal newest stream epoch seen (the
//	                          server's fencing token), written atomically
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

	epochMu sync.Mutex
	epoch   int64 // the newest epoch seen (epoch.go)
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
	if err := s.loadEpoch(); err != nil {
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
