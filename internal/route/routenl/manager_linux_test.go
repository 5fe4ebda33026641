package routenl

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/mpfleet/mpfleet/internal/nstest"
	"github.com/mpfleet/mpfleet/internal/route"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// lab is one throwaway namespace with veth pairs in it.
type lab struct {
	ns *nstest.NS
	h  *netlink.Handle // raw rtnetlink in the namespace, to set up and check behind the Manager's back
	m  *Manager
}

func newLab(t *testing.T) *lab {
	t.Helper()
	ns := nstest.New(t)
	h, err := netlink.NewHandleAt(ns.Handle, unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	m, err := Open(&Options{NetNS: int(ns.Handle)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return &lab{ns: ns, h: h, m: m}
}

// veth makes an up veth pair name/name+"p" with the given addresses on name
// (IPv6 ones without duplicate address detection) and returns name's index.
func (l *lab) veth(t *testing.T, name string, addrs ...string) int {
	t.Helper()
	v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: name + "p"}
	if err := l.h.LinkAdd(v); err != nil {
		t.Fatalf("add veth %s: %v", name, err)
	}
	for _, n := range []string{name, name + "p"} {
		link, err := l.h.LinkByName(n)
		if err != nil {
			t.Fatal(err)
		}
		if err := l.h.LinkSetUp(link); err != nil {
			t.Fatal(err)
		}
	}
	link, err := l.h.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		p := netip.MustParsePrefix(a)
		addr := &netlink.Addr{IPNet: toIPNet(p)}
		if p.Addr().Is6() {
			addr.Flags = unix.IFA_F_NODAD
		}
		if err := l.h.AddrAdd(link, addr); err != nil {
			t.Fatalf("add %s to %s: %v", a, name, err)
		}
	}
	return link.Attrs().Index
}

func (l *lab) mainRoute(t *testing.T, dst, gw string, link int) {
	t.Helper()
	r := &netlink.Route{LinkIndex: link, Dst: toIPNet(netip.MustParsePrefix(dst)), Gw: net.ParseIP(gw)}
	if err := l.h.RouteAdd(r); err != nil {
		t.Fatalf("add main route %s via %s: %v", dst, gw, err)
	}
}

// rawRules renders every rule of the namespace, owned or not.
func (l *lab) rawRules(t *testing.T) string {
	t.Helper()
	rs, err := l.h.RuleList(netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, r := range rs {
		b.WriteString(r.String() + "\n")
	}
	return b.String()
}

// render returns m's rules and routes as route.Render prints them.
func render(m *Manager) (string, error) {
	rules, err := m.Rules()
	if err != nil {
		return "", err
	}
	routes, err := m.Routes()
	if err != nil {
		return "", err
	}
	return route.Render(rules, routes), nil
}

func TestIntegrationOwnedRangeOnly(t *testing.T) {
	l := newLab(t)
	i1 := l.veth(t, "veth1", "198.18.1.2/24", "2001:db8:1::2/64")

	// Someone else's rules and table: a rule at a foreign priority into a
	// foreign table, a rule in our priority range pointing outside our tables,
	// a rule outside our priorities pointing into one of our tables, and a
	// route in a foreign table.
	foreign := []*netlink.Rule{
		{Priority: 100, Table: 100, Src: toIPNet(netip.MustParsePrefix("198.18.1.2/32"))},
		{Priority: 7150, Table: 100, Src: toIPNet(netip.MustParsePrefix("198.18.1.3/32"))},
		{Priority: 5000, Table: 7150, Src: toIPNet(netip.MustParsePrefix("198.18.1.4/32"))},
	}
	for _, fr := range foreign {
		nr := netlink.NewRule()
		nr.Priority, nr.Table, nr.Src = fr.Priority, fr.Table, fr.Src
		if err := l.h.RuleAdd(nr); err != nil {
			t.Fatalf("add foreign rule %v: %v", fr, err)
		}
	}
	fRoute := &netlink.Route{LinkIndex: i1, Table: 100, Dst: toIPNet(netip.MustParsePrefix("0.0.0.0/0")), Gw: net.ParseIP("198.18.1.1")}
	if err := l.h.RouteAdd(fRoute); err != nil {
		t.Fatal(err)
	}
	foreignRules := l.rawRules(t)

	if got, err := render(l.m); err != nil || got != "" {
		t.Fatalf("owned state with only foreign rules = %q, %v; want empty", got, err)
	}

	s4 := route.Source{Addr: netip.MustParsePrefix("198.18.1.2/24"), LinkIndex: i1, Gateway: netip.MustParseAddr("198.18.1.1"), Table: 7100, Priority: 7100}
	s6 := route.Source{Addr: netip.MustParsePrefix("2001:db8:1::2/64"), LinkIndex: i1, Gateway: netip.MustParseAddr("fe80::1"), Table: 7101, Priority: 7101}
	for _, s := range []route.Source{s4, s6} {
		if err := l.m.AddRule(s.Rule()); err != nil {
			t.Fatal(err)
		}
		for _, r := range s.Routes() {
			if err := l.m.AddRoute(r); err != nil {
				t.Fatal(err)
			}
		}
	}
	want := route.Render([]route.Rule{s4.Rule(), s6.Rule()}, append(s4.Routes(), s6.Routes()...))
	got, err := render(l.m)
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Fatalf("owned state:\n%s\nwant:\n%s", got, want)
	}

	// Duplicates are os.ErrExist, missing ones os.ErrNotExist, with the
	// operation in the message.
	err = l.m.AddRule(s4.Rule())
	if !errors.Is(err, os.ErrExist) || !strings.Contains(err.Error(), "add rule 7100") {
		t.Errorf("duplicate rule: %v, want os.ErrExist naming the op", err)
	}
	for _, r := range append(s4.Routes(), s6.Routes()...) {
		if err := l.m.AddRoute(r); !errors.Is(err, os.ErrExist) {
			t.Errorf("duplicate route %v: %v, want os.ErrExist", r, err)
		}
	}
	missing4 := route.Route{Table: 7102, Dst: netip.MustParsePrefix("198.18.9.0/24"), LinkIndex: i1, Scope: route.ScopeLink}
	missing6 := route.Route{Table: 7102, Dst: netip.MustParsePrefix("2001:db8:9::/64"), LinkIndex: i1}
	for _, r := range []route.Route{missing4, missing6} {
		if err := l.m.DeleteRoute(r); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("delete missing route %v: %v, want os.ErrNotExist", r, err)
		}
	}
	if err := l.m.DeleteRule(route.Rule{Priority: 7190, Src: netip.MustParsePrefix("198.18.9.9/32"), Table: 7190}); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("delete missing rule: %v, want os.ErrNotExist", err)
	}

	// Anything outside the range is refused and left untouched.
	outside := []struct {
		name string
		err  error
	}{
		{"delete foreign rule", l.m.DeleteRule(route.Rule{Priority: 100, Src: netip.MustParsePrefix("198.18.1.2/32"), Table: 100})},
		{"delete rule into foreign table", l.m.DeleteRule(route.Rule{Priority: 7150, Src: netip.MustParsePrefix("198.18.1.3/32"), Table: 100})},
		{"delete rule at foreign priority", l.m.DeleteRule(route.Rule{Priority: 5000, Src: netip.MustParsePrefix("198.18.1.4/32"), Table: 7150})},
		{"add rule at foreign priority", l.m.AddRule(route.Rule{Priority: 32000, Src: netip.MustParsePrefix("198.18.1.2/32"), Table: 7100})},
		{"delete foreign route", l.m.DeleteRoute(route.Route{Table: 100, Dst: netip.MustParsePrefix("0.0.0.0/0"), Gateway: netip.MustParseAddr("198.18.1.1"), LinkIndex: i1})},
		{"add route to main", l.m.AddRoute(route.Route{Table: 254, Dst: netip.MustParsePrefix("198.18.7.0/24"), LinkIndex: i1, Scope: route.ScopeLink})},
	}
	for _, o := range outside {
		if !errors.Is(o.err, route.ErrOutOfRange) {
			t.Errorf("%s: %v, want ErrOutOfRange", o.name, o.err)
		}
	}

	// Delete everything owned: the foreign rules and route survive.
	rules, err := l.m.Rules()
	if err != nil {
		t.Fatal(err)
	}
	routes, err := l.m.Routes()
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rules {
		if err := l.m.DeleteRule(r); err != nil {
			t.Fatal(err)
		}
	}
	for i := len(routes) - 1; i >= 0; i-- {
		if err := l.m.DeleteRoute(routes[i]); err != nil {
			t.Fatal(err)
		}
	}
	if got, err := render(l.m); err != nil || got != "" {
		t.Fatalf("after deleting all owned state: %q, %v; want empty", got, err)
	}
	if got := l.rawRules(t); got != foreignRules {
		t.Errorf("foreign rules changed:\n%s\nwant:\n%s", got, foreignRules)
	}
	frs, err := l.h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: 100}, netlink.RT_FILTER_TABLE)
	if err != nil || len(frs) != 1 || !frs[0].Gw.Equal(fRoute.Gw) {
		t.Errorf("foreign table 100 = %v, %v; want its default route", frs, err)
	}
}

