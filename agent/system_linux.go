package agent

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/mpfleet/mpfleet/internal/mptcp"
	"github.com/mpfleet/mpfleet/internal/mptcp/mptcpnl"
	"github.com/mpfleet/mpfleet/internal/nsrun"
	"github.com/mpfleet/mpfleet/internal/probe"
	"github.com/mpfleet/mpfleet/internal/route/routenl"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// NetlinkSystem is the real System of one network namespace: interfaces,
// addresses and gateways from rtnetlink, MPTCP connections from sock_diag,
// counters and sysctls from /proc read on a thread inside the namespace,
// changes from rtnetlink multicast. It never runs a command.
type NetlinkSystem struct {
	ns netns.NsHandle // -1: the caller's namespace
	h  *netlink.Handle
	mp *mptcpnl.Client // nil when the kernel lacks MPTCP

	mu       sync.Mutex // serialises dumps on h, guards the static facts
	static   *pb.HostFacts
	staticAt time.Time
}

// staticFactsTTL is how long the facts that rarely change (kernel, sysctls)
// are cached.
const staticFactsTTL = 10 * time.Second

// OpenNetlinkSystem opens the sockets of a NetlinkSystem for the network
// namespace netnsFD (as from /run/netns/NAME; 0 is the caller's). A kernel
// without MPTCP is not an error: the facts say so.
func OpenNetlinkSystem(netnsFD int) (*NetlinkSystem, error) {
	s := &NetlinkSystem{ns: -1}
	if netnsFD != 0 {
		d, err := unix.FcntlInt(uintptr(netnsFD), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			return nil, fmt.Errorf("agent: netns fd %d: %w", netnsFD, err)
		}
		s.ns = netns.NsHandle(d)
	}
	var err error
	if s.ns >= 0 {
		s.h, err = netlink.NewHandleAt(s.ns, unix.NETLINK_ROUTE)
	} else {
		s.h, err = netlink.NewHandle(unix.NETLINK_ROUTE)
	}
	if err != nil {
		s.closeNS()
		return nil, fmt.Errorf("agent: open rtnetlink: %w", err)
	}
	if s.mp, err = mptcpnl.Dial(&mptcpnl.DialOptions{NetNS: netnsFD}); err != nil && !errors.Is(err, mptcp.ErrUnsupported) {
		s.h.Close()
		s.closeNS()
		return nil, fmt.Errorf("agent: %w", err)
	}
	return s, nil
}

func (s *NetlinkSystem) closeNS() {
	if s.ns >= 0 {
		_ = s.ns.Close()
	}
}

// Close releases the sockets.
func (s *NetlinkSystem) Close() error {
	var err error
	if s.mp != nil {
		err = s.mp.Close()
	}
	s.h.Close()
	s.closeNS()
	return err
}

// inNS runs fn on a locked OS thread inside the namespace, and restores the
// thread's namespace before unlocking it; a thread that cannot be restored
// stays locked and ends with its goroutine.
func (s *NetlinkSystem) inNS(fn func() error) error {
	if s.ns < 0 {
		return fn()
	}
	return nsrun.In(s.ns, fn)
}

// Facts implements System.
func (s *NetlinkSystem) Facts(ctx context.Context) (*pb.HostFacts, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.static == nil || time.Since(s.staticAt) > staticFactsTTL {
		st, err := s.staticFacts()
		if err != nil {
			return nil, err
		}
		s.static, s.staticAt = st, time.Now()
	}
	f := &pb.HostFacts{
		Hostname: s.static.Hostname, KernelVersion: s.static.KernelVersion, MptcpSupported: s.static.MptcpSupported,
		AvailableSysctls: s.static.AvailableSysctls, AvailableSchedulers: s.static.AvailableSchedulers,
		AvailablePathManagers: s.static.AvailablePathManagers,
	}
	var err error
	f.Interfaces, err = s.interfaces()
	return f, err
}

func (s *NetlinkSystem) staticFacts() (*pb.HostFacts, error) {
	f := &pb.HostFacts{}
	f.Hostname, _ = os.Hostname()
	var u unix.Utsname
	if err := unix.Uname(&u); err == nil {
		f.KernelVersion = unix.ByteSliceToString(u.Release[:])
	}
	var sysctls map[string]string
	err := s.inNS(func() error {
		var err error
		sysctls, err = mptcp.Sysctls()
		return err
	})
	switch {
	case errors.Is(err, mptcp.ErrUnsupported):
	case err != nil:
		return nil, fmt.Errorf("agent: facts: %w", err)
	default:
		f.MptcpSupported = s.mp != nil
		f.AvailableSysctls = slices.Sorted(maps.Keys(sysctls))
		f.AvailableSchedulers = strings.Fields(sysctls["available_schedulers"])
		f.AvailablePathManagers = strings.Fields(sysctls["available_path_managers"])
	}
	return f, nil
}

