//go:build !linux

package mptcpnl

import (
	"fmt"
	"runtime"
	"time"

	"github.com/mpfleet/mpfleet/internal/mptcp"
)

// errOS is what every kernel operation returns off Linux.
var errOS = fmt.Errorf("%w: MPTCP management needs Linux, not %s", mptcp.ErrUnsupported, runtime.GOOS)

type client struct{}

func dial(*DialOptions) (*client, error) { return nil, &mptcp.OpError{Op: "mptcp dial", Err: errOS} }

func (*client) close() error                              { return nil }
func (*client) endpoints() ([]mptcp.Endpoint, error)      { return nil, errOS }
func (*client) addEndpoint(mptcp.Endpoint) error          { return errOS }
func (*client) deleteEndpoint(uint8) error                { return errOS }
func (*client) flushEndpoints() error                     { return errOS }
func (*client) setEndpointFlags(uint8, mptcp.Flags) error { return errOS }
func (*client) limits() (mptcp.Limits, error)             { return mptcp.Limits{}, errOS }
func (*client) setLimits(mptcp.Limits, string) error      { return errOS }
func (*client) connections() ([]mptcp.Connection, error)  { return nil, errOS }

type eventConn struct{}

func dialEvents(*DialOptions) (*eventConn, error) {
	return nil, &mptcp.OpError{Op: "mptcp dial events", Err: errOS}
}

func (*eventConn) receive() ([]mptcp.Event, error) { return nil, errOS }
func (*eventConn) setReadDeadline(time.Time) error { return errOS }
func (*eventConn) close() error                    { return nil }