func TestIntegrationSourceRoutingSteersTraffic(t *testing.T) {
	l := newLab(t)
	i1 := l.veth(t, "veth1", "198.18.1.2/24", "2001:db8:1::2/64")
	i2 := l.veth(t, "veth2", "198.18.2.2/24", "2001:db8:2::2/64")
	l.mainRoute(t, "0.0.0.0/0", "198.18.1.1", i1)
	l.mainRoute(t, "::/0", "2001:db8:1::1", i1)

	for _, tt := range []struct {
		src, gw, dst string
	}{
		{"198.18.2.2/24", "198.18.2.1", "198.19.0.1"},
		{"2001:db8:2::2/64", "2001:db8:2::1", "2001:db8:ff::1"},
	} {
		src := netip.MustParsePrefix(tt.src)
		get := func() []netlink.Route {
			rs, err := l.h.RouteGetWithOptions(net.ParseIP(tt.dst), &netlink.RouteGetOptions{SrcAddr: src.Addr().AsSlice()})
			if err != nil {
				t.Fatalf("route get %s from %s: %v", tt.dst, src.Addr(), err)
			}
			return rs
		}
		if rs := get(); rs[0].LinkIndex != i1 {
			t.Fatalf("before policy routing, %s from %s leaves by link %d, want %d (main default)", tt.dst, src.Addr(), rs[0].LinkIndex, i1)
		}
		s := route.Source{Addr: src, LinkIndex: i2, Gateway: netip.MustParseAddr(tt.gw), Table: 7120, Priority: 7120}
		if err := l.m.AddRule(s.Rule()); err != nil {
			t.Fatal(err)
		}
		for _, r := range s.Routes() {
			if err := l.m.AddRoute(r); err != nil {
				t.Fatal(err)
			}
		}
		rs := get()
		if rs[0].LinkIndex != i2 || !rs[0].Gw.Equal(net.ParseIP(tt.gw)) {
			t.Fatalf("with policy routing, %s from %s = dev %d via %v, want dev %d via %s", tt.dst, src.Addr(), rs[0].LinkIndex, rs[0].Gw, i2, tt.gw)
		}
	}
}

