package api

import (
	"context"

	"agentplane/server/internal/audit"
)

// AuditRecorder records calls (audit.Service).
type AuditRecorder interface {
	// Record stores e; it never fails the call (failures are logged).
	Record(ctx context.Context, e audit.Event)
}

// AuditReader reads the record (audit.Service).
type AuditReader interface {
	// ListEvents returns a page of the record; it checks that the caller is
	// ADMIN.
	ListEvents(ctx context.Context, q audit.Query) (audit.Page, error)
}

// Auditor records calls and reads the record (audit.Service).
type Auditor interface {
	AuditRecorder
	AuditReader
}
