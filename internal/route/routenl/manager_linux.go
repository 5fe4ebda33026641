package routenl

import (
	"cmp"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"

	"github.com/mpfleet/mpfleet/internal/route"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Manager lists, adds and deletes mpfleet's policy-routing rules and routes of
// one network namespace over rtnetlink: those inside its Range that carry
// Protocol. It adds with Protocol and deletes matching it, so a foreign entry
// is never deleted; it lists foreign ones apart (Dump). It is safe for
// concurrent use.
type Manager struct {
	r  route.Range
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

// dumpTries bounds retries of a dump the kernel reports as interrupted (the
// table changed while it was being read).
const dumpTries = 5

// Retry calls dump until the kernel does not report the dump interrupted
// (netlink.ErrDumpInterrupted), at most dumpTries times, and returns the last
// result. Every rtnetlink dump of mpfleet's goes through it.
func Retry[T any](dump func() ([]T, error)) ([]T, error) {
	var out []T
	var err error
	for range dumpTries {
		out, err = dump()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	return out, err
}

// Dump lists the range's rules and routes, mpfleet's and foreign ones, in one
// dump of each.
func (m *Manager) Dump() (Dump, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var d Dump
	var err error
	if d.Rules, d.ForeignRules, err = m.dumpRules(); err != nil {
		return Dump{}, err
	}
	if d.Routes, d.ForeignRoutes, err = m.dumpRoutes(); err != nil {
		return Dump{}, err
	}
	return d, nil
}

// Rules returns mpfleet's rules in the range (priority and table both in it,
// carrying Protocol), sorted.
func (m *Manager) Rules() ([]route.Rule, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	ours, _, err := m.dumpRules()
	return ours, err
}

// Routes returns mpfleet's unicast routes in the owned tables (carrying
// Protocol), sorted.
func (m *Manager) Routes() ([]route.Route, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	ours, _, err := m.dumpRoutes()
	return ours, err
}

// dumpRules lists every rule and sorts those that concern the range into
// mpfleet's and foreign ones. m.mu is held.
func (m *Manager) dumpRules() (ours []route.Rule, foreign []route.ForeignRule, err error) {
	nrs, err := Retry(func() ([]netlink.Rule, error) { return m.h.RuleListFiltered(netlink.FAMILY_ALL, nil, 0) })
	if err != nil {
		return nil, nil, opErr("list rules", err)
	}
	ours, foreign = split(nrs, fromNetlinkRule,
		func(f route.ForeignRule) bool { return m.r.OverlapsRule(f.Rule) },
		func(f route.ForeignRule) (route.Rule, bool) {
			return f.Rule, f.Protocol == route.Protocol && f.Plain() && m.r.OwnsRule(f.Rule)
		})
	route.SortRules(ours)
	route.SortForeignRules(foreign)
	return ours, foreign, nil
}

// dumpRoutes lists the routes of every table and sorts those in the owned
// tables into mpfleet's and foreign ones. m.mu is held.
func (m *Manager) dumpRoutes() (ours []route.Route, foreign []route.ForeignRoute, err error) {
	// Table UNSPEC with the table filter set makes the library return the
	// routes of every table, not only main.
	nrs, err := Retry(func() ([]netlink.Route, error) {
		return m.h.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		return nil, nil, opErr("list routes", err)
	}
	ours, foreign = split(nrs, fromNetlinkForeignRoute,
		func(f route.ForeignRoute) bool { return m.r.HasTable(f.Table) },
		func(f route.ForeignRoute) (route.Route, bool) {
			return f.Route, f.Protocol == route.Protocol && f.Plain()
		})
	route.SortRoutes(ours)
	route.SortForeignRoutes(foreign)
	return ours, foreign, nil
}

// split converts the kernel's objects with conv, drops those outside the
// owned range (inRange), and sorts the rest into mpfleet's — as own gives
// them, when it says they are — and foreign ones.
func split[N, F, O any](nrs []N, conv func(N) F, inRange func(F) bool, own func(F) (O, bool)) (ours []O, foreign []F) {
	for _, nr := range nrs {
		f := conv(nr)
		if !inRange(f) {
			continue
		}
		if o, ok := own(f); ok {
			ours = append(ours, o)
			continue
		}
		foreign = append(foreign, f)
	}
	return ours, foreign
}

// change makes one change to a rule or route, op: it fails with check, the
// checks of its arguments, or else does do with the netlink handle, under
// the lock. Every error is an OpError of op.
func (m *Manager) change(op string, check error, do func(h *netlink.Handle) error) error {
	if check != nil {
		return opErr(op, check)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return opErr(op, do(m.h))
}

// AddRule adds x, carrying Protocol; it fails with an error wrapping
// ErrOutOfRange for a rule outside the range and os.ErrExist when mpfleet's
// rule is there already.
func (m *Manager) AddRule(x route.Rule) error {
	// RuleAdd asks for NLM_F_EXCL, so the kernel refuses a duplicate (EEXIST)
	// with the same protocol.
	return m.change("add rule "+x.String(), m.r.CheckRule(x), func(h *netlink.Handle) error { return h.RuleAdd(toNetlinkRule(x, route.Protocol)) })
}

// DeleteRule deletes mpfleet's rule x; it fails with an error wrapping
// ErrOutOfRange for a rule outside the range and os.ErrNotExist when there is
// no such rule carrying Protocol. The kernel matches the protocol, so a
// foreign rule that looks the same is never deleted.
func (m *Manager) DeleteRule(x route.Rule) error {
	return m.change("delete rule "+x.String(), m.r.CheckRule(x), func(h *netlink.Handle) error { return notFound(h.RuleDel(toNetlinkRule(x, route.Protocol))) })
}

// AddRoute adds x, carrying Protocol; it fails with an error wrapping
// ErrOutOfRange for a route outside the owned tables and os.ErrExist when the
// table already has a route to x.Dst (mpfleet's or not).
func (m *Manager) AddRoute(x route.Route) error {
	return m.change("add route "+x.String(), m.r.CheckRoute(x), func(h *netlink.Handle) error { return h.RouteAdd(toNetlinkRoute(x, route.Protocol)) })
}

// DeleteRoute deletes mpfleet's route x (matched on table, destination,
// interface, gateway, source, scope and Protocol); it fails with an error
// wrapping ErrOutOfRange for a route outside the owned tables and
// os.ErrNotExist when there is no such route carrying Protocol. The kernel
// matches the protocol, so a foreign route is never deleted.
func (m *Manager) DeleteRoute(x route.Route) error {
	return m.change("delete route "+x.String(), m.r.CheckRoute(x), func(h *netlink.Handle) error { return notFound(h.RouteDel(toNetlinkRoute(x, route.Protocol))) })
}

// SetRuleProtocol re-makes the rule x, which the kernel holds with protocol
// from, with protocol to: mpfleet adopts a rule an older agent made (from
// LegacyRuleProtocol to Protocol), and gives it back when an apply that
// adopted it is undone. No other exchange is allowed (ErrInvalid). The rule
// with the new protocol is added before the old one is deleted, so the
// source is routed throughout. It fails wrapping os.ErrNotExist when there is
// no such rule with protocol from, os.ErrExist when there is one with
// protocol to, and ErrConflict when from is unspec and other rules have x's
// priority, source and table (a delete without a protocol could not tell the
// old one from them).
func (m *Manager) SetRuleProtocol(x route.Rule, from, to route.Proto) error {
	check := cmp.Or(m.r.CheckRule(x), route.CheckAdoption(from, to, route.LegacyRuleProtocol))
	return m.change(fmt.Sprintf("set rule %v protocol %v (was %v)", x, to, from), check, func(h *netlink.Handle) error {
		return m.setRuleProtocol(h, x.Canonical(), from, to)
	})
}

// setRuleProtocol is SetRuleProtocol of a canonical x. m.mu is held.
func (m *Manager) setRuleProtocol(h *netlink.Handle, x route.Rule, from, to route.Proto) error {
	ours, foreign, err := m.dumpRules()
	if err != nil {
		return err
	}
	var old, others int
	for _, f := range append(foreign, foreignOf(ours)...) {
		if f.Canonical() != x {
			continue
		}
		switch {
		case f.Protocol == from && f.Plain():
			old++
		case f.Protocol == to && f.Plain():
			return fmt.Errorf("a rule with protocol %v exists: %w", to, os.ErrExist)
		default:
			others++
		}
	}
	switch {
	case old == 0:
		return fmt.Errorf("no rule with protocol %v: %w", from, os.ErrNotExist)
	case others > 0 && from == route.ProtoUnspec:
		// The delete could not tell the old rule from them.
		return fmt.Errorf("%d other rule(s) with the same priority, source and table: %w", others, route.ErrConflict)
	}
	// The kernel keeps rules of one priority in the order they were added,
	// and deletes the first that matches; a delete without a protocol
	// (from is unspec) matches any, and the old rule comes first.
	if err := h.RuleAdd(toNetlinkRule(x, to)); err != nil {
		return err
	}
	if err := h.RuleDel(toNetlinkRule(x, from)); err != nil {
		err = notFound(err)
		if to != route.ProtoUnspec {
			if uerr := h.RuleDel(toNetlinkRule(x, to)); uerr != nil {
				err = errors.Join(err, fmt.Errorf("the rule added with protocol %v stays: %w", to, uerr))
			}
		} else {
			err = errors.Join(err, fmt.Errorf("the rule added with protocol %v stays", to))
		}
		return err
	}
	return nil
}

// SetRouteProtocol re-makes the route x, which the kernel holds with protocol
// from, with protocol to, in place (NLM_F_REPLACE): mpfleet adopts a route an
// older agent made (from LegacyRouteProtocol to Protocol), and gives it back
// when an apply that adopted it is undone. No other exchange is allowed
// (ErrInvalid). It fails wrapping os.ErrNotExist unless the table's route to
// x.Dst is exactly x with protocol from.
func (m *Manager) SetRouteProtocol(x route.Route, from, to route.Proto) error {
	check := cmp.Or(m.r.CheckRoute(x), route.CheckAdoption(from, to, route.LegacyRouteProtocol))
	return m.change(fmt.Sprintf("set route %v protocol %v (was %v)", x, to, from), check, func(h *netlink.Handle) error {
		return m.setRouteProtocol(h, x.Canonical(), from, to)
	})
}

// setRouteProtocol is SetRouteProtocol of a canonical x. m.mu is held.
func (m *Manager) setRouteProtocol(h *netlink.Handle, x route.Route, from, to route.Proto) error {
	nrs, err := Retry(func() ([]netlink.Route, error) {
		return h.RouteListFiltered(int(x.Family()), &netlink.Route{Table: x.Table}, netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		return err
	}
	found := false
	for _, nr := range nrs {
		f := fromNetlinkForeignRoute(nr)
		if f.Key() != x.Key() || f.Type != route.TypeUnicast {
			continue
		}
		if f.Route != x || f.Protocol != from || !f.Plain() {
			return fmt.Errorf("the table's route to %v is %v: %w", x.Dst, f, os.ErrNotExist)
		}
		found = true
	}
	if !found {
		return fmt.Errorf("no route to %v in table %d: %w", x.Dst, x.Table, os.ErrNotExist)
	}
	return h.RouteReplace(toNetlinkRoute(x, to))
}

// LinkNames returns the namespace's interface names by index.
func (m *Manager) LinkNames() (map[int]string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	links, err := Retry(m.h.LinkList)
	if err != nil {
		return nil, opErr("list links", err)
	}
	names := make(map[int]string, len(links))
	for _, l := range links {
		names[l.Attrs().Index] = l.Attrs().Name
	}
	return names, nil
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

// toNetlinkRule returns x as a netlink rule with protocol p (ProtoUnspec:
// none, so that a delete matches any protocol).
func toNetlinkRule(x route.Rule, p route.Proto) *netlink.Rule {
	x = x.Canonical()
	nr := netlink.NewRule()
	nr.Priority = x.Priority
	nr.Table = x.Table
	nr.Family = int(x.Family)
	nr.Src = toIPNet(x.Src)
	nr.Protocol = uint8(p)
	return nr
}

// fromNetlinkRule returns nr as a ForeignRule: the part the model holds and,
// in Detail, the rest.
func fromNetlinkRule(nr netlink.Rule) route.ForeignRule {
	f := route.ForeignRule{Rule: route.Rule{Priority: nr.Priority, Table: nr.Table, Family: route.Family(nr.Family)}, Protocol: route.Proto(nr.Protocol)}
	if nr.Src != nil {
		f.Src = fromIPNet(nr.Src)
	}
	f.Rule = f.Canonical()
	var d []string
	add := func(format string, args ...any) { d = append(d, fmt.Sprintf(format, args...)) }
	if nr.Invert {
		add("not")
	}
	if nr.Dst != nil {
		add("to %s", prefixString(fromIPNet(nr.Dst).Masked()))
	}
	if nr.Tos != 0 {
		add("tos %#x", nr.Tos)
	}
	if nr.Mark != 0 || nr.Mask != nil {
		if nr.Mask != nil && *nr.Mask != 0xffffffff {
			add("fwmark %#x/%#x", nr.Mark, *nr.Mask)
		} else {
			add("fwmark %#x", nr.Mark)
		}
	}
	if nr.IifName != "" {
		add("iif %s", nr.IifName)
	}
	if nr.OifName != "" {
		add("oif %s", nr.OifName)
	}
	if nr.UIDRange != nil {
		add("uidrange %d-%d", nr.UIDRange.Start, nr.UIDRange.End)
	}
	if nr.IPProto != 0 {
		add("ipproto %d", nr.IPProto)
	}
	if nr.Sport != nil {
		add("sport %d-%d", nr.Sport.Start, nr.Sport.End)
	}
	if nr.Dport != nil {
		add("dport %d-%d", nr.Dport.Start, nr.Dport.End)
	}
	if nr.TunID != 0 {
		add("tun_id %d", nr.TunID)
	}
	if nr.Flow > 0 {
		add("realms %d", nr.Flow)
	}
	if nr.SuppressPrefixlen >= 0 {
		add("suppress_prefixlength %d", nr.SuppressPrefixlen)
	}
	if nr.SuppressIfgroup >= 0 {
		add("suppress_ifgroup %d", nr.SuppressIfgroup)
	}
	switch {
	case nr.Goto >= 0:
		add("goto %d", nr.Goto)
	case nr.Table == 0:
		add("no lookup (blackhole, unreachable, prohibit or nop)")
	}
	f.Detail = strings.Join(d, " ")
	return f
}

// foreignOf returns mpfleet's rules as ForeignRules with Protocol.
func foreignOf(rs []route.Rule) []route.ForeignRule {
	out := make([]route.ForeignRule, len(rs))
	for i, r := range rs {
		out[i] = route.ForeignRule{Rule: r, Protocol: route.Protocol}
	}
	return out
}

// toNetlinkRoute returns x as a unicast netlink route with protocol p.
func toNetlinkRoute(x route.Route, p route.Proto) *netlink.Route {
	x = x.Canonical()
	nr := &netlink.Route{
		LinkIndex: x.LinkIndex,
		Dst:       toIPNet(x.Dst),
		Table:     x.Table,
		Scope:     netlink.Scope(x.Scope),
		Protocol:  netlink.RouteProtocol(p),
		Type:      unix.RTN_UNICAST,
		Family:    int(x.Family()),
	}
	if nr.Family == unix.AF_INET6 {
		// The metric the kernel gives an IPv6 route added without one; set,
		// a delete matches it rather than a route of any metric.
		nr.Priority = ipv6DefaultMetric
	}
	if x.Gateway.IsValid() {
		nr.Gw = net.IP(x.Gateway.AsSlice())
	}
	if x.Src.IsValid() {
		nr.Src = net.IP(x.Src.AsSlice())
	}
	return nr
}

func fromNetlinkRoute(nr netlink.Route) route.Route {
	x := route.Route{Table: nr.Table, LinkIndex: nr.LinkIndex, Scope: route.Scope(nr.Scope)}
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

// fromNetlinkForeignRoute returns nr as a ForeignRoute, its metric relative
// to the kernel's default for the family (IPv6 routes added without one get
// 1024), so that Plain holds for a route as mpfleet adds it.
func fromNetlinkForeignRoute(nr netlink.Route) route.ForeignRoute {
	f := route.ForeignRoute{Route: fromNetlinkRoute(nr), Protocol: route.Proto(nr.Protocol), Type: route.Type(nr.Type),
		Metric: nr.Priority, Nexthops: len(nr.MultiPath)}
	if f.Family() == route.FamilyV6 && f.Metric == ipv6DefaultMetric {
		f.Metric = 0
	}
	return f
}

// ipv6DefaultMetric is the metric the kernel gives an IPv6 route added
// without one (IP6_RT_PRIO_USER).
const ipv6DefaultMetric = 1024

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

// prefixString prints a host prefix as a bare address, as ip (and package
// route) does.
func prefixString(p netip.Prefix) string {
	if p.Bits() == p.Addr().BitLen() {
		return p.Addr().String()
	}
	return p.String()
}