func TestIntegrationOpenCurrentNamespace(t *testing.T) {
	l := newLab(t)
	idx := l.veth(t, "veth1", "198.18.1.2/24")
	// Opened from inside the namespace, with no NetNS, a Manager works there.
	err := l.ns.Do(func() error {
		m, err := Open(&Options{Range: route.Range{TableMin: 300, TableMax: 301, PriorityMin: 300, PriorityMax: 301}})
		if err != nil {
			return err
		}
		defer m.Close()
		names, err := m.LinkNames()
		if err != nil {
			return err
		}
		if names[idx] != "veth1" {
			t.Errorf("LinkNames()[%d] = %q, want veth1", idx, names[idx])
		}
		if err := m.AddRule(route.Rule{Priority: 7100, Src: netip.MustParsePrefix("198.18.1.2/32"), Table: 300}); !errors.Is(err, route.ErrOutOfRange) {
			t.Errorf("rule outside a custom range: %v, want ErrOutOfRange", err)
		}
		return m.AddRule(route.Rule{Priority: 301, Src: netip.MustParsePrefix("198.18.1.2/32"), Table: 300})
	})
	if err != nil {
		t.Fatal(err)
	}
	// The default-range Manager does not see the rule of the custom range.
	if got, err := render(l.m); err != nil || got != "" {
		t.Fatalf("default range sees %q, %v; want nothing", got, err)
	}
}

