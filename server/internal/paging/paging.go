// Package paging owns the bounds of a page of a list answer: hosts, tasks
// and audit events are paged alike, by both adapters.
package paging

const (
	// DefaultSize is a page's size when the caller asks for none.
	DefaultSize = 20
	// MaxSize is the largest page a caller may ask for.
	MaxSize = 2000
)
