//go:build !linux

package mptcp

import (
	"fmt"
	"runtime"
	"time"
)

// errOS is what every kernel operation returns off Linux.
var errOS = fmt.Errorf("%w: MPTCP management needs Linux, not %s", ErrUnsupported, runtime.GOOS)

type client struct{}

func dial(*DialOptions) (*client, error) { return nil, &OpError{Op: "mptcp dial", Err: errOS} }

func (*client) close() error                        { return nil }
func (*client) endpoints() ([]Endpoint, error)      { return nil, errOS }
func (*client) endpoint(uint8) (Endpoint, error)    { return Endpoint{}, errOS }
func (*client) addEndpoint(Endpoint) error          { return errOS }
func (*client) deleteEndpoint(uint8) error          { return errOS }
func (*client) flushEndpoints() error               { return errOS }
func (*client) setEndpointFlags(uint8, Flags) error { return errOS }
func (*client) limits() (Limits, error)             { return Limits{}, errOS }
func (*client) setLimits(Limits, string) error      { return errOS }
func (*client) connections() ([]Connection, error)  { return nil, errOS }

type eventConn struct{}

func dialEvents(*DialOptions) (*eventConn, error) {
	return nil, &OpError{Op: "mptcp dial events", Err: errOS}
}

func (*eventConn) receive() ([]Event, error)       { return nil, errOS }
func (*eventConn) setReadDeadline(time.Time) error { return errOS }
func (*eventConn) close() error                    { return nil }
