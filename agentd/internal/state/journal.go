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

	"agentplane/agentd/internal/atomicfile"
)

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

// Begun reports whether (subtask, attempt) was begun (Begin), by this
// process or an earlier one, without recording anything.
func (s *State) Begun(subtask int64, attempt int32) (bool, error) {
	if err := validKey(subtask, attempt); err != nil {
		return false, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	_, err := os.Stat(s.marker(subtask, attempt))
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, fs.ErrNotExist):
		return false, nil
	}
	return false, fmt.Errorf("reading run marker: %w", err)
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

// Outbox is the number of results not yet acknowledged (PendingResults'
// count, without reading them).
func (s *State) Outbox() (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ents, err := os.ReadDir(filepath.Join(s.dir, "outbox"))
	if err != nil {
		return 0, fmt.Errorf("reading outbox: %w", err)
	}
	n := 0
	for _, e := range ents {
		if name, ok := strings.CutSuffix(e.Name(), ".json"); ok {
			if _, _, ok := parseKey(name); ok {
				n++
			}
		}
	}
	return n, nil
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
