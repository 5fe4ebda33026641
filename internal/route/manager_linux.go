package route

import (
	"cmp"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Manager lists, adds and deletes the owned policy-routing rules and routes of
// one network namespace over rtnetlink. It is safe for concurrent use.
type Manager struct {
	r  Range
	mu sync.Mutex
	h  *netlink.Handle
}

// Open returns a Manager for the namespace and range in opts (nil opts: the
// current namespace and DefaultRange).
func Open(opts *Options) (*Manager, error) {
	r, err := opts.rangeOrDefault()
	if err != nil {
		return nil, err
	}
	var h *netlink.Handle
	if opts != nil && opts.NetNS != 0 {
		h, err = netlink.NewHandleAt(netns.NsHandle(opts.NetNS), unix.NETLINK_ROUTE)
	} else {
		h, err = netlink.NewHandle(unix.NETLINK_ROUTE)
	}
	if err != nil {
		return nil, opErr("open rtnetlink", err)
	}
	return &Manager{r: r, h: h}, nil
}

// Close releases the netlink socket.
func (m *Manager) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.h != nil {
		m.h.Close()
		m.h = nil
	}
	return nil
}

// Range returns the owned range.
func (m *Manager) Range() Range { return m.r }

// dumpTries bounds retries of a dump the kernel reports as interrupted (the
// table changed while it was being read).
const dumpTries = 5

