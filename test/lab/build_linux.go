package lab

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// build creates links, addresses, qdiscs, routes and sysctls.
func (l *Lab) build(ctx context.Context) error {
	for _, h := range l.hosts {
		if err := l.Do(h, func() error { return l.sysctls(h) }); err != nil {
			return fmt.Errorf("%s: %w", h, err)
		}
		lo, err := l.nl[h].LinkByName("lo")
		if err == nil {
			err = l.nl[h].LinkSetUp(lo)
		}
		if err != nil {
			return fmt.Errorf("%s: lo up: %w", h, err)
		}
	}
	for _, h := range l.endHosts() {
		for _, k := range DataLinks {
			if err := ctx.Err(); err != nil {
				return err
			}
			if err := l.dataLink(h, k); err != nil {
				return fmt.Errorf("%s %s: %w", h, k, err)
			}
		}
	}
	if err := l.mgmtNet(); err != nil {
		return fmt.Errorf("management network: %w", err)
	}
	for _, h := range l.endHosts() {
		if err := l.defaultRoutes(h); err != nil {
			return fmt.Errorf("%s: default route: %w", h, err)
		}
	}
	if l.cfg.IPv6 {
		if err := l.ingressFilter6(); err != nil {
			return fmt.Errorf("router: ipv6 ingress filter: %w", err)
		}
	}
	for _, h := range l.hosts {
		for _, k := range []Link{Link1, Link2, Mgmt} {
			if Iface(h, k) == "" {
				continue
			}
			if err := l.waitUp(ctx, h, k); err != nil {
				return err
			}
		}
	}
	if l.cfg.IPv6 {
		return l.waitNotTentative(ctx)
	}
	return nil
}

