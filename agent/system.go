package agent

import (
	"context"
	"net/netip"
	"time"

	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
)

// System is what the agent observes of its host besides the state it
// reconciles: the facts it renders policies against and reports, MPTCP
// health, and the address and link changes that trigger a reconcile.
// NetlinkSystem is the real one. Implementations are safe for concurrent
// use.
type System interface {
	// Facts returns the host's facts: kernel version, MPTCP support and
	// sysctls, and every interface with its state, addresses and gateways.
	Facts(ctx context.Context) (*pb.HostFacts, error)
	// Health returns the MPTCP connections and key counters.
	Health(ctx context.Context) (*pb.MptcpHealth, error)
	// Watch calls notify for every address or link change until ctx ends,
	// then returns ctx.Err(). Any other error means changes may have been
	// missed (the subscription broke); the caller resynchronises and calls
	// Watch again.
	Watch(ctx context.Context, notify func(Change)) error
	// Probe checks one path against one probe target: the kernel's route
	// lookup from src to target (which interface it leaves by), then, if
	// that leaves by wantLink, one MPTCP connection from src to target within
	// timeout, closed at once after a few bytes. It never returns an error:
	// what failed is in the result.
	Probe(ctx context.Context, src netip.Addr, wantLink int, target netip.AddrPort, timeout time.Duration) ProbeResult
}

// ProbeResult is what one probe of one path found.
type ProbeResult struct {
	// RouteLink is the interface index the kernel's route lookup from the
	// path's address to the target leaves by; 0 if the lookup failed
	// (RouteErr).
	RouteLink int
	// RouteErr is why the route lookup failed.
	RouteErr error
	// Dialed is true when a connection was attempted (the route left by the
	// path's own interface).
	Dialed bool
	// DialErr is why the connection failed (refused, timed out, ...).
	DialErr error
	// MPTCP is true when the connection was established as MPTCP; false with
	// no DialErr means it fell back to plain TCP.
	MPTCP bool
	// Latency is how long the connection took to establish.
	Latency time.Duration
}

// Change is one address or link change.
type Change struct {
	// Link is the interface index concerned.
	Link int
	// Addr is true for an address change, false for a link change.
	Addr bool
	// Down is true for a link change that leaves the link not up
	// (administratively or operationally) or removes it.
	Down bool
	// Added, for an address change, is the address (with its prefix
	// length) when the change made it usable on Link; invalid for a
	// removal, an address not yet usable (tentative) or one not known. An
	// added address can become an endpoint at once, ahead of the full
	// reconcile the change also triggers (hotplug.go).
	Added netip.Prefix
}
