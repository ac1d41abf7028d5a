package rest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"mime"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"agentplane/server/internal/errs"
	"agentplane/server/internal/task"
)

// maxPage bounds a page number, as gRPC's int32 does, so that the offset
// (page-1)*size cannot overflow.
const maxPage = math.MaxInt32

// pathID parses path parameter name as a positive 64-bit integer in
// canonical decimal (no sign, no leading zero); an ErrInvalidArgument error
// otherwise.
func pathID(r *http.Request, name string) (int64, error) {
	v := r.PathValue(name)
	id, ok := parseDecimal(v)
	if !ok || id <= 0 {
		return 0, fmt.Errorf("%s must be a positive 64-bit integer in plain decimal digits (no sign, no leading zero), got %q: %w", name, v, errs.ErrInvalidArgument)
	}
	return id, nil
}

// parseDecimal parses v as a non-negative 64-bit integer written in
// canonical decimal: digits only, no sign, no leading zero (but "0"). "+1"
// and "01" are not ids: a second spelling of an id would let two requests
// name one host differently (audit, idempotency, caches).
func parseDecimal(v string) (int64, bool) {
	if v == "" || len(v) > 1 && v[0] == '0' {
		return 0, false
	}
	for i := 0; i < len(v); i++ {
		if v[i] < '0' || v[i] > '9' {
			return 0, false
		}
	}
	n, err := strconv.ParseInt(v, 10, 64)
	return n, err == nil
}

// queryOffset parses query parameter name as a non-negative 64-bit integer
// (0 when absent); an ErrInvalidArgument error otherwise.
func queryOffset(r *http.Request, name string) (int64, error) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return 0, nil
	}
	n, ok := parseDecimal(v)
	if !ok {
		return 0, fmt.Errorf("%s must be a non-negative 64-bit integer, got %q: %w", name, v, errs.ErrInvalidArgument)
	}
	return n, nil
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
// fields and no key twice in an object, into v. It returns errUnsupportedMediaType for another content
// type, an *http.MaxBytesError when the body is too large, and an
// ErrInvalidArgument error when it is empty or malformed.
func decodeJSON(r *http.Request, v any) error {
	if err := requireJSON(r); err != nil {
		return err
	}
	data, err := io.ReadAll(r.Body)
	if err != nil {
		return bodyError(err)
	}
	if err := duplicateKey(data); err != nil {
		return bodyError(err)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
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

// duplicateKey returns an error naming the first key that occurs twice in
// one object of the JSON text data, compared as encoding/json matches keys
// to fields (without case): {"hostIds":[2],"hostIds":[3]} would otherwise
// mean whichever came last, and a proxy or log reading the first would see
// another request. Malformed text is left to the decoder to report.
func duplicateKey(data []byte) error {
	type frame struct {
		keys    map[string]bool // nil in an array
		wantKey bool
	}
	var stack []*frame
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	for {
		tok, err := dec.Token()
		if err != nil {
			return nil //nolint:nilerr // malformed text is the decoder's to report (see above)
		}
		var top *frame
		if len(stack) > 0 {
			top = stack[len(stack)-1]
		}
		if top != nil && top.keys != nil && top.wantKey {
			if k, ok := tok.(string); ok {
				fold := strings.ToLower(strings.ToUpper(k))
				if top.keys[fold] {
					return fmt.Errorf("key %q occurs twice in an object", k)
				}
				top.keys[fold], top.wantKey = true, false
				continue
			}
		}
		switch tok {
		case json.Delim('{'):
			stack = append(stack, &frame{keys: map[string]bool{}, wantKey: true})
			continue
		case json.Delim('['):
			stack = append(stack, &frame{})
			continue
		case json.Delim('}'), json.Delim(']'):
			if len(stack) == 0 {
				return nil
			}
			stack = stack[:len(stack)-1]
		}
		// A value ended: its object, if any, wants a key next.
		if len(stack) > 0 && stack[len(stack)-1].keys != nil {
			stack[len(stack)-1].wantKey = true
		}
	}
}

func bodyError(err error) error {
	var tooLarge *http.MaxBytesError
	switch {
	case errors.As(err, &tooLarge):
		return err
	case errors.Is(err, io.EOF):
		return fmt.Errorf("request body is empty: %w", errs.ErrInvalidArgument)
	default:
		return fmt.Errorf("malformed JSON body: %w: %w", err, errs.ErrInvalidArgument)
	}
}

// queryID parses query parameter name as a positive 64-bit integer, or
// returns 0 when it is absent; an ErrInvalidArgument error otherwise.
func queryID(r *http.Request, name string) (int64, error) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return 0, nil
	}
	id, ok := parseDecimal(v)
	if !ok || id <= 0 {
		return 0, fmt.Errorf("%s must be a positive 64-bit integer in plain decimal digits (no sign, no leading zero), got %q: %w", name, v, errs.ErrInvalidArgument)
	}
	return id, nil
}

// queryEnum returns query parameter name when it is one of allowed, or ""
// when it is absent; an ErrInvalidArgument error otherwise.
func queryEnum[T ~string](r *http.Request, name string, allowed ...T) (T, error) {
	v := T(r.URL.Query().Get(name))
	if v == "" || slices.Contains(allowed, v) {
		return v, nil
	}
	names := make([]string, len(allowed))
	for i, a := range allowed {
		names[i] = string(a)
	}
	return "", fmt.Errorf("%s must be one of %s, got %q: %w", name, strings.Join(names, ", "), v, errs.ErrInvalidArgument)
}

// ignoreBody accepts a request whose body is meant to be empty: a body may be
// sent only as application/json, and is not read.
func ignoreBody(r *http.Request) error {
	if r.ContentLength != 0 {
		return requireJSON(r)
	}
	return nil
}

// headerIdempotencyKey makes a task-creating call repeatable: the same
// caller sending the same key gets the task the first call created.
const headerIdempotencyKey = "Idempotency-Key"

// withIdempotencyKey returns r's context carrying its Idempotency-Key, if it
// sent one; an ErrInvalidArgument error when the key is malformed (empty,
// too long, not printable ASCII) or sent more than once.
func withIdempotencyKey(r *http.Request) (context.Context, error) {
	keys := r.Header.Values(headerIdempotencyKey)
	switch len(keys) {
	case 0:
		return r.Context(), nil
	case 1:
		return task.WithIdempotencyKey(r.Context(), keys[0])
	}
	return nil, fmt.Errorf("%s sent %d times, at most once allowed: %w", headerIdempotencyKey, len(keys), errs.ErrInvalidArgument)
}
