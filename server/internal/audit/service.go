package audit

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/rs/zerolog"

	"agentplane/server/internal/errs"
	"agentplane/server/internal/paging"
)

// Outcomes. A call that succeeded is OutcomeOK; one that failed is named by
// the error the adapter answered with (OutcomeOf): by its errs kind, or by
// the adapter's own refusal (REST's 405, 413, 415). The names are the same
// whichever adapter served the call.
const (
	OutcomeOK                 = "OK"
	OutcomeInvalidArgument    = "INVALID_ARGUMENT"
	OutcomeUnauthenticated    = "UNAUTHENTICATED"
	OutcomePermissionDenied   = "PERMISSION_DENIED"
	OutcomeNotFound           = "NOT_FOUND"
	OutcomeConflict           = "CONFLICT"
	OutcomeFailedPrecondition = "FAILED_PRECONDITION" // also a prohibited rollback
	OutcomeUnavailable        = "UNAVAILABLE"
	OutcomeInternal           = "INTERNAL"
	OutcomeCanceled           = "CANCELED"
	OutcomeDeadlineExceeded   = "DEADLINE_EXCEEDED"
	OutcomeResourceExhausted  = "RESOURCE_EXHAUSTED" // throttled, or a limit such as the body size
	OutcomeMethodNotAllowed   = "METHOD_NOT_ALLOWED" // REST only
	OutcomeUnsupportedMedia   = "UNSUPPORTED_MEDIA_TYPE"
	OutcomeUnimplemented      = "UNIMPLEMENTED"
)

// Query selects events. Zero fields do not filter.
type Query struct {
	Username  string // exactly this user
	Operation string // operations containing this text, case-insensitive
	HostID    int64
	TaskID    int64
	Outcome   string
	Start     time.Time // at or after
	End       time.Time // before
	Page      int       // 1-based; 0 means 1
	Size      int       // 1..MaxPageSize; 0 means DefaultPageSize
}

// Page is one page of events, newest first, and how many match in all.
type Page struct {
	Events []Event
	Total  int64
}

// Paging limits: those of every list (package paging).
const (
	DefaultPageSize = paging.DefaultSize
	MaxPageSize     = paging.MaxSize
)

// Store keeps the record (store.Store).
type Store interface {
	// AddAuditEvent stores e and returns its id.
	AddAuditEvent(ctx context.Context, e Event) (int64, error)
	// ListAuditEvents returns the page of events q selects, newest first;
	// q is valid (Service checks it).
	ListAuditEvents(ctx context.Context, q Query) (Page, error)
}

// Limits on recorded text; longer values are cut (at a rune boundary).
const (
	maxMessageLen = 1024
	writeTimeout  = 5 * time.Second
)

// Events kept while the store cannot be written (Service.Record).
const (
	// MaxPending bounds the events kept; beyond it the oldest is dropped
	// (logged as such).
	MaxPending = 10000
	// pendingRetry is how often the kept events are tried again.
	pendingRetry = 2 * time.Second
)

// Service records calls and reads the record. It is safe for concurrent
// use.
type Service struct {
	store     Store
	log       zerolog.Logger
	authorize func(ctx context.Context) error
	now       func() time.Time

	// pending are the events the store refused as unwritable, oldest
	// first; retry writes them (armed while there are any, no goroutine
	// otherwise); flushing counts retries armed or running.
	mu       sync.Mutex
	pending  []Event
	retry    *time.Timer
	closed   bool
	flushing sync.WaitGroup
}

// NewService returns a Service over store. authorize decides who may read
// the record: it returns nil for an ADMIN and the errs-kind error to answer
// otherwise (wire it as auth.Require(ctx, auth.RoleAdmin); audit does not
// import auth, so that auth may annotate Notes). Write failures are logged
// to log.
func NewService(store Store, log zerolog.Logger, authorize func(ctx context.Context) error) *Service {
	if authorize == nil {
		panic("audit: NewService needs an authorize function")
	}
	return &Service{store: store, log: log, authorize: authorize, now: time.Now}
}

