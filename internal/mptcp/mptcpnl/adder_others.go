//go:build !linux

package mptcpnl

import "github.com/mpfleet/mpfleet/internal/mptcp"

type adder struct{}

func dialAdder(*DialOptions) (*adder, error) {
	return nil, &mptcp.OpError{Op: "mptcp dial", Err: errOS}
}

func (*adder) add(mptcp.Endpoint) error { return errOS }
func (*adder) close() error             { return nil }
