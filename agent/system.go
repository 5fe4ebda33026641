package agent

import (
	"context"

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
}
