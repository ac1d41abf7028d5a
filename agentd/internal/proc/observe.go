package proc

import "time"

// Observer is told what a Stopper does, for metrics. Its methods are
// called on the Stopper's goroutines, concurrently during a stop, and must
// return at once.
type Observer interface {
	// ScanDone: a full scan of /proc ended after took, failed with err
	// (nil: it succeeded).
	ScanDone(took time.Duration, err error)
	// SignalSent: sig ("SIGTERM", "SIGKILL") was sent to a base process.
	SignalSent(sig string)
	// CommandDone: a stop ("stop": StopAll) or a start ("start":
	// StartAll) ended after took with err (nil: done; ErrStillRunning:
	// processes survived a stop; an error wrapping context.Canceled or
	// DeadlineExceeded: cut short).
	CommandDone(kind string, took time.Duration, err error)
}

func (s *Stopper) observeScan(began time.Time, err *error) {
	if s.Observer != nil {
		s.Observer.ScanDone(time.Since(began), *err)
	}
}

func (s *Stopper) observeCommand(kind string, began time.Time, err *error) {
	if s.Observer != nil {
		s.Observer.CommandDone(kind, time.Since(began), *err)
	}
}

// observeEvent reports the signals among a stop's events.
func (s *Stopper) observeEvent(k EventKind) {
	if s.Observer == nil {
		return
	}
	switch k {
	case EventSigtermSent:
		s.Observer.SignalSent("SIGTERM")
	case EventSigkillSent:
		s.Observer.SignalSent("SIGKILL")
	}
}
