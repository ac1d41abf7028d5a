package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestStoreFlags(t *testing.T) {
	const url = "mysql://ap:hunter2@db:3306/agentplane"
	dir := t.TempDir()
	file := func(name, text string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil { // past the umask
			t.Fatal(err)
		}
		return p
	}
	good := file("dsn", "\n  "+url+"\n", 0o600)
	open := file("open", url, 0o640)
	notURL := file("bad", "ap:hunter2@tcp(db)/agentplane", 0o400)
	for _, tt := range []struct {
		f       storeFlags
		want    string
		wantErr string
	}{
		{storeFlags{spec: "sqlite"}, "", ""},
		{storeFlags{}, "", ""},
		{storeFlags{spec: url, specSet: true}, url, ""},
		{storeFlags{spec: "sqlite", dsnFile: good}, url, ""},
		{storeFlags{spec: "mysql", dsnFile: good, specSet: true}, url, ""},
		{storeFlags{spec: "mysql", specSet: true}, "", "needs --store-dsn-file"},
		{storeFlags{spec: "postgres://ap:hunter2@db/x", specSet: true}, "", "want sqlite or mysql://"},
		{storeFlags{spec: url, dsnFile: good, specSet: true}, "", "exclude each other"},
		{storeFlags{spec: "sqlite", dsnFile: good, specSet: true}, "", "not --store sqlite"},
		{storeFlags{spec: "sqlite", dsnFile: open}, "", "readable by group or others"},
		{storeFlags{spec: "sqlite", dsnFile: notURL}, "", "want one mysql://"},
		{storeFlags{spec: "sqlite", dsnFile: filepath.Join(dir, "missing")}, "", "no such file"},
	} {
		got, err := tt.f.resolve()
		switch {
		case tt.wantErr == "" && (err != nil || got != tt.want):
			t.Errorf("%+v: %q, %v; want %q", tt.f, got, err, tt.want)
		case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
			t.Errorf("%+v: %q, %v; want an error with %q", tt.f, got, err, tt.wantErr)
		case err != nil && strings.Contains(err.Error(), "hunter2"):
			t.Errorf("%+v: the error shows the password: %v", tt.f, err)
		}
	}
}
