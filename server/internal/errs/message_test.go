package errs

import (
	"errors"
	"fmt"
	"testing"
)

func TestWithMessageKeepsChainAndKind(t *testing.T) {
	inner := fmt.Errorf("host 2: agent operation in progress (task 9): %w", ErrConflict)
	err := fmt.Errorf("creating task: %w", WithMessage(inner, "Host 2 is busy."))
	if err.Error() != "creating task: host 2: agent operation in progress (task 9): conflict" {
		t.Errorf("chain %q", err.Error())
	}
	if Message(err) != "Host 2 is busy." || !errors.Is(err, ErrConflict) || Kind(err) != ErrConflict { //nolint:errorlint // Kind returns the sentinel itself
		t.Errorf("message %q, kind %v", Message(err), Kind(err))
	}
	if Message(inner) != inner.Error() {
		t.Errorf("an error without a sentence: message %q, want its text", Message(inner))
	}
}
