package client

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"unicode"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"agentplane/server/cmd/agentplanectl/internal/config"
)

// Exit statuses of agentplanectl.
const (
	ExitOK          = 0   // done; a followed task ended SUCCESSFUL
	ExitFailed      = 1   // a followed task ended FAILED, or another failure
	ExitUsage       = 2   // bad arguments or configuration
	ExitUnreachable = 3   // the server cannot be reached, did not answer in time, or refused the credentials
	ExitRefused     = 4   // the server refused the request or found nothing (not found, invalid, denied, conflict)
	ExitInterrupted = 130 // Ctrl-C while following a task (the task goes on)
)

// ExitError is an error with its exit status and the one line to print.
type ExitError struct {
	Code int
	Msg  string
}

func (e *ExitError) Error() string { return e.Msg }

// Exitf returns an ExitError.
func Exitf(code int, format string, a ...any) error {
	return &ExitError{Code: code, Msg: fmt.Sprintf(format, a...)}
}

// Describe turns an error into the line to print and the exit status: the
// server's message and code for a status it sent, "cannot reach the server
// at ADDR: why" for a connection that failed, never a Go error chain.
func (c *Client) Describe(err error) (string, int) {
	var xe *ExitError
	if errors.As(err, &xe) {
		return xe.Msg, xe.Code
	}
	var ce *config.Error
	if errors.As(err, &ce) {
		return ce.Error(), ExitUsage
	}
	if errors.Is(err, context.Canceled) {
		return "interrupted", ExitInterrupted
	}
	st, ok := status.FromError(err)
	if !ok {
		return err.Error(), ExitFailed
	}
	msg := st.Message()
	switch st.Code() {
	case codes.Unavailable:
		if transportError(msg) {
			return fmt.Sprintf("cannot reach the server at %s: %s", c.Addr, cleanTransport(msg)), ExitUnreachable
		}
		return fmt.Sprintf("the server at %s is unavailable: %s (UNAVAILABLE)", c.Addr, msg), ExitUnreachable
	case codes.DeadlineExceeded:
		return fmt.Sprintf("no answer from the server at %s within %s (--timeout)", c.Addr, c.Timeout), ExitUnreachable
	case codes.Unauthenticated:
		return fmt.Sprintf("the server refused the credentials (%s): %s (UNAUTHENTICATED)", c.who(), msg), ExitUnreachable
	case codes.Canceled:
		return "interrupted", ExitInterrupted
	}
	return fmt.Sprintf("%s (%s%s)", msg, CodeName(st.Code()), details(st)), ExitRefused
}

// details renders what a status's ErrorInfo details say: its reason and
// metadata, such as an OCP error code (", code 20003").
func details(st *status.Status) string {
	var b strings.Builder
	for _, d := range st.Details() {
		info, ok := d.(*errdetails.ErrorInfo)
		if !ok {
			continue
		}
		if info.GetReason() != "" {
			fmt.Fprintf(&b, ", %s", info.GetReason())
		}
		keys := make([]string, 0, len(info.GetMetadata()))
		for k := range info.GetMetadata() {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			fmt.Fprintf(&b, ", %s %s", k, info.GetMetadata()[k])
		}
	}
	return b.String()
}

func (c *Client) who() string {
	if c.cfg.Method == config.Signature {
		return "access key " + c.cfg.AccessKey + " from " + c.cfg.Source
	}
	return "user " + c.cfg.User + " from " + c.cfg.Source
}

// transportError reports whether an UNAVAILABLE message is grpc-go's own
// (the connection failed) rather than the server's.
func transportError(msg string) bool {
	return strings.HasPrefix(msg, "connection error") || strings.Contains(msg, "transport:") ||
		strings.Contains(msg, "dial tcp") || strings.HasPrefix(msg, "name resolver")
}

var dialPrefix = regexp.MustCompile(`dial tcp [^ ]*: `)

// cleanTransport keeps the reason of a grpc-go connection error:
// `connection error: desc = "transport: Error while dialing: dial tcp
// 127.0.0.1:1: connect: connection refused"` → "connect: connection refused".
func cleanTransport(msg string) string {
	msg = strings.TrimPrefix(msg, "connection error: desc = ")
	msg = strings.Trim(msg, `"`)
	msg = strings.TrimPrefix(msg, "transport: ")
	msg = strings.TrimPrefix(msg, "Error while dialing: ")
	msg = strings.TrimPrefix(msg, "error while dialing: ")
	if strings.Contains(msg, "produced zero addresses") {
		return "the host name does not resolve"
	}
	return dialPrefix.ReplaceAllString(msg, "")
}

// CodeName is a gRPC code as the protocol spells it: NOT_FOUND.
func CodeName(c codes.Code) string {
	if c == codes.OK {
		return "OK"
	}
	var b strings.Builder
	for i, r := range c.String() {
		if unicode.IsUpper(r) && i > 0 {
			b.WriteByte('_')
		}
		b.WriteRune(unicode.ToUpper(r))
	}
	return b.String()
}
