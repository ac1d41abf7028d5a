package rest

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"mime"
	"net/http"
	"strconv"

	"agentplane/server/errs"
)

const maxInt = math.MaxInt

// pathID parses path parameter name as a positive 64-bit integer; an
// ErrInvalidArgument error otherwise.
func pathID(r *http.Request, name string) (int64, error) {
	v := r.PathValue(name)
	id, err := strconv.ParseInt(v, 10, 64)
	if err != nil || id <= 0 {
		return 0, fmt.Errorf("%s must be a positive 64-bit integer, got %q: %w", name, v, errs.ErrInvalidArgument)
	}
	return id, nil
}

// queryInt parses query parameter name as an integer in [lo, hi], or returns
// def when it is absent; an ErrInvalidArgument error otherwise.
func queryInt(r *http.Request, name string, def, lo, hi int) (int, error) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < lo || n > hi {
		if hi == maxInt {
			return 0, fmt.Errorf("%s must be an integer >= %d, got %q: %w", name, lo, v, errs.ErrInvalidArgument)
		}
		return 0, fmt.Errorf("%s must be an integer in %d..%d, got %q: %w", name, lo, hi, v, errs.ErrInvalidArgument)
	}
	return n, nil
}

// requireJSON returns errUnsupportedMediaType unless the request's
// Content-Type is application/json (parameters such as charset allowed).
func requireJSON(r *http.Request) error {
	ct := r.Header.Get("Content-Type")
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil || mt != "application/json" {
		return fmt.Errorf("content type %q: %w", ct, errUnsupportedMediaType)
	}
	return nil
}

// decodeJSON decodes the request body, a single JSON value with no unknown
// fields, into v. It returns errUnsupportedMediaType for another content
// type, an *http.MaxBytesError when the body is too large, and an
// ErrInvalidArgument error when it is empty or malformed.
func decodeJSON(r *http.Request, v any) error {
	if err := requireJSON(r); err != nil {
		return err
	}
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return bodyError(err)
	}
	if err := dec.Decode(&json.RawMessage{}); !errors.Is(err, io.EOF) {
		if err == nil {
			err = errors.New("more than one JSON value")
		}
		return bodyError(err)
	}
	return nil
}

func bodyError(err error) error {
	var tooLarge *http.MaxBytesError
	switch {
	case errors.As(err, &tooLarge):
		return err
	case errors.Is(err, io.EOF):
		return fmt.Errorf("request body is empty: %w", errs.ErrInvalidArgument)
	default:
		return fmt.Errorf("malformed JSON body: %v: %w", err, errs.ErrInvalidArgument)
	}
}