// Record stores e, stamping its time now when it has none. It never fails
// the call being recorded: it writes synchronously, with a context that the
// call's cancellation does not end (bounded by a few seconds), and logs a
// store failure instead of returning it. An event the store refuses because
// it cannot be written (errs.ErrStoreUnavailable, e.g. a full disk) is
// logged whole and kept in memory (at most MaxPending), and written, with
// its own time, once the store can be written again (or by Close).
func (s *Service) Record(ctx context.Context, e Event) {
	if e.Time.IsZero() {
		e.Time = s.now()
	}
	if e.Outcome == "" {
		e.Outcome = OutcomeOK
	}
	e.Message = clip(e.Message, maxMessageLen)
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), writeTimeout)
	defer cancel()
	_, err := s.store.AddAuditEvent(ctx, e)
	switch {
	case err == nil:
	case errors.Is(err, errs.ErrStoreUnavailable):
		s.logEvent(s.log.Warn(), err, e).Msg("audit event kept in memory until the store can be written")
		s.keep(e)
	default:
		s.logEvent(s.log.Error(), err, e).Msg("audit event not recorded")
	}
}

// logEvent adds e's fields to a log line.
func (s *Service) logEvent(ev *zerolog.Event, err error, e Event) *zerolog.Event {
	return ev.Err(err).Time("at", e.Time).Str("operation", e.Operation).Str("user", e.Username).
		Str("access_key_id", e.AccessKeyID).Str("source", e.SourceAddr).Str("outcome", e.Outcome).
		Str("event_message", e.Message).Int64("host_id", e.HostID).Int64("task_id", e.TaskID).Str("target", e.Target)
}

// keep adds events after those kept, dropping the oldest beyond
// MaxPending, and arms the retry.
func (s *Service) keep(events ...Event) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pending = append(s.pending, events...)
	if over := len(s.pending) - MaxPending; over > 0 {
		for _, e := range s.pending[:over] {
			s.logEvent(s.log.Error(), nil, e).Msg("audit event dropped: too many waiting for the store")
		}
		s.pending = slices.Delete(s.pending, 0, over)
	}
	if s.retry == nil && !s.closed {
		s.flushing.Add(1)
		s.retry = time.AfterFunc(pendingRetry, func() {
			defer s.flushing.Done()
			s.flush()
		})
	}
}

// flush writes the kept events in order, keeping them again from the first
// the store refuses as unwritable. Events kept meanwhile wait for the next
// flush.
func (s *Service) flush() {
	s.mu.Lock()
	events := s.pending
	s.pending, s.retry = nil, nil
	s.mu.Unlock()
	if len(events) == 0 {
		return
	}
	for i, e := range events {
		ctx, cancel := context.WithTimeout(context.Background(), writeTimeout)
		_, err := s.store.AddAuditEvent(ctx, e)
		cancel()
		switch {
		case err == nil:
		case errors.Is(err, errs.ErrStoreUnavailable):
			s.mu.Lock()
			s.pending = append(events[i:], s.pending...) // before those kept meanwhile
			s.mu.Unlock()
			s.keep()
			return
		default:
			s.logEvent(s.log.Error(), err, e).Msg("audit event not recorded")
		}
	}
	s.log.Info().Int("events", len(events)).Msg("audit events kept in memory are recorded")
}

// Close writes the events kept in memory, if the store can be written, and
// stops retrying; the events still kept are logged as lost (each was
// logged whole when kept). Call it before closing the store.
func (s *Service) Close() {
	s.mu.Lock()
	s.closed = true
	if s.retry != nil && s.retry.Stop() {
		s.flushing.Done()
	}
	s.retry = nil
	s.mu.Unlock()
	s.flushing.Wait()
	s.flush()
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.pending) > 0 {
		s.log.Error().Int("events", len(s.pending)).Msg("audit events not recorded: the store could not be written before shutdown")
	}
}

// ListEvents returns a page of events, newest first. Needs ADMIN (the
// authorize function's error otherwise). ErrInvalidArgument for a negative
// page, a size over MaxPageSize, a negative id, or Start not before End.
func (s *Service) ListEvents(ctx context.Context, q Query) (Page, error) {
	if err := s.authorize(ctx); err != nil {
		return Page{}, err
	}
	if q.Page == 0 {
		q.Page = 1
	}
	if q.Size == 0 {
		q.Size = DefaultPageSize
	}
	switch err := paging.Check(q.Page, q.Size); {
	case err != nil:
		return Page{}, err
	case q.HostID < 0 || q.TaskID < 0:
		return Page{}, fmt.Errorf("host id %d task id %d: must be positive: %w", q.HostID, q.TaskID, errs.ErrInvalidArgument)
	case !q.Start.IsZero() && !q.End.IsZero() && !q.Start.Before(q.End):
		return Page{}, fmt.Errorf("startTime must be before endTime: %w", errs.ErrInvalidArgument)
	}
	p, err := s.store.ListAuditEvents(ctx, q)
	if err != nil {
		return Page{}, fmt.Errorf("listing audit events: %w", err)
	}
	return p, nil
}

// clip returns s cut to at most n bytes, at a rune boundary.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}
