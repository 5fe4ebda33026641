package cli

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// rpcError is a failed call to the controller, rendered for people. It
// unwraps to the gRPC status error, so status.Code and errors.Is keep working.
type rpcError struct {
	err        error
	controller string
	timeout    time.Duration
}

// rpcErr wraps an error returned by a gRPC call.
func (a *app) rpcErr(err error) error {
	if err == nil {
		return nil
	}
	return &rpcError{err: err, controller: a.controller, timeout: a.timeout}
}

func (e *rpcError) Unwrap() error { return e.err }

// GRPCStatus lets status.FromError and status.Code see through the wrapping.
func (e *rpcError) GRPCStatus() *status.Status {
	st, _ := status.FromError(e.err)
	return st
}

func (e *rpcError) Error() string {
	if errors.Is(e.err, context.DeadlineExceeded) {
		return fmt.Sprintf("no answer from controller %s within %v (deadline exceeded)", e.controller, e.timeout)
	}
	st, ok := status.FromError(e.err)
	if !ok {
		return e.err.Error()
	}
	msg := st.Message()
	switch st.Code() {
	case codes.NotFound:
		return "not found"
	case codes.AlreadyExists:
		return "already exists"
	case codes.InvalidArgument:
		if v := fieldViolations(st); v != "" {
			return "invalid argument: " + v
		}
		return "invalid argument: " + msg
	case codes.Aborted:
		// The server's message repeats what the caller already names.
		return "changed since it was read (stale etag): read it again and retry"
	case codes.Unavailable:
		return fmt.Sprintf("cannot reach controller %s: %s", e.controller, dialReason(msg))
	case codes.DeadlineExceeded:
		return fmt.Sprintf("no answer from controller %s within %v (deadline exceeded)", e.controller, e.timeout)
	case codes.Unauthenticated:
		return "unauthenticated: " + orDefault(msg, "no valid credentials") + " (give a token with --token or MPFLEET_TOKEN)"
	case codes.PermissionDenied:
		return "permission denied: " + msg
	case codes.Unimplemented:
		return "not supported by controller " + e.controller + ": " + msg
	case codes.Canceled:
		return "canceled"
	}
	name := strings.ToLower(strings.ReplaceAll(codeName(st.Code()), "_", " "))
	if msg == "" {
		return name
	}
	return name + ": " + msg
}

// codeName returns a code's upper-case name, e.g. FAILED_PRECONDITION.
func codeName(c codes.Code) string {
	var b strings.Builder
	for i, r := range c.String() {
		if i > 0 && r >= 'A' && r <= 'Z' {
			b.WriteByte('_')
		}
		b.WriteRune(r)
	}
	return strings.ToUpper(b.String())
}

// fieldViolations renders google.rpc.BadRequest details as
// "field: description; field: description".
func fieldViolations(st *status.Status) string {
	var parts []string
	for _, d := range st.Details() {
		br, ok := d.(*errdetails.BadRequest)
		if !ok {
			continue
		}
		for _, v := range br.GetFieldViolations() {
			desc := v.GetDescription()
			if desc == "" {
				desc = v.GetReason()
			}
			if v.GetField() == "" {
				parts = append(parts, desc)
				continue
			}
			parts = append(parts, v.GetField()+": "+desc)
		}
	}
	return strings.Join(parts, "; ")
}

// dialReason shortens gRPC's transport error text to its cause, e.g.
// "dial tcp 127.0.0.1:7400: connect: connection refused".
func dialReason(msg string) string {
	if i := strings.LastIndex(msg, "desc = "); i >= 0 {
		msg = msg[i+len("desc = "):]
	}
	msg = strings.Trim(msg, `"`)
	msg = strings.TrimPrefix(msg, "transport: ")
	msg = strings.TrimPrefix(msg, "Error while dialing: ")
	msg = strings.TrimPrefix(msg, "error while dialing: ")
	return orDefault(msg, "unavailable")
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// firstOf folds errs into one error: the first, and how many more there are
// (of what: "problems"); nil when errs is empty.
func firstOf(errs []error, what string) error {
	switch len(errs) {
	case 0:
		return nil
	case 1:
		return errs[0]
	default:
		return fmt.Errorf("%w (and %d more %s)", errs[0], len(errs)-1, what)
	}
}