// linkUp is "administratively and operationally up"; an operational state
// the driver does not know (tunnels, loopback) counts as up.
func linkUp(a *netlink.LinkAttrs) bool {
	return a.Flags&net.FlagUp != 0 && (a.OperState == netlink.OperUp || a.OperState == netlink.OperUnknown)
}

func (s *NetlinkSystem) interfaces() ([]*pb.Interface, error) {
	links, err := routenl.Retry(s.h.LinkList)
	if err != nil {
		return nil, fmt.Errorf("agent: list links: %w", err)
	}
	addrs, err := routenl.Retry(func() ([]netlink.Addr, error) { return s.h.AddrList(nil, netlink.FAMILY_ALL) })
	if err != nil {
		return nil, fmt.Errorf("agent: list addresses: %w", err)
	}
	routes, err := routenl.Retry(func() ([]netlink.Route, error) {
		return s.h.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		return nil, fmt.Errorf("agent: list routes: %w", err)
	}
	byIndex := map[int]*pb.Interface{}
	var out []*pb.Interface
	for _, l := range links {
		a := l.Attrs()
		i := &pb.Interface{Name: a.Name, Index: int32(a.Index), Up: linkUp(a)}
		byIndex[a.Index] = i
		out = append(out, i)
	}
	for _, a := range addrs {
		i := byIndex[a.LinkIndex]
		if i == nil || a.IPNet == nil || a.Flags&(unix.IFA_F_TENTATIVE|unix.IFA_F_DADFAILED) != 0 {
			continue // not usable (yet): an update comes when it is
		}
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			continue
		}
		bits, _ := a.Mask.Size()
		i.Addresses = append(i.Addresses, netip.PrefixFrom(ip.Unmap(), bits).String())
	}
	type gw struct {
		link, bits, metric int
		addr               netip.Addr
	}
	var gws []gw
	for _, r := range routes {
		if r.Type != unix.RTN_UNICAST {
			continue
		}
		bits := 0
		if r.Dst != nil {
			bits, _ = r.Dst.Mask.Size()
		}
		if a, ok := netip.AddrFromSlice(r.Gw); ok && r.Gw != nil {
			gws = append(gws, gw{r.LinkIndex, bits, r.Priority, a.Unmap()})
		}
		for _, nh := range r.MultiPath {
			if a, ok := netip.AddrFromSlice(nh.Gw); ok && nh.Gw != nil {
				gws = append(gws, gw{nh.LinkIndex, bits, r.Priority, a.Unmap()})
			}
		}
	}
	// The gateway of a default route first, then of the widest route, lowest
	// metric first.
	slices.SortFunc(gws, func(a, b gw) int {
		return cmp.Or(cmp.Compare(a.bits, b.bits), cmp.Compare(a.metric, b.metric), a.addr.Compare(b.addr))
	})
	for _, g := range gws {
		if i := byIndex[g.link]; i != nil && !slices.Contains(i.Gateways, g.addr.String()) {
			i.Gateways = append(i.Gateways, g.addr.String())
		}
	}
	slices.SortFunc(out, func(a, b *pb.Interface) int { return cmp.Compare(a.Index, b.Index) })
	return out, nil
}

// Health implements System.
func (s *NetlinkSystem) Health(ctx context.Context) (*pb.MptcpHealth, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if s.mp == nil {
		return nil, mptcp.ErrUnsupported
	}
	conns, err := s.mp.Connections()
	if err != nil {
		return nil, err
	}
	var ctrs mptcp.Counters
	if err := s.inNS(func() error {
		var err error
		ctrs, err = mptcp.ReadCounters()
		return err
	}); err != nil {
		return nil, err
	}
	return HealthFrom(conns, ctrs, time.Now()), nil
}

// Probe implements System: the route lookup on the namespace's rtnetlink
// handle, then, if the route leaves by wantLink, one probe.Dial from a
// socket made inside the namespace.
func (s *NetlinkSystem) Probe(ctx context.Context, src netip.Addr, wantLink int, target netip.AddrPort, timeout time.Duration) ProbeResult {
	var r ProbeResult
	s.mu.Lock()
	r.RouteLink, r.RouteErr = probe.RouteLink(s.h, src, target.Addr())
	s.mu.Unlock()
	if r.RouteErr != nil || r.RouteLink != wantLink {
		return r
	}
	r.Dialed = true
	d := probe.Dial(ctx, s.ns, src, target, timeout)
	r.DialErr, r.MPTCP, r.Latency = d.Err, d.MPTCP, d.Latency
	return r
}

var _ System = (*NetlinkSystem)(nil)
