package agent

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// RouteGet implements RouteGetter: the kernel's output route lookup from src
// to dst on the namespace's rtnetlink handle.
func (s *NetlinkSystem) RouteGet(ctx context.Context, src, dst netip.Addr) (RouteHop, error) {
	if err := ctx.Err(); err != nil {
		return RouteHop{}, err
	}
	src, dst = src.Unmap(), dst.Unmap()
	if src.Is4() != dst.Is4() {
		return RouteHop{}, fmt.Errorf("route from %s to %s: different address families", src, dst)
	}
	s.mu.Lock()
	routes, err := s.h.RouteGetWithOptions(dst.AsSlice(), &netlink.RouteGetOptions{SrcAddr: src.AsSlice()})
	s.mu.Unlock()
	if err != nil {
		return RouteHop{}, fmt.Errorf("route from %s to %s: %w", src, dst, err)
	}
	if len(routes) == 0 {
		return RouteHop{}, fmt.Errorf("route from %s to %s: %w", src, dst, errors.New("the kernel answered no route"))
	}
	r := routes[0]
	h := RouteHop{Table: r.Table, LinkIndex: r.LinkIndex, Local: r.Type == unix.RTN_LOCAL}
	if gw, ok := netip.AddrFromSlice(r.Gw); ok && !gw.IsUnspecified() {
		h.Gateway = gw.Unmap()
	}
	return h, nil
}
