// Package mptcpnl talks to the kernel's MPTCP path manager through the
// mptcp_pm generic netlink family (endpoints, limits, events) and lists MPTCP
// connections through sock_diag. The types it takes and returns, and the
// error classes its errors match, are package mptcp's.
package mptcpnl

import (
	"fmt"

	"github.com/mpfleet/mpfleet/internal/mptcp"
)

// DialOptions configure Dial and DialEvents. A nil *DialOptions means the
// defaults.
type DialOptions struct {
	// NetNS is a file descriptor of a network namespace (for example from
	// /run/netns/NAME) to open the sockets in. 0 means the namespace of the
	// calling thread.
	NetNS int
}

// Client manages the MPTCP endpoints and limits of one network namespace
// through the mptcp_pm generic netlink family, and lists its MPTCP
// connections through sock_diag. A Client is safe for concurrent use.
type Client struct {
	c *client
}

// Dial opens a Client. On a kernel without MPTCP (no mptcp_pm family) it
// returns one error that matches ErrUnsupported and os.ErrNotExist.
func Dial(opts *DialOptions) (*Client, error) {
	return open(opts, dial, func(c *client) *Client { return &Client{c: c} })
}

// open opens a connection with dial and opts (nil: the zero DialOptions)
// and wraps it.
func open[C, W any](opts *DialOptions, dial func(*DialOptions) (C, error), wrap func(C) W) (W, error) {
	if opts == nil {
		opts = &DialOptions{}
	}
	c, err := dial(opts)
	if err != nil {
		var zero W
		return zero, err
	}
	return wrap(c), nil
}

// Close releases the Client's sockets.
func (c *Client) Close() error { return c.c.close() }

// Endpoints returns all endpoints of the namespace (a GET_ADDR dump), sorted
// by ID.
func (c *Client) Endpoints() ([]mptcp.Endpoint, error) { return c.c.endpoints() }

// AddEndpoint adds e. With e.ID 0 the kernel chooses the ID; any other ID is
// used as given. e is checked with Validate first. Errors: ErrEndpointExists
// (os.ErrExist) for a duplicate address or ID, ErrTooManyEndpoints when the
// namespace already holds MaxEndpoints, ErrInvalid for what the kernel refuses.
func (c *Client) AddEndpoint(e mptcp.Endpoint) error {
	if err := e.Validate(); err != nil {
		return &mptcp.OpError{Op: addOp(e), Err: err}
	}
	return c.c.addEndpoint(e)
}

// DeleteEndpoint removes the endpoint with the given ID; the kernel closes
// the subflows that use it. ErrEndpointNotFound if there is none.
func (c *Client) DeleteEndpoint(id uint8) error {
	if id == 0 {
		return &mptcp.OpError{Op: "mptcp delete endpoint id 0", Err: invalidf("id 0 is not an endpoint ID")}
	}
	return c.c.deleteEndpoint(id)
}

// FlushEndpoints removes every endpoint of the namespace.
func (c *Client) FlushEndpoints() error { return c.c.flushEndpoints() }

// SetEndpointFlags changes the flags of the endpoint with the given ID in
// place. Only the flags in MutableFlags (backup, fullmesh) can change so; a
// difference in any other flag is refused with ErrFlagsImmutable naming it,
// and the caller must delete and re-add the endpoint. FlagImplicit is ignored
// in the comparison. Fullmesh cannot be set on a signal or implicit endpoint.
// The endpoint is read first, so a missing one gives ErrEndpointNotFound.
func (c *Client) SetEndpointFlags(id uint8, f mptcp.Flags) error {
	if id == 0 {
		return &mptcp.OpError{Op: setFlagsOp(id, f), Err: invalidf("id 0 is not an endpoint ID")}
	}
	return c.c.setEndpointFlags(id, f)
}

// Limits returns the in-kernel path manager's limits.
func (c *Client) Limits() (mptcp.Limits, error) { return c.c.limits() }

// SetLimits sets both limits. Values above MaxLimit are refused with
// ErrInvalid before anything is sent.
func (c *Client) SetLimits(l mptcp.Limits) error {
	op := fmt.Sprintf("mptcp set limits subflows %d add_addr_accepted %d", l.Subflows, l.AddAddrAccepted)
	if l.Subflows > mptcp.MaxLimit {
		return &mptcp.OpError{Op: op, Err: invalidf("subflows %d above the kernel maximum %d", l.Subflows, mptcp.MaxLimit)}
	}
	if l.AddAddrAccepted > mptcp.MaxLimit {
		return &mptcp.OpError{Op: op, Err: invalidf("add_addr_accepted %d above the kernel maximum %d", l.AddAddrAccepted, mptcp.MaxLimit)}
	}
	return c.c.setLimits(l, op)
}

// Connections lists the namespace's MPTCP connections (every state but
// LISTEN) through sock_diag, IPv4 and IPv6 sockets alike, sorted by local and
// then remote address.
func (c *Client) Connections() ([]mptcp.Connection, error) { return c.c.connections() }

func addOp(e mptcp.Endpoint) string {
	op := "mptcp add endpoint " + e.Addr.String()
	if e.Port != 0 {
		op += fmt.Sprintf(" port %d", e.Port)
	}
	if e.ID != 0 {
		op += fmt.Sprintf(" id %d", e.ID)
	}
	return op
}

func setFlagsOp(id uint8, f mptcp.Flags) string {
	s := fmt.Sprintf("mptcp set endpoint id %d flags", id)
	if f == 0 {
		return s + " none"
	}
	return s + " " + f.String()
}
