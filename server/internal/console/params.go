package console

import (
	"fmt"
	"net/http"
	"net/url"
	"strconv"

	"agentplane/server/internal/errs"
)

// invalid is an ErrInvalidArgument error.
func invalid(format string, args ...any) error {
	return fmt.Errorf(format+": %w", append(args, errs.ErrInvalidArgument)...)
}

// formInt reads the non-negative integer v[name], def when absent.
func formInt(v url.Values, name string, def int) (int, error) {
	s := v.Get(name)
	if s == "" {
		return def, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return 0, invalid("%s must be a whole number, got %q", name, s)
	}
	return n, nil
}

// pathID reads the positive id in the path's wildcard name.
func pathID(r *http.Request, name string) (int64, error) {
	s := r.PathValue(name)
	id, err := strconv.ParseInt(s, 10, 64)
	if err != nil || id <= 0 {
		return 0, invalid("%s must be a positive id, got %q", name, s)
	}
	return id, nil
}
