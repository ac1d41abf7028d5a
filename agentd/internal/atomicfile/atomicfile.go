// Package atomicfile owns agentd's durable file writes: a file is replaced
// whole or not at all, and survives a crash once WriteFile returns.
package atomicfile

import (
	"os"
	"path/filepath"
)

// TempPattern names the temporary files WriteFile creates in the target's
// directory; a crash may leave one behind, and whoever owns the directory
// may remove those at startup.
const TempPattern = ".tmp-*"

// WriteFile replaces path with data, mode 0600: a temporary file in the same
// directory, fsync, rename over path, fsync of the directory.
func WriteFile(path string, data []byte) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, TempPattern) // 0600
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // no-op after the rename
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	return SyncDir(dir)
}

// SyncDir fsyncs a directory, making renames and removals in it durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