// waitNotTentative waits until no IPv6 address of the lab is tentative.
// With duplicate-address detection off an address is still marked so until
// a kernel work item runs, which can wait behind the cleanup of namespaces
// deleted just before (another lab's); a lab is ready when none is.
func (l *Lab) waitNotTentative(ctx context.Context) error {
	for {
		var left []string
		for h, nh := range l.nl {
			addrs, err := nh.AddrList(nil, netlink.FAMILY_V6)
			if err != nil {
				return fmt.Errorf("%s: list addresses: %w", h, err)
			}
			for _, a := range addrs {
				if a.Flags&unix.IFA_F_TENTATIVE != 0 {
					left = append(left, string(h)+" "+a.IPNet.String())
				}
			}
		}
		if len(left) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("IPv6 addresses still tentative: %s: %w", strings.Join(left, ", "), ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// endHosts returns the lab's hosts with data links: the client, the server
// and the extra hosts.
func (l *Lab) endHosts() []Host {
	return append([]Host{Client, Server}, l.FleetHosts()...)
}

// waitUp waits until both ends of the link of h are operationally up:
// veth carrier comes up asynchronously after both ends are set up.
func (l *Lab) waitUp(ctx context.Context, h Host, k Link) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	for {
		hl, err := l.nl[h].LinkByName(Iface(h, k))
		if err != nil {
			return err
		}
		rl, err := l.nl[Router].LinkByName(RouterIface(h, k))
		if err != nil {
			return err
		}
		if hl.Attrs().OperState == netlink.OperUp && rl.Attrs().OperState == netlink.OperUp {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s %s: carrier not up (%s, router end %s): %w", h, k, hl.Attrs().OperState, rl.Attrs().OperState, ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// sysctls runs inside the namespace of h.
func (l *Lab) sysctls(h Host) error {
	s := [][2]string{{"net/ipv4/tcp_congestion_control", l.cfg.CongestionControl}}
	if l.cfg.IPv6 {
		s = append(s,
			// Keep static addresses over LinkDown/LinkUp, as IPv4 does.
			[2]string{"net/ipv6/conf/all/keep_addr_on_down", "1"},
			[2]string{"net/ipv6/conf/default/keep_addr_on_down", "1"},
			[2]string{"net/ipv6/conf/default/accept_ra", "0"},
			// No duplicate address detection: the lab's addresses are
			// unique by plan, and DAD kept every link-local address
			// tentative for about 2 s after Up, during which the first
			// connection through a gateway took 2 s (its SYN sent
			// three times; TestIntegrationIPv6Ready).
			[2]string{"net/ipv6/conf/all/accept_dad", "0"},
			[2]string{"net/ipv6/conf/default/accept_dad", "0"},
		)
	} else {
		s = append(s,
			[2]string{"net/ipv6/conf/all/disable_ipv6", "1"},
			[2]string{"net/ipv6/conf/default/disable_ipv6", "1"},
		)
	}
	switch h {
	case Router:
		// Strict reverse-path filtering: a packet whose source belongs to
		// another link than the one it came in on is dropped.
		s = append(s,
			[2]string{"net/ipv4/ip_forward", "1"},
			[2]string{"net/ipv4/conf/all/rp_filter", "1"},
			[2]string{"net/ipv4/conf/default/rp_filter", "1"},
		)
		if l.cfg.IPv6 {
			s = append(s, [2]string{"net/ipv6/conf/all/forwarding", "1"})
		}
	default:
		// IPv4 devconf is inherited from the root namespace; pin what
		// matters. Loose reverse-path filtering, as most distributions
		// set, lets a multihomed host receive on either link.
		s = append(s,
			[2]string{"net/ipv4/ip_forward", "0"},
			[2]string{"net/ipv4/conf/all/rp_filter", "2"},
			[2]string{"net/ipv4/conf/default/rp_filter", "2"},
		)
	}
	for _, kv := range s {
		if err := os.WriteFile(filepath.Join("/proc/sys", kv[0]), []byte(kv[1]), 0o644); err != nil {
			return fmt.Errorf("sysctl %s=%s: %w", kv[0], kv[1], err)
		}
	}
	return nil
}

// veth creates a veth pair with one end, rname, in the router's namespace
// and the other, hname, in the namespace of h, brings both up and returns
// them. Nothing passes through the root namespace.
func (l *Lab) veth(rname string, h Host, hname string) (netlink.Link, netlink.Link, error) {
	rh, hh := l.nl[Router], l.nl[h]
	v := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: rname},
		PeerName:      hname,
		PeerNamespace: netlink.NsFd(l.ns[h]),
	}
	if err := rh.LinkAdd(v); err != nil {
		return nil, nil, fmt.Errorf("add veth %s/%s: %w", rname, hname, err)
	}
	rl, err := rh.LinkByName(rname)
	if err != nil {
		return nil, nil, err
	}
	hl, err := hh.LinkByName(hname)
	if err != nil {
		return nil, nil, err
	}
	return rl, hl, nil
}

func (l *Lab) addAddrs(nh *netlink.Handle, link netlink.Link, v4, v6 netip.Addr, bits4, bits6 int) error {
	a := &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(v4, bits4))}
	if err := nh.AddrAdd(link, a); err != nil {
		return fmt.Errorf("add %s to %s: %w", a.IPNet, link.Attrs().Name, err)
	}
	if l.cfg.IPv6 {
		a := &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(v6, bits6)), Flags: unix.IFA_F_NODAD}
		if err := nh.AddrAdd(link, a); err != nil {
			return fmt.Errorf("add %s to %s: %w", a.IPNet, link.Attrs().Name, err)
		}
	}
	return nil
}

func (l *Lab) dataLink(h Host, k Link) error {
	rl, hl, err := l.veth(RouterIface(h, k), h, Iface(h, k))
	if err != nil {
		return err
	}
	if err := l.addAddrs(l.nl[Router], rl, Gateway(h, k), Gateway6(h, k), 24, 64); err != nil {
		return err
	}
	if err := l.addAddrs(l.nl[h], hl, Addr(h, k), Addr6(h, k), 24, 64); err != nil {
		return err
	}
	if err := l.shape(l.nl[Router], rl); err != nil {
		return err
	}
	if err := l.shape(l.nl[h], hl); err != nil {
		return err
	}
	if err := l.nl[Router].LinkSetUp(rl); err != nil {
		return err
	}
	return l.nl[h].LinkSetUp(hl)
}

