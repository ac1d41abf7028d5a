package state

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"agentplane/agentd/internal/atomicfile"
)

// The newest stream epoch agentd has seen (the server's fencing token, see
// Welcome.epoch in the protocol) is kept in the file epoch, so that a
// restarted agentd still refuses a command of an older stream.

// loadEpoch reads the epoch file at Open. A file that does not parse (a
// disk or filesystem fault) is quarantined like a corrupt journal file and
// counts as none: the next stream's epoch is recorded anew.
func (s *State) loadEpoch() error {
	path := filepath.Join(s.dir, "epoch")
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading epoch: %w", err)
	}
	e, perr := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if perr == nil && e >= 0 {
		s.epoch = e
		return nil
	}
	aside := path + ".corrupt-" + s.now().UTC().Format("20060102T150405.000000000")
	if err := os.Rename(path, aside); err != nil {
		return fmt.Errorf("quarantining corrupt epoch file: %w", err)
	}
	s.log.Error().Str("file", "epoch").Str("quarantined_as", filepath.Base(aside)).
		Msg("corrupt epoch file quarantined; the newest epoch seen is recorded anew")
	return nil
}

// Epoch returns the newest epoch seen (SeeEpoch); 0 when none was.
func (s *State) Epoch() int64 {
	s.epochMu.Lock()
	defer s.epochMu.Unlock()
	return s.epoch
}

// SeeEpoch checks the epoch e of a message from the server against the
// newest seen. 0 is no epoch (a server without them): never stale, nothing
// recorded. An e older than the newest is stale: the message must be
// refused. A newer one becomes the newest, written to the state dir (atomic
// and synced) before SeeEpoch returns; when that write fails, it is newest
// in memory all the same, and the error is returned. newest is the newest
// epoch seen after the call.
func (s *State) SeeEpoch(e int64) (stale bool, newest int64, err error) {
	s.epochMu.Lock()
	defer s.epochMu.Unlock()
	switch {
	case e <= 0:
		return false, s.epoch, nil
	case e < s.epoch:
		return true, s.epoch, nil
	case e == s.epoch:
		return false, e, nil
	}
	s.epoch = e
	if err := atomicfile.WriteFile(filepath.Join(s.dir, "epoch"), []byte(strconv.FormatInt(e, 10)+"\n")); err != nil {
		return false, e, fmt.Errorf("writing epoch: %w", err)
	}
	return false, e, nil
}
