package errs

import "errors"

// WithMessage returns err with the sentence its caller is told: what
// happened and what to do, once ("Host 2 already has an agent operation in
// progress (task 9); wait for it to end or cancel it."). err's text, the
// chain of what the server was doing, stays its Error and goes to the
// server's log; errors.Is and Kind see through it. Message finds the
// outermost such sentence, so a layer that knows better may say it again.
func WithMessage(err error, msg string) error { return &messageError{msg: msg, err: err} }

type messageError struct {
	msg string
	err error
}

func (e *messageError) Error() string { return e.err.Error() }

// Unwrap makes errors.Is and errors.As see err.
func (e *messageError) Unwrap() error { return e.err }

// Message is the text a user is shown for err: the sentence WithMessage gave
// it, or else err's text.
func Message(err error) string {
	var m *messageError
	if errors.As(err, &m) {
		return m.msg
	}
	return err.Error()
}
