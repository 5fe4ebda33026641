package e2e

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mpfleet/mpfleet/internal/mptcp"
	"github.com/mpfleet/mpfleet/internal/mptcp/mptcpnl"
	"github.com/mpfleet/mpfleet/internal/route"
	"github.com/mpfleet/mpfleet/internal/route/routenl"
	"github.com/mpfleet/mpfleet/test/lab"
)

// kernelState is what the kernel of one lab host holds of what mpfleet
// manages, read from its namespace.
type kernelState struct {
	Limits    mptcp.Limits
	Endpoints []mptcp.Endpoint
	Rules     []route.Rule // inside route.DefaultRange
	Routes    []route.Route
	Sysctls   map[string]string // net.mptcp.*, by short name
	Links     map[int]string
}

// readKernel reads the MPTCP endpoints, limits and sysctls and the owned
// policy routing of h, from inside its namespace.
func readKernel(l *lab.Lab, h lab.Host) (kernelState, error) {
	var s kernelState
	mc, err := mptcpnl.Dial(&mptcpnl.DialOptions{NetNS: int(l.NS(h))})
	if err != nil {
		return s, err
	}
	defer mc.Close()
	if s.Limits, err = mc.Limits(); err != nil {
		return s, err
	}
	if s.Endpoints, err = mc.Endpoints(); err != nil {
		return s, err
	}
	rm, err := routenl.Open(&routenl.Options{NetNS: int(l.NS(h))})
	if err != nil {
		return s, err
	}
	defer rm.Close()
	if s.Rules, err = rm.Rules(); err != nil {
		return s, err
	}
	if s.Routes, err = rm.Routes(); err != nil {
		return s, err
	}
	if s.Links, err = rm.LinkNames(); err != nil {
		return s, err
	}
	err = l.Do(h, func() (err error) {
		s.Sysctls, err = mptcp.Sysctls()
		return err
	})
	return s, err
}

