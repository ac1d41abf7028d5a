package replica

import (
	"fmt"
	"strings"
	"time"
)

// Info is one replica as the registry shows it.
type Info struct {
	// ID is the replica's id (--replica-id).
	ID string
	// Addr is the host:port its peers reach its gRPC listener on
	// (--advertise-addr).
	Addr string
	// Version is its agentplane-server version.
	Version string
	// Started is when it registered; Heartbeat its last heartbeat. Both are
	// the database's clock.
	Started, Heartbeat time.Time
	// Live: its last heartbeat is within the lease, on the database's clock.
	Live bool
	// Age is how long ago its last heartbeat was, on the database's clock.
	Age time.Duration
}

// Registration is what a replica registers.
type Registration struct {
	ID, Addr, Version string
	// Incarnation names this process's holding of the row: a heartbeat or
	// deregistration with another incarnation finds the row taken over.
	Incarnation string
	// Shared are the fingerprints of the secrets every replica of the store
	// must share (the agent CA, the access-key sealing key).
	Shared []Shared
}

// Shared is a fingerprint of a secret every replica of the store must
// share: never the secret, nor anything it can be recovered from.
type Shared struct {
	// Name is the setting's name in the store, e.g. "ca.sha256".
	Name string
	// Fingerprint is this replica's.
	Fingerprint string
	// Source says where this replica's secret comes from, for errors: e.g.
	// "the agent CA (--ca-cert /etc/agentplane/ca.crt)".
	Source string
}

// MismatchError: a replica's secret differs from the one the store's live
// replicas use.
type MismatchError struct {
	Shared Shared
	// Stored is the fingerprint the store records.
	Stored string
	// Live are the store's other live replicas.
	Live []Info
}

func (e *MismatchError) Error() string {
	return fmt.Sprintf("%s differs from the one this store's other replicas use (%s): its fingerprint is %s, theirs %s. "+
		"Give every replica a copy of the same file; to change it for the whole store, stop every replica, then start them all with the new one",
		e.Shared.Source, Names(e.Live), short(e.Shared.Fingerprint), short(e.Stored))
}

// Names lists replicas as "id (address)".
func Names(rs []Info) string {
	var b strings.Builder
	for i, r := range rs {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%q at %s", r.ID, r.Addr)
	}
	return b.String()
}

func short(fp string) string {
	if len(fp) > 23 {
		return fp[:23] + "…"
	}
	return fp
}
