package route

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/mpfleet/mpfleet/internal/nstest"
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

	if got, err := l.m.Render(); err != nil || got != "" {
		t.Fatalf("owned state with only foreign rules = %q, %v; want empty", got, err)
	}

	s4 := Source{Addr: netip.MustParsePrefix("198.18.1.2/24"), LinkIndex: i1, Gateway: netip.MustParseAddr("198.18.1.1"), Table: 7100, Priority: 7100}
	s6 := Source{Addr: netip.MustParsePrefix("2001:db8:1::2/64"), LinkIndex: i1, Gateway: netip.MustParseAddr("fe80::1"), Table: 7101, Priority: 7101}
	for _, s := range []Source{s4, s6} {
		if err := l.m.AddRule(s.Rule()); err != nil {
			t.Fatal(err)
		}
		for _, r := range s.Routes() {
			if err := l.m.AddRoute(r); err != nil {
				t.Fatal(err)
			}
		}
	}
	want := Render([]Rule{s4.Rule(), s6.Rule()}, append(s4.Routes(), s6.Routes()...))
	got, err := l.m.Render()
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
	missing4 := Route{Table: 7102, Dst: netip.MustParsePrefix("198.18.9.0/24"), LinkIndex: i1, Scope: ScopeLink}
	missing6 := Route{Table: 7102, Dst: netip.MustParsePrefix("2001:db8:9::/64"), LinkIndex: i1}
	for _, r := range []Route{missing4, missing6} {
		if err := l.m.DeleteRoute(r); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("delete missing route %v: %v, want os.ErrNotExist", r, err)
		}
	}
	if err := l.m.DeleteRule(Rule{Priority: 7190, Src: netip.MustParsePrefix("198.18.9.9/32"), Table: 7190}); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("delete missing rule: %v, want os.ErrNotExist", err)
	}

	// Anything outside the range is refused and left untouched.
	outside := []struct {
		name string
		err  error
	}{
		{"delete foreign rule", l.m.DeleteRule(Rule{Priority: 100, Src: netip.MustParsePrefix("198.18.1.2/32"), Table: 100})},
		{"delete rule into foreign table", l.m.DeleteRule(Rule{Priority: 7150, Src: netip.MustParsePrefix("198.18.1.3/32"), Table: 100})},
		{"delete rule at foreign priority", l.m.DeleteRule(Rule{Priority: 5000, Src: netip.MustParsePrefix("198.18.1.4/32"), Table: 7150})},
		{"add rule at foreign priority", l.m.AddRule(Rule{Priority: 32000, Src: netip.MustParsePrefix("198.18.1.2/32"), Table: 7100})},
		{"delete foreign route", l.m.DeleteRoute(Route{Table: 100, Dst: netip.MustParsePrefix("0.0.0.0/0"), Gateway: netip.MustParseAddr("198.18.1.1"), LinkIndex: i1})},
		{"add route to main", l.m.AddRoute(Route{Table: 254, Dst: netip.MustParsePrefix("198.18.7.0/24"), LinkIndex: i1, Scope: ScopeLink})},
	}
	for _, o := range outside {
		if !errors.Is(o.err, ErrOutOfRange) {
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
	if got, err := l.m.Render(); err != nil || got != "" {
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
		s := Source{Addr: src, LinkIndex: i2, Gateway: netip.MustParseAddr(tt.gw), Table: 7120, Priority: 7120}
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

func TestIntegrationGateway(t *testing.T) {
	l := newLab(t)
	i1 := l.veth(t, "veth1", "198.18.1.2/24", "2001:db8:1::2/64")
	i2 := l.veth(t, "veth2", "198.18.2.2/24", "2001:db8:2::2/64")
	i3 := l.veth(t, "veth3", "198.18.3.2/24", "2001:db8:3::2/64")
	// veth1: default routes (the v4 one with a second, less specific route
	// too); veth2: only routes to some prefix through a gateway; veth3: only
	// its connected routes.
	l.mainRoute(t, "0.0.0.0/0", "198.18.1.1", i1)
	l.mainRoute(t, "198.19.0.0/16", "198.18.1.254", i1)
	l.mainRoute(t, "::/0", "fe80::1", i1)
	l.mainRoute(t, "198.19.128.0/24", "198.18.2.1", i2)
	l.mainRoute(t, "2001:db8:ff::/48", "2001:db8:2::1", i2)

	tests := []struct {
		link int
		fam  Family
		want string // "" for none
	}{
		{i1, FamilyV4, "198.18.1.1"},
		{i1, FamilyV6, "fe80::1"},
		{i2, FamilyV4, "198.18.2.1"},
		{i2, FamilyV6, "2001:db8:2::1"},
		{i3, FamilyV4, ""},
		{i3, FamilyV6, ""},
	}
	for _, tt := range tests {
		got, err := l.m.Gateway(tt.link, tt.fam)
		if tt.want == "" {
			if !errors.Is(err, os.ErrNotExist) {
				t.Errorf("Gateway(%d, %v) = %v, %v; want os.ErrNotExist", tt.link, tt.fam, got, err)
			}
			continue
		}
		if err != nil || got != netip.MustParseAddr(tt.want) {
			t.Errorf("Gateway(%d, %v) = %v, %v; want %s", tt.link, tt.fam, got, err, tt.want)
		}
	}
}

func TestIntegrationOpenCurrentNamespace(t *testing.T) {
	l := newLab(t)
	idx := l.veth(t, "veth1", "198.18.1.2/24")
	// Opened from inside the namespace, with no NetNS, a Manager works there.
	err := l.ns.Do(func() error {
		m, err := Open(&Options{Range: Range{TableMin: 300, TableMax: 301, PriorityMin: 300, PriorityMax: 301}})
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
		if err := m.AddRule(Rule{Priority: 7100, Src: netip.MustParsePrefix("198.18.1.2/32"), Table: 300}); !errors.Is(err, ErrOutOfRange) {
			t.Errorf("rule outside a custom range: %v, want ErrOutOfRange", err)
		}
		return m.AddRule(Rule{Priority: 301, Src: netip.MustParsePrefix("198.18.1.2/32"), Table: 300})
	})
	if err != nil {
		t.Fatal(err)
	}
	// The default-range Manager does not see the rule of the custom range.
	if got, err := l.m.Render(); err != nil || got != "" {
		t.Fatalf("default range sees %q, %v; want nothing", got, err)
	}
}

func TestIntegrationDeletesHandMadeOwnedRoutes(t *testing.T) {
	l := newLab(t)
	i1 := l.veth(t, "veth1", "198.18.1.2/24", "2001:db8:1::2/64")
	// Routes in an owned table added as `ip route add … table 7100` does
	// (proto boot), in both families.
	for _, s := range []Source{
		{Addr: netip.MustParsePrefix("198.18.1.2/24"), LinkIndex: i1, Gateway: netip.MustParseAddr("198.18.1.1"), Table: 7100},
		{Addr: netip.MustParsePrefix("2001:db8:1::2/64"), LinkIndex: i1, Gateway: netip.MustParseAddr("2001:db8:1::1"), Table: 7100},
	} {
		for _, r := range s.Routes() {
			nr := toNetlinkRoute(r)
			nr.Protocol = unix.RTPROT_BOOT
			if err := l.h.RouteAdd(nr); err != nil {
				t.Fatal(err)
			}
		}
	}
	routes, err := l.m.Routes()
	if err != nil || len(routes) != 4 {
		t.Fatalf("Routes() = %v, %v; want the 4 hand-made ones", routes, err)
	}
	for i := len(routes) - 1; i >= 0; i-- {
		if err := l.m.DeleteRoute(routes[i]); err != nil {
			t.Errorf("delete hand-made %v: %v", routes[i], err)
		}
	}
	if got, err := l.m.Render(); err != nil || got != "" {
		t.Fatalf("left: %q, %v", got, err)
	}
}
