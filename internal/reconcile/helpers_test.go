package reconcile

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/mpfleet/mpfleet/internal/mptcp"
	"github.com/mpfleet/mpfleet/internal/route"
)

// cmpOpts compare the netip types by value.
var cmpOpts = cmp.Options{
	cmp.Comparer(func(a, b netip.Addr) bool { return a == b }),
	cmp.Comparer(func(a, b netip.Prefix) bool { return a == b }),
}

// addr4 and addr6 are the i-th lab address of each family: 198.18.i.2/24
// and 2001:db8:i::2/64, with gateway .1 / ::1.
func addr4(i int) netip.Prefix { return netip.MustParsePrefix(fmt.Sprintf("198.18.%d.2/24", i)) }
func addr6(i int) netip.Prefix { return netip.MustParsePrefix(fmt.Sprintf("2001:db8:%x::2/64", i)) }

func gw(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().As16()
	if p.Addr().Is4() {
		a := p.Masked().Addr().As4()
		a[3] = 1
		return netip.AddrFrom4(a)
	}
	b[15] = 1
	return netip.AddrFrom16(b)
}

// otherGW is a second gateway in p's subnet: .254 / ::fe.
func otherGW(p netip.Prefix) netip.Addr {
	if p.Addr().Is4() {
		a := p.Masked().Addr().As4()
		a[3] = 254
		return netip.AddrFrom4(a)
	}
	a := p.Masked().Addr().As16()
	a[15] = 0xfe
	return netip.AddrFrom16(a)
}

// source is the policy routing of address p on link, in table/priority
// 7100+n.
func source(p netip.Prefix, link, n int) route.Source {
	return route.Source{Addr: p, LinkIndex: link, Gateway: gw(p), Table: 7100 + n, Priority: 7100 + n}
}

// withSources returns c with, for each source, an endpoint with flags f on
// its link and its rule and routes.
func withSources(c HostConfig, f mptcp.Flags, srcs ...route.Source) HostConfig {
	for _, s := range srcs {
		c.Endpoints = append(c.Endpoints, mptcp.Endpoint{Addr: s.Addr.Addr(), Flags: f, IfIndex: s.LinkIndex})
		c.Rules = append(c.Rules, s.Rule())
		c.Routes = append(c.Routes, s.Routes()...)
	}
	return c
}

// wantState is what the kernel should hold after applying desired on top of
// base: desired's managed fields, base's for the unmanaged ones (foreign
// rules and routes included).
func wantState(desired HostConfig, base State) State {
	s := State{
		Enabled: base.Enabled, Limits: base.Limits,
		Endpoints: slices.Clone(desired.Endpoints),
		Sysctls:   map[string]string{},
		Rules:     desired.Rules, Routes: desired.Routes,
		Foreign: base.Foreign, ForeignRoutes: base.ForeignRoutes,
	}
	if desired.Enabled != nil {
		s.Enabled = desired.Enabled
	}
	if desired.Limits != nil {
		s.Limits = desired.Limits
	}
	for k, v := range desired.Sysctls {
		s.Sysctls[k] = v
	}
	return s
}

// text renders s for comparison, endpoint IDs left out unless withIDs.
func text(s State, withIDs bool) string {
	if !withIDs {
		s.Endpoints = slices.Clone(s.Endpoints)
		for i := range s.Endpoints {
			s.Endpoints[i].ID = 0
		}
		slices.SortFunc(s.Endpoints, func(a, b mptcp.Endpoint) int { return a.Addr.Compare(b.Addr) })
	}
	return s.String()
}

func mustLoad(t testing.TB, k *FakeKernel, s State) {
	t.Helper()
	if err := k.Load(s); err != nil {
		t.Fatalf("load fake: %v", err)
	}
}
