package errs

// New returns an error of the given kind whose text is msg alone, for an
// error whose text a client or an operator reads as it is (a subtask's
// message, a stream's end): fmt.Errorf("%s: %w", msg, kind) would append
// the kind's text.
func New(kind error, msg string) error { return &kindError{msg: msg, kind: kind} }

type kindError struct {
	msg  string
	kind error
}

func (e *kindError) Error() string { return e.msg }

// Unwrap makes errors.Is see the kind.
func (e *kindError) Unwrap() error { return e.kind }