// Rules returns the owned rules (priority and table both in range), sorted.
func (m *Manager) Rules() ([]Rule, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var nrs []netlink.Rule
	var err error
	for range dumpTries {
		nrs, err = m.h.RuleListFiltered(netlink.FAMILY_ALL, nil, 0)
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	if err != nil {
		return nil, opErr("list rules", err)
	}
	var out []Rule
	for _, nr := range nrs {
		x := Rule{Priority: nr.Priority, Table: nr.Table, Family: Family(nr.Family)}
		if !m.r.OwnsRule(x) {
			continue
		}
		if nr.Src != nil {
			x.Src = fromIPNet(nr.Src)
		}
		out = append(out, x.Canonical())
	}
	SortRules(out)
	return out, nil
}

// Routes returns the unicast routes in the owned tables, sorted.
func (m *Manager) Routes() ([]Route, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var nrs []netlink.Route
	var err error
	for range dumpTries {
		// Table UNSPEC with the table filter set makes the library return the
		// routes of every table, not only main.
		nrs, err = m.h.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	if err != nil {
		return nil, opErr("list routes", err)
	}
	var out []Route
	for _, nr := range nrs {
		if !m.r.HasTable(nr.Table) || nr.Type != unix.RTN_UNICAST {
			continue
		}
		out = append(out, fromNetlinkRoute(nr))
	}
	SortRoutes(out)
	return out, nil
}

// AddRule adds x; it fails with an error wrapping ErrOutOfRange for a rule
// outside the range and os.ErrExist when the rule is there already.
func (m *Manager) AddRule(x Rule) error {
	op := "add rule " + x.String()
	if err := m.r.CheckRule(x); err != nil {
		return opErr(op, err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	// RuleAdd asks for NLM_F_EXCL, so the kernel refuses a duplicate (EEXIST).
	return opErr(op, m.h.RuleAdd(toNetlinkRule(x)))
}

// DeleteRule deletes x; it fails with an error wrapping ErrOutOfRange for a
// rule outside the range and os.ErrNotExist when there is no such rule.
func (m *Manager) DeleteRule(x Rule) error {
	op := "delete rule " + x.String()
	if err := m.r.CheckRule(x); err != nil {
		return opErr(op, err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return opErr(op, notFound(m.h.RuleDel(toNetlinkRule(x))))
}

// AddRoute adds x; it fails with an error wrapping ErrOutOfRange for a route
// outside the owned tables and os.ErrExist when the table already has a route
// to x.Dst.
func (m *Manager) AddRoute(x Route) error {
	op := "add route " + x.String()
	if err := m.r.CheckRoute(x); err != nil {
		return opErr(op, err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return opErr(op, m.h.RouteAdd(toNetlinkRoute(x)))
}

// DeleteRoute deletes the route x (matched on table, destination, interface,
// gateway, source and scope, whoever added it); it fails with an error wrapping ErrOutOfRange
// for a route outside the owned tables and os.ErrNotExist when there is no
// such route.
func (m *Manager) DeleteRoute(x Route) error {
	op := "delete route " + x.String()
	if err := m.r.CheckRoute(x); err != nil {
		return opErr(op, err)
	}
	nr := toNetlinkRoute(x)
	// Match any protocol and type: the kernel compares them when they are
	// set, and a route someone added by hand (proto boot) is still ours.
	nr.Protocol, nr.Type = 0, 0
	m.mu.Lock()
	defer m.mu.Unlock()
	return opErr(op, notFound(m.h.RouteDel(nr)))
}

// Gateway returns the gateway of the interface linkIndex for family f, found
// in the main table: the gateway of a default route through the interface
// if there is one, else that of any route through it with a gateway (lowest
// metric, then shortest prefix, wins). With none it fails wrapping
// os.ErrNotExist.
func (m *Manager) Gateway(linkIndex int, f Family) (netip.Addr, error) {
	op := fmt.Sprintf("find %v gateway of link %d", f, linkIndex)
	if f != FamilyV4 && f != FamilyV6 {
		return netip.Addr{}, opErr(op, fmt.Errorf("family %v: %w", f, ErrInvalid))
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	var nrs []netlink.Route
	var err error
	for range dumpTries {
		nrs, err = m.h.RouteListFiltered(int(f), &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	if err != nil {
		return netip.Addr{}, opErr(op, err)
	}
	type cand struct {
		gw     netip.Addr
		metric int
		bits   int
	}
	var cs []cand
	for _, nr := range nrs {
		if nr.Type != unix.RTN_UNICAST {
			continue
		}
		bits := 0
		if nr.Dst != nil {
			bits, _ = nr.Dst.Mask.Size()
		}
		if nr.LinkIndex == linkIndex && nr.Gw != nil {
			cs = append(cs, cand{addrOf(nr.Gw), nr.Priority, bits})
		}
		for _, nh := range nr.MultiPath {
			if nh.LinkIndex == linkIndex && nh.Gw != nil {
				cs = append(cs, cand{addrOf(nh.Gw), nr.Priority, bits})
			}
		}
	}
	if len(cs) == 0 {
		return netip.Addr{}, opErr(op, fmt.Errorf("no route with a gateway through the link in the main table: %w", os.ErrNotExist))
	}
	c := slices.MinFunc(cs, func(a, b cand) int {
		return cmp.Or(cmp.Compare(a.bits, b.bits), cmp.Compare(a.metric, b.metric), a.gw.Compare(b.gw))
	})
	return c.gw, nil
}

// LinkNames returns the namespace's interface names by index.
func (m *Manager) LinkNames() (map[int]string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var links []netlink.Link
	var err error
	for range dumpTries {
		links, err = m.h.LinkList()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	if err != nil {
		return nil, opErr("list links", err)
	}
	names := make(map[int]string, len(links))
	for _, l := range links {
		names[l.Attrs().Index] = l.Attrs().Name
	}
	return names, nil
}

// Render returns the owned rules and routes as Render prints them.
func (m *Manager) Render() (string, error) {
	rules, err := m.Rules()
	if err != nil {
		return "", err
	}
	routes, err := m.Routes()
	if err != nil {
		return "", err
	}
	return Render(rules, routes), nil
}

// notFound makes the kernel's "no such route" (ESRCH) satisfy
// errors.Is(err, os.ErrNotExist) as ENOENT already does.
func notFound(err error) error {
	if err != nil && errors.Is(err, unix.ESRCH) {
		return notExistError{err}
	}
	return err
}

type notExistError struct{ err error }

func (e notExistError) Error() string        { return e.err.Error() }
func (e notExistError) Unwrap() error        { return e.err }
func (e notExistError) Is(target error) bool { return target == os.ErrNotExist }

func toNetlinkRule(x Rule) *netlink.Rule {
	x = x.Canonical()
	nr := netlink.NewRule()
	nr.Priority = x.Priority
	nr.Table = x.Table
	nr.Family = int(x.Family)
	nr.Src = toIPNet(x.Src)
	return nr
}

func toNetlinkRoute(x Route) *netlink.Route {
	x = x.Canonical()
	nr := &netlink.Route{
		LinkIndex: x.LinkIndex,
		Dst:       toIPNet(x.Dst),
		Table:     x.Table,
		Scope:     netlink.Scope(x.Scope),
		Protocol:  unix.RTPROT_STATIC,
		Type:      unix.RTN_UNICAST,
		Family:    int(x.Family()),
	}
	if x.Gateway.IsValid() {
		nr.Gw = net.IP(x.Gateway.AsSlice())
	}
	if x.Src.IsValid() {
		nr.Src = net.IP(x.Src.AsSlice())
	}
	return nr
}

func fromNetlinkRoute(nr netlink.Route) Route {
	x := Route{Table: nr.Table, LinkIndex: nr.LinkIndex, Scope: Scope(nr.Scope)}
	if nr.Dst != nil {
		x.Dst = fromIPNet(nr.Dst)
	} else if nr.Family == unix.AF_INET6 {
		x.Dst = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
	} else {
		x.Dst = netip.PrefixFrom(netip.IPv4Unspecified(), 0)
	}
	if nr.Gw != nil {
		x.Gateway = addrOf(nr.Gw)
	}
	if nr.Src != nil {
		x.Src = addrOf(nr.Src)
	}
	return x.Canonical()
}

func toIPNet(p netip.Prefix) *net.IPNet {
	if !p.IsValid() {
		return nil
	}
	a := p.Addr()
	return &net.IPNet{IP: net.IP(a.AsSlice()), Mask: net.CIDRMask(p.Bits(), a.BitLen())}
}

func fromIPNet(n *net.IPNet) netip.Prefix {
	a := addrOf(n.IP)
	bits, _ := n.Mask.Size()
	return netip.PrefixFrom(a, bits)
}

// addrOf converts ip, unmapping an IPv4 address held in 16 bytes.
func addrOf(ip net.IP) netip.Addr {
	if ip4 := ip.To4(); ip4 != nil {
		return netip.AddrFrom4([4]byte(ip4))
	}
	a, _ := netip.AddrFromSlice(ip)
	return a
}
