package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"agentplane/server/internal/store"
)

// storeFlags are --store and --store-dsn-file.
type storeFlags struct {
	spec    string // --store: sqlite, mysql, or a mysql:// URL
	dsnFile string // --store-dsn-file: a file holding the mysql:// URL
	specSet bool   // --store was given
}

const (
	storeUsage = "the store: sqlite (the default: agentplane.db in --data-dir) or mysql://user:password@host:port/db " +
		"(MySQL, MariaDB or OceanBase's MySQL mode; the database must exist). The URL may instead be in --store-dsn-file, " +
		"which keeps the password out of ps; --store mysql then says so, or may be left out"
	storeDSNFileUsage = "file holding the mysql:// URL of the store (mode 600 or stricter: a file group or others can read is refused), instead of --store"
)

// resolve returns the store's URL: "" for SQLite, else the mysql:// URL
// given in --store or read from --store-dsn-file.
func (f storeFlags) resolve() (string, error) {
	if f.dsnFile == "" {
		switch {
		case f.spec == "" || f.spec == "sqlite":
			return "", nil
		case store.IsMySQLURL(f.spec):
			return f.spec, nil
		case f.spec == "mysql":
			return "", errors.New("--store mysql needs --store-dsn-file (or give the mysql:// URL to --store)")
		}
		return "", fmt.Errorf("--store %q: want sqlite or mysql://user:password@host:port/db", store.RedactURL(f.spec))
	}
	switch {
	case store.IsMySQLURL(f.spec):
		return "", errors.New("--store-dsn-file and a mysql:// --store exclude each other: give the URL once")
	case f.specSet && f.spec != "mysql":
		return "", fmt.Errorf("--store-dsn-file is for a MySQL store, not --store %s", f.spec)
	}
	return readDSNFile(f.dsnFile)
}

// readDSNFile reads a store URL from path, which only its owner may read.
func readDSNFile(path string) (string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("--store-dsn-file: %w", err)
	}
	if m := fi.Mode().Perm(); m&0o077 != 0 {
		return "", fmt.Errorf("--store-dsn-file %s is readable by group or others (mode %s): chmod 600 it", path, m)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("--store-dsn-file: %w", err)
	}
	u := strings.TrimSpace(string(b))
	if !store.IsMySQLURL(u) {
		return "", fmt.Errorf("--store-dsn-file %s: want one mysql://user:password@host:port/db", path)
	}
	return u, nil
}

// openStore opens the store: SQLite in dataDir, or MySQL at url. It
// returns the store and how to name it in logs (no password).
func openStore(ctx context.Context, url, dataDir string, opts ...store.Option) (*store.Store, string, error) {
	if url == "" {
		st, err := store.Open(ctx, dataDir, opts...)
		return st, "sqlite " + filepath.Join(dataDir, store.FileName), err
	}
	name := store.RedactURL(url)
	st, err := store.OpenMySQL(ctx, url, opts...)
	if err != nil {
		return nil, name, fmt.Errorf("opening the store %s: %w", name, err)
	}
	return st, name, nil
}