// String renders the state for logs and for comparing two reads.
func (s kernelState) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "limits subflows %d add_addr_accepted %d\n", s.Limits.Subflows, s.Limits.AddAddrAccepted)
	for _, e := range s.Endpoints {
		fmt.Fprintf(&b, "endpoint %s id %d %s dev %s\n", e.Addr, e.ID, e.Flags, s.Links[e.IfIndex])
	}
	b.WriteString(route.Render(s.Rules, s.Routes))
	if !strings.HasSuffix(b.String(), "\n") {
		b.WriteString("\n")
	}
	names := make([]string, 0, len(s.Sysctls))
	for n := range s.Sysctls {
		if n != "available_schedulers" && n != "available_path_managers" {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	for _, n := range names {
		fmt.Fprintf(&b, "net.mptcp.%s = %s\n", n, s.Sysctls[n])
	}
	return b.String()
}

// wantEndpoint is an endpoint a policy declares.
type wantEndpoint struct {
	addr  netip.Addr
	flags mptcp.Flags
	link  lab.Link
}

// dev is the endpoint's interface.
func (e wantEndpoint) dev() string { return lab.Iface(lab.Client, e.link) }

// want is the kernel state a policy declares for one host.
type want struct {
	limits    mptcp.Limits
	endpoints []wantEndpoint
	// routed: each endpoint address has its own rule and table with the
	// connected route and a default route through the link's gateway.
	routed  bool
	sysctls map[string]string
}

// Policy files of deploy/examples and what they declare for each host.
const (
	twoLinksFile  = "deploy/examples/lab-two-links.yaml"
	oneLinkFile   = "deploy/examples/lab-one-link.yaml"
	noRoutingFile = "deploy/examples/lab-no-routing.yaml"

	// The same over IPv6 (a dual-stack lab; the endpoints select
	// family ipv6).
	twoLinks6File  = "deploy/examples/lab-two-links-v6.yaml"
	oneLink6File   = "deploy/examples/lab-one-link-v6.yaml"
	noRouting6File = "deploy/examples/lab-no-routing-v6.yaml"
)

var (
	clientSysctls = map[string]string{"enabled": "1", "scheduler": "default", "close_timeout": "30"}
	serverSysctls = map[string]string{"enabled": "1", "scheduler": "default", "close_timeout": "30", "add_addr_timeout": "10"}
	limits22      = mptcp.Limits{Subflows: 2, AddAddrAccepted: 2}

	clientEndpoint = wantEndpoint{lab.Addr(lab.Client, lab.Link2), mptcp.FlagFullmesh, lab.Link2}
	serverEndpoint = wantEndpoint{lab.Addr(lab.Server, lab.Link2), mptcp.FlagSignal, lab.Link2}

	clientEndpoint6 = wantEndpoint{lab.Addr6(lab.Client, lab.Link2), mptcp.FlagFullmesh, lab.Link2}
	serverEndpoint6 = wantEndpoint{lab.Addr6(lab.Server, lab.Link2), mptcp.FlagSignal, lab.Link2}

	declared = map[string]map[lab.Host]want{
		twoLinksFile: {
			lab.Client: {limits: limits22, endpoints: []wantEndpoint{clientEndpoint}, routed: true, sysctls: clientSysctls},
			lab.Server: {limits: limits22, endpoints: []wantEndpoint{serverEndpoint}, routed: true, sysctls: serverSysctls},
		},
		oneLinkFile: {
			lab.Client: {limits: limits22, routed: true, sysctls: clientSysctls},
			lab.Server: {limits: limits22, routed: true, sysctls: serverSysctls},
		},
		noRoutingFile: {
			lab.Client: {limits: limits22, endpoints: []wantEndpoint{clientEndpoint}, sysctls: clientSysctls},
			lab.Server: {limits: limits22, endpoints: []wantEndpoint{serverEndpoint}, sysctls: serverSysctls},
		},
		twoLinks6File: {
			lab.Client: {limits: limits22, endpoints: []wantEndpoint{clientEndpoint6}, routed: true, sysctls: clientSysctls},
			lab.Server: {limits: limits22, endpoints: []wantEndpoint{serverEndpoint6}, routed: true, sysctls: serverSysctls},
		},
		oneLink6File: {
			lab.Client: {limits: limits22, routed: true, sysctls: clientSysctls},
			lab.Server: {limits: limits22, routed: true, sysctls: serverSysctls},
		},
		noRouting6File: {
			lab.Client: {limits: limits22, endpoints: []wantEndpoint{clientEndpoint6}, sysctls: clientSysctls},
			lab.Server: {limits: limits22, endpoints: []wantEndpoint{serverEndpoint6}, sysctls: serverSysctls},
		},
	}
)

// check compares the kernel state of h with what w declares, and says
// what differs.
func (w want) check(s kernelState, h lab.Host) error {
	var errs []string
	bad := func(format string, args ...any) { errs = append(errs, fmt.Sprintf(format, args...)) }
	if s.Limits != w.limits {
		bad("limits %+v, want %+v", s.Limits, w.limits)
	}
	var got, exp []string
	for _, e := range s.Endpoints {
		got = append(got, fmt.Sprintf("%s %s dev %s", e.Addr, e.Flags&^mptcp.FlagImplicit, s.Links[e.IfIndex]))
	}
	for _, e := range w.endpoints {
		exp = append(exp, fmt.Sprintf("%s %s dev %s", e.addr, e.flags, e.dev()))
	}
	slices.Sort(got)
	slices.Sort(exp)
	if !slices.Equal(got, exp) {
		bad("endpoints %q, want %q", got, exp)
	}
	var expRules, expRoutes int
	if w.routed {
		for _, e := range w.endpoints {
			expRules++
			expRoutes += 2
			if err := checkRouted(s, h, e); err != nil {
				bad("%v", err)
			}
		}
	}
	if len(s.Rules) != expRules || len(s.Routes) != expRoutes {
		bad("%d rules and %d routes in mpfleet's range, want %d and %d", len(s.Rules), len(s.Routes), expRules, expRoutes)
	}
	for name, v := range w.sysctls {
		if s.Sysctls[name] != v {
			bad("net.mptcp.%s = %q, want %q", name, s.Sysctls[name], v)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%s: %s\nkernel:\n%s", h, strings.Join(errs, "; "), s)
	}
	return nil
}

// checkRouted checks the source-based policy routing of endpoint e: a rule
// from its address to a table of mpfleet's range, holding the link's
// connected route and a default route through the link's gateway, both out
// of e's interface (of e's address family).
func checkRouted(s kernelState, h lab.Host, e wantEndpoint) error {
	rng := route.DefaultRange
	subnet, gw := lab.Subnet(h, e.link), lab.Gateway(h, e.link)
	if e.addr.Is6() {
		subnet, gw = lab.Subnet6(h, e.link), lab.Gateway6(h, e.link)
	}
	var table int
	for _, r := range s.Rules {
		if r.Src == netip.PrefixFrom(e.addr, e.addr.BitLen()) {
			table = r.Table
			if !rng.HasTable(r.Table) || !rng.HasPriority(r.Priority) {
				return fmt.Errorf("rule %+v outside %s", r, rng)
			}
		}
	}
	if table == 0 {
		return fmt.Errorf("no rule from %s", e.addr)
	}
	var connected, def bool
	for _, r := range s.Routes {
		if r.Table != table {
			continue
		}
		dev := s.Links[r.LinkIndex]
		switch {
		case r.Dst == subnet && !r.Gateway.IsValid() && dev == e.dev():
			connected = true
		case r.Dst.Bits() == 0 && r.Gateway == gw && dev == e.dev():
			def = true
		}
	}
	if !connected || !def {
		return fmt.Errorf("table %d of %s: connected route %v, default via %s dev %s %v", table, e.addr, connected, gw, e.dev(), def)
	}
	return nil
}

// waitKernel waits until the kernel of h holds what w declares.
func (f *fleet) waitKernel(t testing.TB, h lab.Host, w want) {
	t.Helper()
	eventually(t, 20*time.Second, func() error {
		s, err := readKernel(f.Lab, h)
		if err != nil {
			return err
		}
		return w.check(s, h)
	})
}