// rawProtocols renders, for every rule whose priority is in r and every route
// in r's tables, "rule PRIO proto N" and "route TABLE DST proto N", straight
// from the kernel.
func (l *lab) rawProtocols(t *testing.T, r route.Range) []string {
	t.Helper()
	rules, err := l.h.RuleList(netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, nr := range rules {
		if r.HasPriority(nr.Priority) || r.HasTable(nr.Table) {
			out = append(out, fmt.Sprintf("rule %d from %v lookup %d proto %d", nr.Priority, nr.Src, nr.Table, nr.Protocol))
		}
	}
	routes, err := l.h.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
	if err != nil {
		t.Fatal(err)
	}
	for _, nr := range routes {
		if r.HasTable(nr.Table) {
			out = append(out, fmt.Sprintf("route table %d %v type %d proto %d", nr.Table, nr.Dst, nr.Type, int(nr.Protocol)))
		}
	}
	slices.Sort(out)
	return out
}

// TestIntegrationProtocol: every rule and route mpfleet adds carries
// Protocol, as a raw dump shows.
func TestIntegrationProtocol(t *testing.T) {
	l := newLab(t)
	i1 := l.veth(t, "veth1", "198.18.1.2/24", "2001:db8:1::2/64")
	s4 := route.Source{Addr: netip.MustParsePrefix("198.18.1.2/24"), LinkIndex: i1, Gateway: netip.MustParseAddr("198.18.1.1"), Table: 7100, Priority: 7100}
	s6 := route.Source{Addr: netip.MustParsePrefix("2001:db8:1::2/64"), LinkIndex: i1, Gateway: netip.MustParseAddr("fe80::1"), Table: 7101, Priority: 7101}
	for _, s := range []route.Source{s4, s6} {
		for _, r := range s.Routes() {
			if err := l.m.AddRoute(r); err != nil {
				t.Fatal(err)
			}
		}
		if err := l.m.AddRule(s.Rule()); err != nil {
			t.Fatal(err)
		}
	}
	raw := l.rawProtocols(t, route.DefaultRange)
	if len(raw) != 6 {
		t.Fatalf("raw dump of the range: %q, want 2 rules and 4 routes", raw)
	}
	for _, line := range raw {
		if !strings.HasSuffix(line, " proto 173") {
			t.Errorf("%s: does not carry mpfleet's protocol 173", line)
		}
	}
	d, err := l.m.Dump()
	if err != nil {
		t.Fatal(err)
	}
	if len(d.ForeignRules)+len(d.ForeignRoutes) != 0 || len(d.Rules) != 2 || len(d.Routes) != 4 {
		t.Errorf("Dump = %+v, want 2 rules and 4 routes of mpfleet's, nothing foreign", d)
	}
}

// handRule adds a rule as `ip rule add` does (protocol unspec unless p).
func (l *lab) handRule(t *testing.T, prio int, src string, table int, p route.Proto, mutate ...func(*netlink.Rule)) {
	t.Helper()
	nr := netlink.NewRule()
	nr.Priority, nr.Table, nr.Protocol = prio, table, uint8(p)
	if src != "" {
		nr.Src = toIPNet(netip.MustParsePrefix(src))
	}
	for _, m := range mutate {
		m(nr)
	}
	if err := l.h.RuleAdd(nr); err != nil {
		t.Fatalf("add hand-made rule %d: %v", prio, err)
	}
}

// handRoute adds a route as `ip route add` does (protocol boot unless p).
func (l *lab) handRoute(t *testing.T, nr *netlink.Route) {
	t.Helper()
	if nr.Protocol == 0 {
		nr.Protocol = unix.RTPROT_BOOT
	}
	if err := l.h.RouteAdd(nr); err != nil {
		t.Fatalf("add hand-made route %v: %v", nr, err)
	}
}

// TestIntegrationForeignEntries: rules and routes inside the range that
// mpfleet did not make are listed as foreign, never as its own, and neither
// deletes nor adds touch them.
func TestIntegrationForeignEntries(t *testing.T) {
	l := newLab(t)
	i1 := l.veth(t, "veth1", "198.18.1.2/24", "2001:db8:1::2/64")
	l.handRule(t, 7150, "198.18.1.3/32", 100, route.ProtoUnspec)                        // in our priorities, someone's table
	l.handRule(t, 5000, "198.18.1.4/32", 7150, route.ProtoBoot)                         // someone's priority, our table
	l.handRule(t, 7151, "", 7151, route.Protocol, func(r *netlink.Rule) { r.Mark = 1 }) // our protocol, not our shape
	l.handRoute(t, &netlink.Route{LinkIndex: i1, Table: 7150, Dst: toIPNet(netip.MustParsePrefix("0.0.0.0/0")), Gw: net.ParseIP("198.18.1.1")})
	l.handRoute(t, &netlink.Route{Table: 7150, Dst: toIPNet(netip.MustParsePrefix("198.18.9.0/24")), Type: unix.RTN_UNREACHABLE})
	l.handRoute(t, &netlink.Route{LinkIndex: i1, Table: 7152, Dst: toIPNet(netip.MustParsePrefix("2001:db8:9::/64")), Priority: 100, Protocol: netlink.RouteProtocol(route.Protocol)})
	before := l.rawProtocols(t, route.DefaultRange)

	d, err := l.m.Dump()
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Rules) != 0 || len(d.Routes) != 0 {
		t.Fatalf("mpfleet's own = %v %v, want none", d.Rules, d.Routes)
	}
	var got []string
	for _, f := range d.ForeignRules {
		got = append(got, "rule "+f.String())
	}
	for _, f := range d.ForeignRoutes {
		got = append(got, "route "+f.String())
	}
	want := []string{
		"rule 5000: from 198.18.1.4 lookup 7150 proto boot",
		"rule 7150: from 198.18.1.3 lookup 100 proto unspec",
		"rule 7151: from all fwmark 0x1 lookup 7151 proto mpfleet",
		"route unreachable 198.18.9.0/24 table 7150 proto boot",
		fmt.Sprintf("route default via 198.18.1.1 dev if%d table 7150 proto boot", i1),
		fmt.Sprintf("route 2001:db8:9::/64 dev if%d table 7152 proto mpfleet metric 100", i1),
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("foreign entries (-want +got):\n%s", diff)
	}

	// Deleting what looks like them finds nothing of mpfleet's.
	for _, f := range d.ForeignRules {
		if !route.DefaultRange.OwnsRule(f.Rule) || !f.Src.IsValid() {
			continue
		}
		if err := l.m.DeleteRule(f.Rule); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("delete %v: %v, want os.ErrNotExist", f, err)
		}
	}
	for _, f := range d.ForeignRoutes {
		if f.LinkIndex == 0 {
			continue
		}
		if err := l.m.DeleteRoute(f.Route); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("delete %v: %v, want os.ErrNotExist", f, err)
		}
	}
	// An add where a foreign route holds the destination fails; nothing is
	// overwritten.
	other := route.Route{Table: 7150, Dst: netip.MustParsePrefix("0.0.0.0/0"), Gateway: netip.MustParseAddr("198.18.1.254"), LinkIndex: i1}
	if err := l.m.AddRoute(other); !errors.Is(err, os.ErrExist) {
		t.Errorf("add over a foreign route: %v, want os.ErrExist", err)
	}
	// Neither may the protocol of a foreign entry be changed.
	if err := l.m.SetRouteProtocol(d.ForeignRoutes[0].Route, route.ProtoBoot, route.Protocol); !errors.Is(err, route.ErrInvalid) {
		t.Errorf("adopt a hand-made (proto boot) route: %v, want ErrInvalid", err)
	}
	if got := l.rawProtocols(t, route.DefaultRange); !slices.Equal(got, before) {
		t.Errorf("the range changed:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(before, "\n"))
	}
}