// shape puts a tbf qdisc on link's egress, limiting it to the lab's rate.
func (l *Lab) shape(nh *netlink.Handle, link netlink.Link) error {
	rate := l.cfg.Rate / 8 // bytes per second
	q := &netlink.Tbf{
		QdiscAttrs: netlink.QdiscAttrs{
			LinkIndex: link.Attrs().Index,
			Handle:    netlink.MakeHandle(1, 0),
			Parent:    netlink.HANDLE_ROOT,
		},
		Rate:   rate,
		Buffer: netlink.Xmittime(rate, l.cfg.Burst),
		Limit:  uint32(float64(rate)*l.cfg.Queue.Seconds()) + l.cfg.Burst,
	}
	if err := nh.QdiscAdd(q); err != nil {
		return fmt.Errorf("tbf on %s: %w", link.Attrs().Name, err)
	}
	return nil
}

func (l *Lab) mgmtNet() error {
	rh := l.nl[Router]
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: mgmtBridge}}
	if err := rh.LinkAdd(br); err != nil {
		return fmt.Errorf("add bridge: %w", err)
	}
	brl, err := rh.LinkByName(mgmtBridge)
	if err != nil {
		return err
	}
	if err := rh.LinkSetUp(brl); err != nil {
		return err
	}
	for _, h := range append([]Host{Controller}, l.endHosts()...) {
		rl, hl, err := l.veth(RouterIface(h, Mgmt), h, Iface(h, Mgmt))
		if err != nil {
			return err
		}
		if err := rh.LinkSetMaster(rl, brl); err != nil {
			return fmt.Errorf("enslave %s: %w", rl.Attrs().Name, err)
		}
		if err := l.addAddrs(l.nl[h], hl, Addr(h, Mgmt), Addr6(h, Mgmt), 24, 64); err != nil {
			return err
		}
		if err := rh.LinkSetUp(rl); err != nil {
			return err
		}
		if err := l.nl[h].LinkSetUp(hl); err != nil {
			return err
		}
	}
	return nil
}

// defaultRoutes sets the one default route of h, through link 1, in the
// main table.
func (l *Lab) defaultRoutes(h Host) error {
	nh := l.nl[h]
	link, err := nh.LinkByName(Iface(h, Link1))
	if err != nil {
		return err
	}
	r := &netlink.Route{
		LinkIndex: link.Attrs().Index,
		Dst:       ipNet(netip.PrefixFrom(netip.IPv4Unspecified(), 0)),
		Gw:        net.IP(Gateway(h, Link1).AsSlice()),
	}
	if err := nh.RouteReplace(r); err != nil {
		return fmt.Errorf("%s: %w", r, err)
	}
	if l.cfg.IPv6 {
		r := &netlink.Route{
			LinkIndex: link.Attrs().Index,
			Dst:       ipNet(netip.PrefixFrom(netip.IPv6Unspecified(), 0)),
			Gw:        net.IP(Gateway6(h, Link1).AsSlice()),
		}
		if err := nh.RouteReplace(r); err != nil {
			return fmt.Errorf("%s: %w", r, err)
		}
	}
	return nil
}

// Rule priorities of the router's IPv6 ingress filter.
const (
	ingressAllowPriority = 1000
	ingressDropPriority  = 1001
)

// ingressFilter6 is the router's IPv6 stand-in for strict rp_filter, which
// IPv6 lacks: a packet to be forwarded that arrives on a data link is
// routed only if its source is in that link's subnet, and dropped
// otherwise. Packets for the router itself match the local table first.
func (l *Lab) ingressFilter6() error {
	rh := l.nl[Router]
	for _, h := range l.endHosts() {
		for _, k := range DataLinks {
			allow := netlink.NewRule()
			allow.Family = unix.AF_INET6
			allow.Priority = ingressAllowPriority
			allow.IifName = RouterIface(h, k)
			allow.Src = ipNet(Subnet6(h, k))
			allow.Table = unix.RT_TABLE_MAIN
			if err := rh.RuleAdd(allow); err != nil {
				return fmt.Errorf("%s: %w", allow, err)
			}
			drop := netlink.NewRule()
			drop.Family = unix.AF_INET6
			drop.Priority = ingressDropPriority
			drop.IifName = RouterIface(h, k)
			drop.Type = unix.RTN_BLACKHOLE
			if err := rh.RuleAdd(drop); err != nil {
				return fmt.Errorf("%s: %w", drop, err)
			}
		}
	}
	return nil
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
