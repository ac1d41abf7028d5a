package state

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"agentplane/agentd/internal/atomicfile"
)

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
