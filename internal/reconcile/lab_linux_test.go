package reconcile

import (
	"context"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/mpfleet/mpfleet/internal/nstest"
	"github.com/mpfleet/mpfleet/internal/route"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// lab is a throwaway namespace with veth links, a NetlinkKernel on it and a
// raw rtnetlink handle to look behind the kernel's back.
type lab struct {
	ns    *nstest.NS
	h     *netlink.Handle
	k     *NetlinkKernel
	links []labLink
}

// labLink is one veth end with an IPv4 and an IPv6 address and, in the main
// table, a route through its gateway, as an operator's host would have.
type labLink struct {
	name   string
	index  int
	v4, v6 netip.Prefix
}

// newLab makes n veth pairs "<prefix>N"/"<prefix>Np"; link N gets
// 198.18.(10+N).2/24 and 2001:db8:(10+N)::2/64 (no DAD) and main-table
// routes to 198.19.N.0/24 and 2001:db8:ff0N::/64 through .1 / ::1.
func newLab(t testing.TB, n int) *lab {
	t.Helper()
	ns := nstest.New(t)
	h, err := netlink.NewHandleAt(ns.Handle, unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
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
		ll := labLink{name: name, index: link.Attrs().Index,
			v4: netip.MustParsePrefix(fmt.Sprintf("198.18.%d.2/24", 10+i)),
			v6: netip.MustParsePrefix(fmt.Sprintf("2001:db8:%d::2/64", 10+i))}
		for _, p := range []netip.Prefix{ll.v4, ll.v6} {
			a := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}}
			if p.Addr().Is6() {
				a.Flags = unix.IFA_F_NODAD
			}
			if err := h.AddrAdd(link, a); err != nil {
				t.Fatalf("add %v to %s: %v", p, name, err)
			}
		}
		for _, r := range []struct{ dst, gw string }{
			{fmt.Sprintf("198.19.%d.0/24", i), gw(ll.v4).String()},
			{fmt.Sprintf("2001:db8:ff0%d::/64", i), gw(ll.v6).String()},
		} {
			_, dst, _ := net.ParseCIDR(r.dst)
			if err := h.RouteAdd(&netlink.Route{LinkIndex: ll.index, Dst: dst, Gw: net.ParseIP(r.gw)}); err != nil {
				t.Fatalf("main route %s via %s: %v", r.dst, r.gw, err)
			}
		}
		l.links = append(l.links, ll)
	}
	l.settle(t)
	k, err := OpenKernel(&KernelOptions{NetNS: int(ns.Handle)})
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
				if r.Dst != nil && r.Dst.IP.Equal(ll.v6.Addr().AsSlice()) {
					found = true
				}
			}
			if !found {
				ready, why = false, "no local route for "+ll.v6.Addr().String()
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

// source returns the policy routing of link i's address of the given
// family, its gateway found in the main table, in table/priority 7100+n.
func (l *lab) source(t testing.TB, i int, v6 bool, n int) route.Source {
	t.Helper()
	ll := l.links[i]
	p, fam := ll.v4, route.FamilyV4
	if v6 {
		p, fam = ll.v6, route.FamilyV6
	}
	g, err := l.k.rt.Gateway(ll.index, fam)
	if err != nil {
		t.Fatal(err)
	}
	return route.Source{Addr: p, LinkIndex: ll.index, Gateway: g, Table: 7100 + n, Priority: 7100 + n}
}

// labSysctls names every sysctl, for full snapshots.
var labSysctls = func() HostConfig {
	c := HostConfig{Sysctls: maps.Clone(FakeDefaultSysctls)}
	delete(c.Sysctls, SysctlEnabled)
	return c
}()

// snapshot renders everything the namespace holds that a reconcile could
// touch: the full State (IDs included, every known sysctl) and every rule
// and route of every table, owned or not.
func (l *lab) snapshot(t testing.TB) string {
	t.Helper()
	s, err := l.k.Read(context.Background(), labSysctls)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	b.WriteString(s.String())
	rules, err := l.h.RuleList(netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rules {
		fmt.Fprintf(&b, "raw %v\n", r)
	}
	routes, err := l.h.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range routes {
		fmt.Fprintf(&b, "raw %v scope %d proto %d type %d metric %d\n", r, r.Scope, r.Protocol, r.Type, r.Priority)
	}
	return b.String()
}

// reconcile reads, plans and applies desired; it returns the plan.
func (l *lab) reconcile(t testing.TB, k Kernel, desired HostConfig) (Ops, error) {
	t.Helper()
	ctx := context.Background()
	actual, err := k.Read(ctx, desired)
	if err != nil {
		t.Fatal(err)
	}
	ops, err := Plan(desired, actual)
	if err != nil {
		t.Fatal(err)
	}
	return ops, Apply(ctx, k, ops)
}

// failingKernel fails the at-th Do with err.
type failingKernel struct {
	Kernel
	n, at int
	err   error
}

func (f *failingKernel) Do(ctx context.Context, op Op) (Op, error) {
	f.n++
	if f.n == f.at {
		return Op{}, f.err
	}
	return f.Kernel.Do(ctx, op)
}
