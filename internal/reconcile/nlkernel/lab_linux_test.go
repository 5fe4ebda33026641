package nlkernel

import (
	"context"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mpfleet/mpfleet/internal/nstest"
	"github.com/mpfleet/mpfleet/internal/reconcile"
	"github.com/mpfleet/mpfleet/internal/reconcile/fakekernel"
	"github.com/mpfleet/mpfleet/internal/reconcile/kerneltest"
	"github.com/mpfleet/mpfleet/internal/route"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// lab is a throwaway namespace with veth links, a Kernel on it and a raw
// rtnetlink handle to act and look behind the Kernel's back. It is the real
// kerneltest.Namespace.
type lab struct {
	ns    *nstest.NS
	h     *netlink.Handle
	k     *Kernel
	links []kerneltest.Link
}

// newLab makes n veth pairs "vethN"/"vethNp" in a new namespace; link N (from
// 0) gets kerneltest.Addrs(N) (IPv6 without DAD) and main-table routes to
// 198.19.N.0/24 and 2001:db8:ff0N::/64 through the subnet's gateway. Outside
// the owned range someone has a rule and a table, which no reconcile may
// touch.
func newLab(t testing.TB, n int) *lab {
	t.Helper()
	ns := nstest.New(t)
	h, err := netlink.NewHandleAt(ns.Handle, unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	// No duplicate address detection on the links to come: their link-local
	// addresses, and the local routes that come with them, are there at
	// once rather than a second or two later, behind the snapshots' back.
	if err := ns.Do(func() error {
		return os.WriteFile("/proc/sys/net/ipv6/conf/default/accept_dad", []byte("0"), 0)
	}); err != nil {
		t.Fatal(err)
	}
	l := &lab{ns: ns, h: h}
	for i := range n {
		name := fmt.Sprintf("veth%d", i+1)
		if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: name + "p"}); err != nil {
			t.Fatalf("add veth %s: %v", name, err)
		}
		var link netlink.Link
		for _, nm := range []string{name + "p", name} {
			if link, err = h.LinkByName(nm); err != nil {
				t.Fatal(err)
			}
			if err := h.LinkSetUp(link); err != nil {
				t.Fatal(err)
			}
		}
		ll := kerneltest.Link{Name: name, Index: link.Attrs().Index}
		ll.V4, ll.V6 = kerneltest.Addrs(i)
		for _, p := range []netip.Prefix{ll.V4, ll.V6} {
			a := &netlink.Addr{IPNet: toIPNet(p)}
			if p.Addr().Is6() {
				a.Flags = unix.IFA_F_NODAD
			}
			if err := h.AddrAdd(link, a); err != nil {
				t.Fatalf("add %v to %s: %v", p, name, err)
			}
		}
		for _, r := range []struct {
			dst string
			gw  netip.Addr
		}{
			{fmt.Sprintf("198.19.%d.0/24", i), kerneltest.Gateway(ll.V4)},
			{fmt.Sprintf("2001:db8:ff0%d::/64", i), kerneltest.Gateway(ll.V6)},
		} {
			if err := h.RouteAdd(&netlink.Route{LinkIndex: ll.Index, Dst: toIPNet(netip.MustParsePrefix(r.dst)), Gw: r.gw.AsSlice()}); err != nil {
				t.Fatalf("main route %s via %s: %v", r.dst, r.gw, err)
			}
		}
		l.links = append(l.links, ll)
	}
	if n > 0 {
		// Someone else's rule and table, outside the range.
		rule := netlink.NewRule()
		rule.Priority, rule.Table = 100, 100
		rule.Src = toIPNet(netip.MustParsePrefix("198.18.10.2/32"))
		if err := h.RuleAdd(rule); err != nil {
			t.Fatal(err)
		}
		dflt := &netlink.Route{Table: 100, Dst: toIPNet(netip.MustParsePrefix("0.0.0.0/0")), LinkIndex: l.links[0].Index, Gw: kerneltest.Gateway(l.links[0].V4).AsSlice()}
		if err := h.RouteAdd(dflt); err != nil {
			t.Fatal(err)
		}
	}
	l.settle(t)
	k, err := Open(&Options{NetNS: int(ns.Handle)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { k.Close() })
	l.k = k
	return l
}

// settle waits until the kernel has finished bringing the links up: carrier
// and IPv6 address configuration arrive asynchronously (linkwatch batches
// carrier events for up to a second), adding routes behind the test's back,
// which would spoil snapshot comparisons.
func (l *lab) settle(t testing.TB) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	prev := ""
	var why string
	for time.Now().Before(deadline) {
		ready := true
		links, err := l.h.LinkList()
		if err != nil {
			t.Fatal(err)
		}
		for _, ln := range links {
			if ln.Attrs().Name != "lo" && ln.Attrs().OperState != netlink.OperUp {
				ready, why = false, ln.Attrs().Name+" is "+ln.Attrs().OperState.String()
			}
		}
		for _, ll := range l.links {
			local, err := l.h.RouteListFiltered(netlink.FAMILY_V6, &netlink.Route{Table: unix.RT_TABLE_LOCAL}, netlink.RT_FILTER_TABLE)
			if err != nil {
				t.Fatal(err)
			}
			found := false
			for _, r := range local {
				if r.Dst != nil && r.Dst.IP.Equal(ll.V6.Addr().AsSlice()) {
					found = true
				}
			}
			if !found {
				ready, why = false, "no local route for "+ll.V6.Addr().String()
			}
		}
		routes, err := l.h.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
		if err != nil {
			t.Fatal(err)
		}
		now := fmt.Sprint(routes)
		if ready && now == prev {
			return
		}
		if ready {
			why = "routes still changing"
		}
		prev = now
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("lab links did not settle in 10s: %s", why)
}

func (l *lab) Kernel() reconcile.Kernel { return l.k }
func (l *lab) Links() []kerneltest.Link { return l.links }

// Load adds s's endpoints through mptcp_pm and its foreign rules and routes
// through rtnetlink, as `ip` would.
func (l *lab) Load(t testing.TB, s reconcile.State) {
	t.Helper()
	if s.Enabled != nil || s.Limits != nil || len(s.Sysctls)+len(s.Rules)+len(s.Routes) > 0 {
		t.Fatalf("lab: Load takes endpoints and foreign entries only, not %v", s)
	}
	for _, e := range s.Endpoints {
		if err := l.k.mp.AddEndpoint(e); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range s.Foreign {
		if !f.Plain() {
			t.Fatalf("lab: cannot load rule %v", f)
		}
		nr := netlink.NewRule()
		nr.Priority, nr.Table, nr.Family = f.Priority, f.Table, int(f.Canonical().Family)
		nr.Src, nr.Protocol = toIPNet(f.Src), uint8(f.Protocol)
		if err := l.h.RuleAdd(nr); err != nil {
			t.Fatalf("add rule %v: %v", f, err)
		}
	}
	for _, f := range s.ForeignRoutes {
		if f.Nexthops > 0 {
			t.Fatalf("lab: cannot load route %v", f)
		}
		nr := &netlink.Route{LinkIndex: f.LinkIndex, Table: f.Table, Dst: toIPNet(f.Dst), Scope: netlink.Scope(f.Scope),
			Protocol: netlink.RouteProtocol(f.Protocol), Type: int(f.Type), Priority: f.Metric}
		if f.Gateway.IsValid() {
			nr.Gw = f.Gateway.AsSlice()
		}
		if f.Src.IsValid() {
			nr.Src = f.Src.AsSlice()
		}
		if err := l.h.RouteAdd(nr); err != nil {
			t.Fatalf("add route %v: %v", f, err)
		}
	}
}

// labSysctls names every sysctl, for full snapshots.
var labSysctls = func() reconcile.HostConfig {
	c := reconcile.HostConfig{Sysctls: maps.Clone(fakekernel.DefaultSysctls)}
	delete(c.Sysctls, reconcile.SysctlEnabled)
	return c
}()

// Snapshot renders everything the namespace holds that a reconcile could
// touch: the full State (IDs included, every known sysctl) and every rule
// and route of every table, owned or not.
func (l *lab) Snapshot(t testing.TB) string {
	t.Helper()
	s, err := l.k.Read(context.Background(), labSysctls)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	b.WriteString(s.String())
	b.WriteString(l.raw(t, func(int, int) bool { return true }))
	return b.String()
}

// Outside renders every rule and route outside the default range.
func (l *lab) Outside(t testing.TB) string {
	t.Helper()
	r := route.DefaultRange
	return l.raw(t, func(prio, table int) bool { return !r.HasPriority(prio) && !r.HasTable(table) })
}

// raw renders the rules and routes for which keep(priority, table) holds
// (priority -1 for a route), from a raw dump.
func (l *lab) raw(t testing.TB, keep func(prio, table int) bool) string {
	t.Helper()
	var b strings.Builder
	rules, err := l.h.RuleList(netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rules {
		if keep(r.Priority, r.Table) {
			fmt.Fprintf(&b, "raw %v\n", r)
		}
	}
	routes, err := l.h.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range routes {
		if keep(-1, r.Table) {
			fmt.Fprintf(&b, "raw %v scope %d proto %d type %d metric %d\n", r, r.Scope, r.Protocol, r.Type, r.Priority)
		}
	}
	return b.String()
}

// InRange renders every rule whose priority or table is in the default range
// and every route in its tables, with their protocols, from a raw dump.
func (l *lab) InRange(t testing.TB) []string {
	t.Helper()
	r := route.DefaultRange
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
			out = append(out, fmt.Sprintf("route %v table %d dev %d gw %v type %d proto %d", nr.Dst, nr.Table, nr.LinkIndex, nr.Gw, nr.Type, int(nr.Protocol)))
		}
	}
	slices.Sort(out)
	return out
}

func toIPNet(p netip.Prefix) *net.IPNet {
	if !p.IsValid() {
		return nil
	}
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// TestIntegrationConformance runs the Kernel suite against the real kernel,
// each scenario in a namespace of its own (root; fakekernel runs the same).
func TestIntegrationConformance(t *testing.T) {
	kerneltest.Run(t, func(t *testing.T, n int) kerneltest.Namespace { return newLab(t, n) })
}
