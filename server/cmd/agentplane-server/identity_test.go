package main

import (
	"encoding/hex"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"agentplane/server/internal/pki"
	"agentplane/server/internal/store"
)

func TestResolveIdentity(t *testing.T) {
	host, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	first := firstIPv4()
	for _, tc := range []struct {
		id, advertise                  string
		wantID, wantAddr, wantExecutor string
	}{
		{"", "", host + ":7070", net.JoinHostPort(first, "7070"), first},
		// The flag's older form, a bare host: the gRPC port.
		{"", "10.0.0.5", host + ":7070", "10.0.0.5:7070", "10.0.0.5"},
		{"", "db1.example.com", host + ":7070", "db1.example.com:7070", "db1.example.com"},
		{"", "::1", host + ":7070", "[::1]:7070", "::1"},
		{"", "[fd00::5]", host + ":7070", "[fd00::5]:7070", "fd00::5"},
		{"r1", "10.0.0.5:9000", "r1", "10.0.0.5:9000", "10.0.0.5"},
		{"r1", ":9000", "r1", net.JoinHostPort(first, "9000"), first},
	} {
		got, err := resolveIdentity(tc.id, tc.advertise, "7070")
		if err != nil || got.id != tc.wantID || got.advertise != tc.wantAddr || got.executor != tc.wantExecutor {
			t.Errorf("resolveIdentity(%q, %q) = %+v, %v; want %s %s %s", tc.id, tc.advertise, got, err, tc.wantID, tc.wantAddr, tc.wantExecutor)
		}
	}
	for _, tc := range []struct{ id, advertise, want string }{
		{"a\tb", "", "--replica-id"},
		{strings.Repeat("a", 129), "", "--replica-id"},
		{"", "10.0.0.5:x", "--advertise-addr"},
		{"", "10.0.0.5:0", "--advertise-addr"},
	} {
		if _, err := resolveIdentity(tc.id, tc.advertise, "7070"); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("resolveIdentity(%q, %q) = %v, want an error about %s", tc.id, tc.advertise, err, tc.want)
		}
	}
}

// TestReplicaRegisteredWhileRunning: the server registers itself at start
// (the gRPC port in its default id and advertised address), and
// deregisters when it stops.
func TestReplicaRegisteredWhileRunning(t *testing.T) {
	c := testConfig(t)
	srv := startServer(t, c)
	grpcAddr, _ := logField(srv.logs.String(), "server started", "grpc_addr")
	_, port, _ := net.SplitHostPort(grpcAddr)
	host, _ := os.Hostname()
	if id, _ := logField(srv.logs.String(), "replica registered", "replica_id"); id != host+":"+port {
		t.Errorf("replica id %q, want %s:%s", id, host, port)
	}
	if addr, _ := logField(srv.logs.String(), "server started", "advertise_addr"); addr != "127.0.0.1:"+port {
		t.Errorf("advertised %q, want 127.0.0.1:%s", addr, port)
	}
	srv.stop(t)
	if _, level := logField(srv.logs.String(), "replica deregistered", "replica_id"); level != "info" {
		t.Fatalf("no deregistration in the log:\n%s", srv.logs.String())
	}
	st, err := store.Open(t.Context(), c.dataDir)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if l, err := st.ListReplicas(t.Context(), c.replicaLease); err != nil || len(l) != 0 {
		t.Fatalf("registry after the stop: %+v, %v", l, err)
	}
}

// TestSharedSecrets: --access-key-seal-key-file is used, refused when
// others may read it; a different sealing key or CA on the next start of
// the store's only replica (SQLite: the data dir's flock) is recorded with
// a warning naming its file. (With another replica live, the store refuses
// it instead: store's TestReplicaRegistry*, "shared secrets".)
func TestSharedSecrets(t *testing.T) {
	c := testConfig(t)
	writeKey := func(name string, b byte, mode os.FileMode) string {
		path := filepath.Join(t.TempDir(), name)
		if err := os.WriteFile(path, []byte(hex.EncodeToString([]byte(strings.Repeat(string(rune(b)), 32)))+"\n"), mode); err != nil {
			t.Fatal(err)
		}
		return path
	}
	c.sealKeyFile = writeKey("open.key", 1, 0o644)
	if err := run(t.Context(), c, zerolog.Nop()); err == nil || !strings.Contains(err.Error(), "readable by others") ||
		!strings.Contains(err.Error(), c.sealKeyFile) {
		t.Fatalf("a key file others may read: run = %v", err)
	}
	c.sealKeyFile = writeKey("one.key", 1, 0o600)
	startServer(t, c).stop(t)
	if _, err := os.Stat(filepath.Join(c.dataDir, "access-key.key")); err == nil {
		t.Error("the data dir's key was created beside --access-key-seal-key-file")
	}
	c.sealKeyFile = writeKey("two.key", 2, 0o600)
	srv := startServer(t, c)
	srv.stop(t)
	if setting, level := logField(srv.logs.String(), "the access-key sealing key (--access-key-seal-key-file "+c.sealKeyFile+") differs", "setting"); setting != settingSealKey || level != "warn" {
		t.Fatalf("no warning of the changed key:\n%s", srv.logs.String())
	}
	if setting, _ := logField(srv.logs.String(), "the agent CA", "setting"); setting != "" {
		t.Fatalf("the CA, unchanged, was reported changed:\n%s", srv.logs.String())
	}

	// Another CA (--ca-cert): recorded, with a warning naming the file.
	other := t.TempDir()
	if _, err := pki.Load(pki.Config{Dir: other, Hosts: []string{"localhost"}, AgentCertTTL: pki.DefaultAgentCertTTL, Log: zerolog.Nop()}); err != nil {
		t.Fatal(err)
	}
	c.caCert, c.caKey = filepath.Join(other, pki.CACertFile), filepath.Join(other, pki.CAKeyFile)
	srv = startServer(t, c)
	srv.stop(t)
	if setting, level := logField(srv.logs.String(), "the agent CA (--ca-cert "+c.caCert+") differs", "setting"); setting != settingCA || level != "warn" {
		t.Fatalf("no warning of the changed CA:\n%s", srv.logs.String())
	}
	if setting, _ := logField(srv.logs.String(), "the access-key sealing key", "setting"); setting != "" {
		t.Fatalf("the sealing key, unchanged, was reported changed:\n%s", srv.logs.String())
	}
}
