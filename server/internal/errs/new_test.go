package errs

import (
	"errors"
	"fmt"
	"testing"
)

func TestNewKeepsTextAndKind(t *testing.T) {
	err := New(ErrUnavailable, "agentd lost")
	if err.Error() != "agentd lost" {
		t.Errorf("text %q, want %q", err.Error(), "agentd lost")
	}
	wrapped := fmt.Errorf("%w: not heard from for 31s", err)
	if !errors.Is(wrapped, ErrUnavailable) || !errors.Is(wrapped, err) || Kind(wrapped) != ErrUnavailable { //nolint:errorlint // Kind returns the sentinel itself
		t.Errorf("kind of %q: %v, want ErrUnavailable", wrapped, Kind(wrapped))
	}
	if errors.Is(err, ErrAborted) {
		t.Error("an ErrUnavailable error is also ErrAborted")
	}
}
