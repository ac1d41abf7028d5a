package store

import "time"

// CommitObserver is told of each group of writes the writer runs in one
// transaction (writer.go), for metrics: how many writes, how many of them
// failed, and how long the group took, its retries included. It is called
// on the writer's goroutine, before the writes' callers learn their
// outcome, so it must return at once.
type CommitObserver interface {
	ObserveCommit(writes, failed int, took time.Duration)
}

// WithCommitObserver has the writer report each group commit to o.
func WithCommitObserver(o CommitObserver) Option {
	return func(s *Store) { s.commits = o }
}

// observeCommit reports a group that began at began and ended with errs
// (one per write).
func (s *Store) observeCommit(began time.Time, errs []error) {
	if s.commits == nil {
		return
	}
	failed := 0
	for _, err := range errs {
		if err != nil {
			failed++
		}
	}
	s.commits.ObserveCommit(len(errs), failed, time.Since(began))
}
