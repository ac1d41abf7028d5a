// Package paging owns the bounds of a page of a list answer: hosts, tasks
// and audit events are paged alike, by both adapters.
package paging

import (
	"fmt"

	"agentplane/server/internal/errs"
)

const (
	// DefaultSize is a page's size when the caller asks for none.
	DefaultSize = 20
	// MaxSize is the largest page a caller may ask for.
	MaxSize = 2000
)

// Check refuses a page or size out of bounds with an errs.ErrInvalidArgument
// error. Zero means the default (the first page, DefaultSize).
func Check(page, size int) error {
	if page < 0 || size < 0 || size > MaxSize {
		return fmt.Errorf("page %d size %d: page must be ≥ 1 and size 1..%d: %w", page, size, MaxSize, errs.ErrInvalidArgument)
	}
	return nil
}

// Bounds turns a 1-based page and size (zero: the defaults) into a LIMIT
// and an OFFSET.
func Bounds(page, size int) (limit, offset int) {
	if size <= 0 {
		size = DefaultSize
	}
	if page <= 0 {
		page = 1
	}
	return size, (page - 1) * size
}
