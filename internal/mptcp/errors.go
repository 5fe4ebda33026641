package mptcp

import (
	"errors"
	"fmt"
	"os"
)

// Error classes. Every error this package returns for one of these conditions
// matches the class with errors.Is, whatever else it wraps.
var (
	// ErrUnsupported means the kernel (or this operating system) lacks what
	// the operation needs: no mptcp_pm generic netlink family, no MPTCP
	// sock_diag handler. It matches errors.ErrUnsupported too; when the
	// kernel answered "no such family" the error also matches os.ErrNotExist.
	ErrUnsupported error = &classError{msg: "mptcp not supported by this kernel", parent: errors.ErrUnsupported}

	// ErrInvalid means the request was refused as malformed or contrary to
	// the kernel's rules, by this package before sending or by the kernel
	// (EINVAL). Retrying the same request cannot succeed.
	ErrInvalid = errors.New("invalid argument")

	// ErrTooManyEndpoints means the namespace already holds MaxEndpoints
	// endpoints; the kernel answers ERANGE, which the error also matches.
	ErrTooManyEndpoints = errors.New("too many endpoints")

	// ErrEndpointNotFound means no endpoint has the given ID. It matches
	// os.ErrNotExist.
	ErrEndpointNotFound error = &classError{msg: "endpoint not found", parent: os.ErrNotExist}

	// ErrEndpointExists means an endpoint with that address or ID is already
	// there. It matches os.ErrExist.
	ErrEndpointExists error = &classError{msg: "endpoint exists", parent: os.ErrExist}

	// ErrFlagsImmutable means SetEndpointFlags was asked to change a flag
	// other than those in MutableFlags; the endpoint must be deleted and
	// added again. It matches ErrInvalid.
	ErrFlagsImmutable error = &classError{msg: "flags cannot change in place (delete and re-add the endpoint)", parent: ErrInvalid}

	// ErrSysctlUnsupported means a net.mptcp sysctl does not exist on this
	// kernel. It matches os.ErrNotExist.
	ErrSysctlUnsupported error = &classError{msg: "sysctl not supported by this kernel", parent: os.ErrNotExist}

	// ErrEventsLost means the kernel dropped events because the receive
	// buffer overflowed (ENOBUFS). The event stream is still usable, but the
	// caller must resynchronise its view from a dump.
	ErrEventsLost = errors.New("mptcp events lost (receive buffer overrun)")
)

// classError is a sentinel that belongs to a broader class (os.ErrNotExist,
// errors.ErrUnsupported, ErrInvalid...).
type classError struct {
	msg    string
	parent error
}

func (e *classError) Error() string { return e.msg }
func (e *classError) Unwrap() error { return e.parent }

// OpError is the error of one operation on the kernel: Op names the operation
// and its subject ("mptcp add endpoint 198.18.1.2 id 3"), Err the cause,
// usually a syscall.Errno joined with one of this package's error classes, so
// that errors.Is(err, os.ErrExist), errors.Is(err, ErrTooManyEndpoints) and
// the like work.
type OpError struct {
	// Op is the operation and its subject.
	Op string
	// Err is the underlying error.
	Err error
	// Message is the kernel's extended acknowledgement text, if it gave one.
	Message string
}

// Error renders the error as "op: cause (kernel: message)".
func (e *OpError) Error() string {
	s := e.Op + ": " + e.Err.Error()
	if e.Message != "" {
		s += " (kernel: " + e.Message + ")"
	}
	return s
}

// Unwrap returns the underlying error.
func (e *OpError) Unwrap() error { return e.Err }

// invalidf returns an ErrInvalid with a description.
func invalidf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
}