// TestIntegrationAdoptLegacy: the rule and routes an agent made before
// Protocol are re-made with it, without a moment when the source is not
// routed, and given back by the undo.
func TestIntegrationAdoptLegacy(t *testing.T) {
	l := newLab(t)
	i1 := l.veth(t, "veth1", "198.18.1.2/24", "2001:db8:1::2/64")
	s4 := route.Source{Addr: netip.MustParsePrefix("198.18.1.2/24"), LinkIndex: i1, Gateway: netip.MustParseAddr("198.18.1.1"), Table: 7160, Priority: 7160}
	s6 := route.Source{Addr: netip.MustParsePrefix("2001:db8:1::2/64"), LinkIndex: i1, Gateway: netip.MustParseAddr("2001:db8:1::1"), Table: 7161, Priority: 7161}
	for _, s := range []route.Source{s4, s6} {
		// As agents before Protocol made them: routes proto static, the rule
		// without a protocol.
		for _, r := range s.Routes() {
			l.handRoute(t, toNetlinkRoute(r, route.ProtoStatic))
		}
		l.handRule(t, s.Priority, s.Rule().Src.String(), s.Table, route.ProtoUnspec)
	}
	legacy := l.rawProtocols(t, route.DefaultRange)
	d, err := l.m.Dump()
	if err != nil || len(d.Rules)+len(d.Routes) != 0 || len(d.ForeignRules) != 2 || len(d.ForeignRoutes) != 4 {
		t.Fatalf("Dump = %+v, %v; want the legacy entries as foreign", d, err)
	}

	for _, s := range []route.Source{s4, s6} {
		if err := l.m.SetRuleProtocol(s.Rule(), route.LegacyRuleProtocol, route.Protocol); err != nil {
			t.Fatal(err)
		}
		for _, r := range s.Routes() {
			if err := l.m.SetRouteProtocol(r, route.LegacyRouteProtocol, route.Protocol); err != nil {
				t.Fatal(err)
			}
		}
	}
	d, err = l.m.Dump()
	if err != nil {
		t.Fatal(err)
	}
	want := route.Render([]route.Rule{s4.Rule(), s6.Rule()}, append(s4.Routes(), s6.Routes()...))
	if got := route.Render(d.Rules, d.Routes); got != want || len(d.ForeignRules)+len(d.ForeignRoutes) != 0 {
		t.Fatalf("after adoption: own\n%s\nforeign %v %v\nwant own\n%s", got, d.ForeignRules, d.ForeignRoutes, want)
	}
	raw := l.rawProtocols(t, route.DefaultRange)
	if len(raw) != 6 {
		t.Fatalf("raw after adoption: %q, want one of each", raw)
	}
	for _, line := range raw {
		if !strings.HasSuffix(line, " proto 173") {
			t.Errorf("%s: not adopted", line)
		}
	}
	// Adopting again: there is nothing legacy left.
	if err := l.m.SetRuleProtocol(s4.Rule(), route.LegacyRuleProtocol, route.Protocol); !errors.Is(err, os.ErrExist) {
		t.Errorf("adopt twice: %v, want os.ErrExist", err)
	}

	// The undo gives them back as they were.
	for _, s := range []route.Source{s4, s6} {
		if err := l.m.SetRuleProtocol(s.Rule(), route.Protocol, route.LegacyRuleProtocol); err != nil {
			t.Fatal(err)
		}
		for _, r := range s.Routes() {
			if err := l.m.SetRouteProtocol(r, route.Protocol, route.LegacyRouteProtocol); err != nil {
				t.Fatal(err)
			}
		}
	}
	if got := l.rawProtocols(t, route.DefaultRange); !slices.Equal(got, legacy) {
		t.Errorf("after the undo:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(legacy, "\n"))
	}

	// Only an exact match is adopted: not a route that differs, not a rule
	// with a look-alike beside it.
	moved := s4.Routes()[1]
	moved.Gateway = netip.MustParseAddr("198.18.1.254")
	if err := l.m.SetRouteProtocol(moved, route.LegacyRouteProtocol, route.Protocol); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("adopt a route that differs: %v, want os.ErrNotExist", err)
	}
	l.handRule(t, s4.Priority, s4.Rule().Src.String(), s4.Table, route.ProtoBoot, func(r *netlink.Rule) { r.Mark = 7 })
	if err := l.m.SetRuleProtocol(s4.Rule(), route.LegacyRuleProtocol, route.Protocol); !errors.Is(err, route.ErrConflict) {
		t.Errorf("adopt a rule with a look-alike: %v, want ErrConflict", err)
	}
	if err := l.m.SetRuleProtocol(s6.Rule(), route.ProtoBoot, route.Protocol); !errors.Is(err, route.ErrInvalid) {
		t.Errorf("adopt from proto boot: %v, want ErrInvalid", err)
	}
}
