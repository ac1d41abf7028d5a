package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"

	"agentplane/server/internal/auth"
	"agentplane/server/internal/pki"
	"agentplane/server/internal/replica"
)

// identity is this replica's: its id, where its peers reach it, and the
// host recorded as the executor of its tasks.
type identity struct {
	id        string // --replica-id
	advertise string // host:port of the gRPC listener, for peers
	executor  string // the advertised host (task.Config.Executor)
}

// resolveIdentity applies the defaults of --replica-id and
// --advertise-addr given the gRPC listener's port: an advertised address
// without a port (the flag's older form, a bare host) gets the gRPC port,
// one without a host this host's first non-loopback IPv4; the id defaults
// to <host name>:<gRPC port>.
func resolveIdentity(replicaID, advertise, grpcPort string) (identity, error) {
	host, port, err := net.SplitHostPort(advertise)
	if err != nil { // a bare host, or nothing
		host, port = advertise, grpcPort
		if len(host) > 1 && host[0] == '[' && host[len(host)-1] == ']' {
			host = host[1 : len(host)-1]
		}
	}
	if host == "" {
		host = firstIPv4()
	}
	if port == "" {
		port = grpcPort
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return identity{}, fmt.Errorf("--advertise-addr %q: the port must be a number from 1 to 65535", advertise)
	}
	if replicaID == "" {
		name, err := os.Hostname()
		if err != nil || name == "" {
			name = host
		}
		replicaID = name + ":" + grpcPort
	}
	if err := replica.ValidateID(replicaID); err != nil {
		return identity{}, fmt.Errorf("--replica-id: %w", err)
	}
	return identity{id: replicaID, advertise: net.JoinHostPort(host, port), executor: host}, nil
}

// grpcPort returns the port of --grpc-addr; for port 0 (an ephemeral
// port: tests) it listens now to learn it, and returns the listener.
func grpcPort(ctx context.Context, addr string) (string, net.Listener, error) {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", nil, fmt.Errorf("--grpc-addr: %w", err)
	}
	if port != "0" {
		return port, nil, nil
	}
	lis, err := new(net.ListenConfig).Listen(ctx, "tcp", addr)
	if err != nil {
		return "", nil, fmt.Errorf("gRPC listener: %w", err)
	}
	return strconv.Itoa(lis.Addr().(*net.TCPAddr).Port), lis, nil
}

// loadSealKey returns the access-key sealing key: the file of
// --access-key-seal-key-file, else the data dir's (created if missing).
func loadSealKey(c config) ([]byte, error) {
	if c.sealKeyFile != "" {
		return auth.LoadAccessKeySealKey(c.sealKeyFile)
	}
	return auth.LoadOrCreateAccessKeySealKey(c.dataDir)
}

// Names of the shared secrets' fingerprints in the store.
const (
	settingCA      = "ca.sha256"
	settingSealKey = "access_key_seal.kcv"
)

// sharedSecrets are the fingerprints every replica of the store must
// share: the agent CA's SHA-256 and the sealing key's check value.
func sharedSecrets(c config, ca *pki.Authority, sealKey []byte) []replica.Shared {
	caSrc := "the agent CA (" + filepath.Join(c.dataDir, pki.CACertFile) + ", in the data dir; --ca-cert names another)"
	if c.caCert != "" {
		caSrc = "the agent CA (--ca-cert " + c.caCert + ")"
	}
	keySrc := "the access-key sealing key (" + filepath.Join(c.dataDir, auth.AccessKeySealKeyFile) +
		", in the data dir; --access-key-seal-key-file names another)"
	if c.sealKeyFile != "" {
		keySrc = "the access-key sealing key (--access-key-seal-key-file " + c.sealKeyFile + ")"
	}
	return []replica.Shared{
		{Name: settingCA, Fingerprint: ca.Fingerprint(), Source: caSrc},
		{Name: settingSealKey, Fingerprint: auth.SealKeyCheck(sealKey), Source: keySrc},
	}
}
