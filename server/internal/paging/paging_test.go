package paging

import (
	"errors"
	"testing"

	"agentplane/server/internal/errs"
)

func TestCheck(t *testing.T) {
	for _, c := range []struct {
		page, size int
		ok         bool
	}{
		{0, 0, true}, {1, 1, true}, {3, MaxSize, true},
		{-1, 20, false}, {1, -1, false}, {1, MaxSize + 1, false},
	} {
		err := Check(c.page, c.size)
		if (err == nil) != c.ok || (err != nil && !errors.Is(err, errs.ErrInvalidArgument)) {
			t.Errorf("Check(%d, %d) = %v, want ok=%v (else ErrInvalidArgument)", c.page, c.size, err, c.ok)
		}
	}
	if got := Check(1, 2001).Error(); got != "page 1 size 2001: page must be ≥ 1 and size 1..2000: invalid argument" {
		t.Errorf("message %q", got)
	}
}

func TestBounds(t *testing.T) {
	for _, c := range []struct{ page, size, limit, offset int }{
		{0, 0, DefaultSize, 0}, {1, 50, 50, 0}, {3, 50, 50, 100}, {-2, -1, DefaultSize, 0},
	} {
		if l, o := Bounds(c.page, c.size); l != c.limit || o != c.offset {
			t.Errorf("Bounds(%d, %d) = %d, %d; want %d, %d", c.page, c.size, l, o, c.limit, c.offset)
		}
	}
}
