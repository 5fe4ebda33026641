//go:build !linux

package agent

import (
	"context"
	"net/netip"
)

// RouteGet fails: the agent needs Linux.
func (*NetlinkSystem) RouteGet(context.Context, netip.Addr, netip.Addr) (RouteHop, error) {
	return RouteHop{}, errOS
}
