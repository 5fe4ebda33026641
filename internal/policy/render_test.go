package policy

import (
	"errors"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/mpfleet/mpfleet/internal/mptcp"
	"github.com/mpfleet/mpfleet/internal/reconcile"
	"github.com/mpfleet/mpfleet/internal/reconcile/fakekernel"
	"github.com/mpfleet/mpfleet/internal/route"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
)

var cmpNetip = cmp.Options{
	cmp.Comparer(func(a, b netip.Addr) bool { return a == b }),
	cmp.Comparer(func(a, b netip.Prefix) bool { return a == b }),
	cmpopts.EquateEmpty(),
}

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }
func addr(s string) netip.Addr  { return netip.MustParseAddr(s) }

// hostIfaces is a host with loopback, two up Ethernet links (one dual
// stack), a link that is down and one without a known gateway.
func hostIfaces() []Interface {
	return []Interface{
		{Name: "lo", Index: 1, Up: true, Addrs: []netip.Prefix{pfx("127.0.0.1/8"), pfx("::1/128")}},
		{Name: "eth0", Index: 2, Up: true,
			Addrs:    []netip.Prefix{pfx("198.18.0.2/24"), pfx("fe80::2/64"), pfx("2001:db8::2/64")},
			Gateways: []netip.Addr{addr("198.18.0.1"), addr("fe80::1")}},
		{Name: "eth1", Index: 3, Up: true,
			Addrs:    []netip.Prefix{pfx("198.18.1.3/24"), pfx("198.18.1.2/24")},
			Gateways: []netip.Addr{addr("198.19.9.1"), addr("198.18.1.1")}},
		{Name: "eth2", Index: 4, Up: false, Addrs: []netip.Prefix{pfx("198.18.2.2/24")}, Gateways: []netip.Addr{addr("198.18.2.1")}},
		{Name: "wlan0", Index: 5, Up: true, Addrs: []netip.Prefix{pfx("198.18.3.2/24")}},
	}
}

var (
	sub = []pb.EndpointFlag{pb.EndpointFlag_ENDPOINT_FLAG_SUBFLOW}
	sig = []pb.EndpointFlag{pb.EndpointFlag_ENDPOINT_FLAG_SIGNAL}
)

// src is the routing of address a (with its subnet) on link through gw at
// offset off of the default range.
func src(a string, link int, gw string, off int) route.Source {
	s := route.Source{Addr: pfx(a), LinkIndex: link, Table: 7100 + off, Priority: 7100 + off}
	if gw != "" {
		s.Gateway = addr(gw)
	}
	return s
}

func ep(a string, f mptcp.Flags, link int) mptcp.Endpoint {
	return mptcp.Endpoint{Addr: addr(a), Flags: f, IfIndex: link}
}

func routed(c reconcile.HostConfig, srcs ...route.Source) reconcile.HostConfig {
	for _, s := range srcs {
		c.Rules = append(c.Rules, s.Rule())
		c.Routes = append(c.Routes, s.Routes()...)
	}
	route.SortRules(c.Rules)
	route.SortRoutes(c.Routes)
	return c
}

func base() reconcile.HostConfig {
	return reconcile.HostConfig{Limits: &mptcp.Limits{Subflows: 2}, Range: route.DefaultRange}
}

func TestRender(t *testing.T) {
	tests := []struct {
		name   string
		policy *pb.MultipathPolicy
		ifaces []Interface
		want   func() Rendered
	}{
		{
			name: "nil policy owns endpoints and limits: none, kernel defaults",
			want: func() Rendered { return Rendered{Config: base()} },
		},
		{
			name:   "interface glob selects the links' global addresses, down links' too",
			policy: &pb.MultipathPolicy{Endpoints: []*pb.EndpointRule{{Interface: "eth*", Flags: sub}}},
			want: func() Rendered {
				c := base()
				c.Endpoints = []mptcp.Endpoint{
					ep("198.18.0.2", mptcp.FlagSubflow, 2), ep("198.18.1.2", mptcp.FlagSubflow, 3),
					ep("198.18.1.3", mptcp.FlagSubflow, 3), ep("198.18.2.2", mptcp.FlagSubflow, 4),
					ep("2001:db8::2", mptcp.FlagSubflow, 2),
				}
				return Rendered{Config: c}
			},
		},
		{
			name: "first matching rule gives the flags; family and cidr filter",
			policy: &pb.MultipathPolicy{Endpoints: []*pb.EndpointRule{
				{Cidr: "198.18.1.0/24", Flags: sig, Port: 4242},
				{Interface: "eth0", Family: pb.AddressFamily_ADDRESS_FAMILY_IPV6,
					Flags: []pb.EndpointFlag{pb.EndpointFlag_ENDPOINT_FLAG_SUBFLOW, pb.EndpointFlag_ENDPOINT_FLAG_BACKUP}},
				{Interface: "*", Family: pb.AddressFamily_ADDRESS_FAMILY_IPV4, Flags: []pb.EndpointFlag{pb.EndpointFlag_ENDPOINT_FLAG_SUBFLOW, pb.EndpointFlag_ENDPOINT_FLAG_FULLMESH}},
			}},
			want: func() Rendered {
				c := base()
				c.Endpoints = []mptcp.Endpoint{
					ep("198.18.0.2", mptcp.FlagSubflow|mptcp.FlagFullmesh, 2),
					{Addr: addr("198.18.1.2"), Flags: mptcp.FlagSignal, Port: 4242, IfIndex: 3},
					{Addr: addr("198.18.1.3"), Flags: mptcp.FlagSignal, Port: 4242, IfIndex: 3},
					ep("198.18.2.2", mptcp.FlagSubflow|mptcp.FlagFullmesh, 4),
					ep("198.18.3.2", mptcp.FlagSubflow|mptcp.FlagFullmesh, 5),
					ep("2001:db8::2", mptcp.FlagSubflow|mptcp.FlagBackup, 2),
				}
				return Rendered{Config: c}
			},
		},
		{
			name: "routing: a table per address of an up link, gateways from facts and overrides",
			policy: &pb.MultipathPolicy{
				Endpoints: []*pb.EndpointRule{{Interface: "*", Flags: sub}},
				Routing:   &pb.Routing{Enabled: true, Gateways: []*pb.GatewayOverride{{Interface: "wlan*", Gateway: "198.18.3.254"}}},
			},
			want: func() Rendered {
				c := base()
				c.Endpoints = []mptcp.Endpoint{
					ep("198.18.0.2", mptcp.FlagSubflow, 2), ep("198.18.1.2", mptcp.FlagSubflow, 3),
					ep("198.18.1.3", mptcp.FlagSubflow, 3), ep("198.18.2.2", mptcp.FlagSubflow, 4),
					ep("198.18.3.2", mptcp.FlagSubflow, 5), ep("2001:db8::2", mptcp.FlagSubflow, 2),
				}
				// Offsets are FNV-1a of the address mod 100, probing on; eth2
				// is down: an endpoint, no routing.
				c = routed(c,
					src("198.18.0.2/24", 2, "198.18.0.1", 9),
					src("198.18.1.2/24", 3, "198.18.1.1", 16), // 198.19.9.1 is outside the subnet
					src("198.18.1.3/24", 3, "198.18.1.1", 35),
					src("198.18.3.2/24", 5, "198.18.3.254", 54),
					src("2001:db8::2/64", 2, "fe80::1", 61),
				)
				return Rendered{Config: c}
			},
		},
		{
			name: "routing: no gateway is a problem, the table keeps its connected route",
			policy: &pb.MultipathPolicy{
				Endpoints: []*pb.EndpointRule{{Interface: "wlan0", Flags: sub}},
				Routing:   &pb.Routing{Enabled: true, TableMin: 300, TableMax: 309, PriorityMin: 1000, PriorityMax: 1099},
			},
			want: func() Rendered {
				c := base()
				c.Range = route.Range{TableMin: 300, TableMax: 309, PriorityMin: 1000, PriorityMax: 1099}
				c.Endpoints = []mptcp.Endpoint{ep("198.18.3.2", mptcp.FlagSubflow, 5)}
				s := route.Source{Addr: pfx("198.18.3.2/24"), LinkIndex: 5, Table: 304, Priority: 1004} // 54 mod 10
				c = routed(c, s)
				return Rendered{Config: c, Problems: []*pb.HostProblem{{
					Code: pb.HostProblem_CODE_GATEWAY_UNKNOWN, Interface: "wlan0", Address: "198.18.3.2"}}}
			},
		},
		{
			name: "limits, enabled and sysctls: only those set, unset limits at the kernel default",
			policy: &pb.MultipathPolicy{
				Enabled: proto.Bool(false),
				Limits:  &pb.Limits{AddAddrAccepted: proto.Uint32(4)},
				Sysctls: &pb.Sysctls{
					Scheduler: proto.String("default"), PathManager: proto.String("kernel"), ChecksumEnabled: proto.Bool(true),
					AddAddrTimeout: proto.Uint32(60), AllowJoinInitialAddrPort: proto.Bool(false), StaleLossCnt: proto.Uint32(4),
					BlackholeTimeout: proto.Uint32(0), CloseTimeout: proto.Uint32(30),
				},
			},
			want: func() Rendered {
				c := base()
				c.Enabled = ptr(false)
				c.Limits = &mptcp.Limits{Subflows: 2, AddAddrAccepted: 4}
				c.Sysctls = map[string]string{
					"net.mptcp.scheduler": "default", "net.mptcp.path_manager": "kernel", "net.mptcp.checksum_enabled": "1",
					"net.mptcp.add_addr_timeout": "60", "net.mptcp.allow_join_initial_addr_port": "0", "net.mptcp.stale_loss_cnt": "4",
					"net.mptcp.blackhole_timeout": "0", "net.mptcp.close_timeout": "30",
				}
				return Rendered{Config: c}
			},
		},
		{
			name: "at most eight endpoints: rule order, then address order; the rest excluded",
			policy: &pb.MultipathPolicy{Endpoints: []*pb.EndpointRule{
				{Cidr: "198.18.9.0/24", Flags: sub},
				{Interface: "many", Flags: sig},
			}},
			ifaces: []Interface{{Name: "many", Index: 7, Up: true, Addrs: []netip.Prefix{
				pfx("198.18.8.9/24"), pfx("198.18.8.1/24"), pfx("198.18.8.2/24"), pfx("198.18.8.3/24"),
				pfx("198.18.8.4/24"), pfx("198.18.8.5/24"), pfx("198.18.8.6/24"), pfx("198.18.8.7/24"),
				pfx("198.18.9.9/24"), pfx("198.18.9.8/24"),
			}}},
			want: func() Rendered {
				c := base()
				c.Endpoints = []mptcp.Endpoint{
					ep("198.18.8.1", mptcp.FlagSignal, 7), ep("198.18.8.2", mptcp.FlagSignal, 7),
					ep("198.18.8.3", mptcp.FlagSignal, 7), ep("198.18.8.4", mptcp.FlagSignal, 7),
					ep("198.18.8.5", mptcp.FlagSignal, 7), ep("198.18.8.6", mptcp.FlagSignal, 7),
					ep("198.18.9.8", mptcp.FlagSubflow, 7), ep("198.18.9.9", mptcp.FlagSubflow, 7),
				}
				return Rendered{Config: c, Excluded: []netip.Addr{addr("198.18.8.7"), addr("198.18.8.9")}, Problems: []*pb.HostProblem{
					{Code: pb.HostProblem_CODE_ENDPOINTS_EXCLUDED, Interface: "many", Address: "198.18.8.7"},
					{Code: pb.HostProblem_CODE_ENDPOINTS_EXCLUDED, Interface: "many", Address: "198.18.8.9"},
				}}
			},
		},
		{
			name:   "an address on two interfaces is selected once",
			policy: &pb.MultipathPolicy{Endpoints: []*pb.EndpointRule{{Cidr: "198.18.0.0/15", Flags: sub}}},
			ifaces: []Interface{
				{Name: "b", Index: 3, Up: true, Addrs: []netip.Prefix{pfx("198.18.5.5/24")}},
				{Name: "a", Index: 4, Up: true, Addrs: []netip.Prefix{pfx("198.18.5.5/32")}},
			},
			want: func() Rendered {
				c := base()
				c.Endpoints = []mptcp.Endpoint{ep("198.18.5.5", mptcp.FlagSubflow, 4)}
				return Rendered{Config: c}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ifaces := tt.ifaces
			if ifaces == nil {
				ifaces = hostIfaces()
			}
			got, err := Render(tt.policy, ifaces)
			if err != nil {
				t.Fatal(err)
			}
			// Paths have their own test; problem messages are checked for
			// what they name.
			opts := cmp.Options{cmpNetip, protocmp.Transform(), protocmp.IgnoreFields(&pb.HostProblem{}, "message"),
				cmpopts.IgnoreFields(Rendered{}, "Paths")}
			if diff := cmp.Diff(tt.want(), got, opts); diff != "" {
				t.Errorf("Render (-want +got):\n%s", diff)
			}
			for _, p := range got.Problems {
				if !strings.Contains(p.GetMessage(), p.GetInterface()) || !strings.Contains(p.GetMessage(), p.GetAddress()) {
					t.Errorf("problem %q does not name its interface %s and address %s", p.GetMessage(), p.GetInterface(), p.GetAddress())
				}
			}
			// Interface order does not matter.
			rev := slices.Clone(ifaces)
			slices.Reverse(rev)
			again, err := Render(tt.policy, rev)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(got, again, cmpNetip, protocmp.Transform()); diff != "" {
				t.Errorf("Render with reversed interfaces differs (-first +second):\n%s", diff)
			}
		})
	}
}

func TestRenderRejects(t *testing.T) {
	tests := []struct {
		name   string
		policy *pb.MultipathPolicy
		field  string
	}{
		{"subflows above the kernel maximum", &pb.MultipathPolicy{Limits: &pb.Limits{Subflows: proto.Uint32(99)}}, "policy.limits.subflows"},
		{"port on a subflow endpoint", &pb.MultipathPolicy{Endpoints: []*pb.EndpointRule{{Interface: "eth*", Port: 80,
			Flags: []pb.EndpointFlag{pb.EndpointFlag_ENDPOINT_FLAG_SIGNAL, pb.EndpointFlag_ENDPOINT_FLAG_SUBFLOW}}}}, "policy.endpoints[0].port"},
		{"too many rules", &pb.MultipathPolicy{Endpoints: slices.Repeat([]*pb.EndpointRule{{Interface: "eth*", Flags: sub}}, 1000)}, "policy.endpoints"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Render(tt.policy, hostIfaces())
			var ie *InvalidError
			if !errors.As(err, &ie) {
				t.Fatalf("Render = %v, want an *InvalidError", err)
			}
			found := false
			for _, v := range ie.Violations {
				found = found || v.Field == tt.field
			}
			if !found {
				t.Errorf("violations %v do not name %s", ie.Violations, tt.field)
			}
		})
	}
}

// TestRenderTablesStable: an address keeps its table and priority when
// others come and go.
func TestRenderTablesStable(t *testing.T) {
	p := &pb.MultipathPolicy{Endpoints: []*pb.EndpointRule{{Cidr: "198.18.0.0/15", Flags: sub}}, Routing: &pb.Routing{Enabled: true}}
	tableOf := func(ifaces []Interface) map[netip.Addr]int {
		r, err := Render(p, ifaces)
		if err != nil {
			t.Fatal(err)
		}
		m := map[netip.Addr]int{}
		for _, rule := range r.Config.Rules {
			if rule.Table != rule.Priority {
				t.Errorf("rule %v: table and priority differ", rule)
			}
			m[rule.Src.Addr()] = rule.Table
		}
		return m
	}
	one := tableOf([]Interface{{Name: "eth1", Index: 3, Up: true, Addrs: []netip.Prefix{pfx("198.18.1.2/24")}}})
	if one[addr("198.18.1.2")] != 7116 {
		t.Errorf("198.18.1.2 got table %d, want 7116", one[addr("198.18.1.2")])
	}
	three := tableOf([]Interface{
		{Name: "eth0", Index: 2, Up: true, Addrs: []netip.Prefix{pfx("198.18.0.2/24"), pfx("198.18.10.2/24")}},
		{Name: "eth1", Index: 3, Up: true, Addrs: []netip.Prefix{pfx("198.18.1.2/24")}},
	})
	if three[addr("198.18.1.2")] != 7116 {
		t.Errorf("with more addresses 198.18.1.2 moved to table %d", three[addr("198.18.1.2")])
	}
}

func TestInterfacesFromFacts(t *testing.T) {
	f := &pb.HostFacts{Interfaces: []*pb.Interface{
		{Name: "eth0", Index: 2, Up: true, Addresses: []string{"198.18.0.2/24", "2001:db8::2", "bogus"}, Gateways: []string{"198.18.0.1", "nope"}},
		{Name: "eth1", Index: 3},
	}}
	want := []Interface{
		{Name: "eth0", Index: 2, Up: true, Addrs: []netip.Prefix{pfx("198.18.0.2/24"), pfx("2001:db8::2/128")}, Gateways: []netip.Addr{addr("198.18.0.1")}},
		{Name: "eth1", Index: 3},
	}
	if diff := cmp.Diff(want, InterfacesFromFacts(f), cmpNetip); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

// TestAppliedRoundTrip: what an agent reports converts back to the state
// it read, so the controller plans from a report what the agent would.
func TestAppliedRoundTrip(t *testing.T) {
	ifaces := hostIfaces()
	r, err := Render(&pb.MultipathPolicy{
		Enabled:   proto.Bool(true),
		Endpoints: []*pb.EndpointRule{{Interface: "*", Flags: []pb.EndpointFlag{pb.EndpointFlag_ENDPOINT_FLAG_SUBFLOW, pb.EndpointFlag_ENDPOINT_FLAG_BACKUP}}},
		Routing:   &pb.Routing{Enabled: true},
		Sysctls:   &pb.Sysctls{Scheduler: proto.String("default")},
	}, ifaces)
	if err != nil {
		t.Fatal(err)
	}
	k := fakekernel.New(route.Range{})
	k.SetLinks(map[int]string{1: "lo", 2: "eth0", 3: "eth1", 4: "eth2", 5: "wlan0"})
	actual, err := k.Read(t.Context(), r.Config)
	if err != nil {
		t.Fatal(err)
	}
	ops, err := reconcile.Plan(r.Config, actual)
	if err != nil {
		t.Fatal(err)
	}
	if err := reconcile.Apply(t.Context(), k, ops); err != nil {
		t.Fatal(err)
	}
	st, err := k.Read(t.Context(), r.Config)
	if err != nil {
		t.Fatal(err)
	}
	applied := AppliedFromState(st, ifaces)
	wantFirst := &pb.AppliedState{
		Limits: &pb.Limits{Subflows: proto.Uint32(2), AddAddrAccepted: proto.Uint32(0)},
		Endpoints: []*pb.AppliedEndpoint{
			{Id: 1, Address: "198.18.0.2", Interface: "eth0", Flags: []pb.EndpointFlag{pb.EndpointFlag_ENDPOINT_FLAG_SUBFLOW, pb.EndpointFlag_ENDPOINT_FLAG_BACKUP}},
		},
		Rules:   []*pb.AppliedRule{{Priority: 7109, From: "198.18.0.2/32", Table: 7109}},
		Routes:  []*pb.AppliedRoute{{Table: 7109, Destination: "198.18.0.0/24", Interface: "eth0", Source: "198.18.0.2"}},
		Sysctls: map[string]string{"enabled": "1", "scheduler": "default"},
	}
	first := proto.Clone(applied).(*pb.AppliedState)
	first.Endpoints, first.Rules, first.Routes = first.Endpoints[:1], first.Rules[:1], first.Routes[:1]
	if diff := cmp.Diff(wantFirst, first, protocmp.Transform()); diff != "" {
		t.Errorf("AppliedFromState, first of each (-want +got):\n%s", diff)
	}
	if len(applied.GetEndpoints()) != 6 || len(applied.GetRules()) != 5 {
		t.Errorf("%d endpoints, %d rules reported, want 6 and 5 (eth2 is down)", len(applied.GetEndpoints()), len(applied.GetRules()))
	}
	if n := len(applied.GetRoutes()); n != 9 { // wlan0 has no gateway
		t.Errorf("%d routes reported, want 9", n)
	}
	back := StateFromApplied(applied, ifaces)
	again, err := reconcile.Plan(r.Config, back)
	if err != nil || len(again) != 0 {
		t.Fatalf("plan from the reported state = %v, %v; want no ops", again, err)
	}
	if diff := cmp.Diff(AppliedFromState(back, ifaces), applied, protocmp.Transform()); diff != "" {
		t.Errorf("round trip (-back +first):\n%s", diff)
	}
	// And a plan from an empty report is the full plan, with interface names.
	fresh, err := reconcile.Plan(r.Config, StateFromApplied(&pb.AppliedState{Limits: applied.Limits, Sysctls: map[string]string{"enabled": "1", "scheduler": "default"}}, ifaces))
	if err != nil {
		t.Fatal(err)
	}
	pops := OpsToProto(fresh)
	if len(pops) != 9+5+6 || pops[len(pops)-1].GetKind() != "add-endpoint" ||
		pops[len(pops)-1].GetDescription() != "+ endpoint 2001:db8::2 id 6 subflow backup dev eth0" {
		t.Errorf("OpsToProto = %v", pops)
	}
}

// genPolicy and genIfaces build random inputs from a seed. They lean on
// where the API, render and the kernel have disagreed: ports with every
// flag combination, routing ranges at the reserved tables and priorities and
// at the minimum width, and gateways (named, host_index, from the main
// table) that are no usable neighbour.
func genPolicy(r *rand.Rand) *pb.MultipathPolicy {
	// Most policies draw only from the values that are not plainly wrong
	// (the first ok of each list), so that many are accepted and reach
	// Render and Plan with the subtle cases; one in four draws from all.
	wild := r.IntN(4) == 0
	pick := func(n, ok int) int {
		if wild {
			return r.IntN(n)
		}
		return r.IntN(ok)
	}
	globs := []string{"", "eth*", "eth[0-1]", "*", "wlan?", "e*1", "lo", "["}
	cidrs := []string{"", "198.18.0.0/15", "198.18.1.0/24", "2001:db8::/32", "10.0.0.0/8", "fe80::/10", "127.0.0.0/8", "bad"}
	flags := []pb.EndpointFlag{1, 2, 3, 4, 5, 1, 2, 0, 9}
	ports := []uint32{0, 1, 4242, 65535, 65536, 70000}
	gateways := []string{"198.18.1.1", "2001:db8::1", "fe80::1", "198.18.1.255", "198.18.1.0", "198.18.1.2",
		"198.18.3.3", "2001:db8::2", "2001:db8::ffff:ffff:ffff:ffff", // unusable on some hosts only
		"x", "", "224.0.0.1", "169.254.1.1", "0.0.0.0", "255.255.255.255", "127.0.0.1", "::", "::1", "ff02::2",
		"::ffff:198.18.1.1", "fe80::1%eth0"}
	p := &pb.MultipathPolicy{}
	if r.IntN(2) == 0 {
		p.Enabled = proto.Bool(r.IntN(2) == 0)
	}
	if r.IntN(2) == 0 {
		p.Limits = &pb.Limits{Subflows: proto.Uint32(uint32(pick(10, 9))), AddAddrAccepted: proto.Uint32(uint32(pick(10, 9)))}
	}
	for range r.IntN(5) {
		rule := &pb.EndpointRule{Interface: globs[pick(len(globs), 7)], Cidr: cidrs[pick(len(cidrs), 7)], Family: pb.AddressFamily(r.IntN(3))}
		if !wild {
			if rule.Interface == "" && rule.Cidr == "" {
				rule.Interface = "*"
			}
			if pfx, err := netip.ParsePrefix(rule.Cidr); err == nil && rule.Family != 0 && pfx.Addr().Is4() != (rule.Family == pb.AddressFamily_ADDRESS_FAMILY_IPV4) {
				rule.Family = 0
			}
		}
		if wild {
			for range r.IntN(4) {
				rule.Flags = append(rule.Flags, flags[r.IntN(len(flags))])
			}
		} else {
			// A set of flags, each at most once: every combination.
			for f := pb.EndpointFlag(1); f <= 5; f++ {
				if r.IntN(3) == 0 {
					rule.Flags = append(rule.Flags, f)
				}
			}
		}
		if r.IntN(3) == 0 {
			rule.Port = ports[pick(len(ports), 4)]
			if !wild && r.IntN(2) == 0 && !slices.Contains(rule.Flags, pb.EndpointFlag_ENDPOINT_FLAG_SIGNAL) {
				rule.Flags = append(rule.Flags, pb.EndpointFlag_ENDPOINT_FLAG_SIGNAL)
			}
		}
		p.Endpoints = append(p.Endpoints, rule)
	}
	if r.IntN(3) != 0 {
		p.Routing = &pb.Routing{Enabled: r.IntN(4) != 0}
		switch r.IntN(4) {
		case 0:
			lo := uint32(1000 + r.IntN(100))
			p.Routing.TableMin, p.Routing.TableMax = lo, lo+uint32(r.IntN(20))
			p.Routing.PriorityMin, p.Routing.PriorityMax = lo, lo+7+uint32(r.IntN(20))
		case 1:
			p.Routing.TableMin, p.Routing.TableMax = genRange(r, []uint32{0, 1, 244, 245, 246, 248, 252, 253, 255, 256, 1<<32 - 10, 1<<32 - 9, 1<<32 - 8})
		case 2:
			p.Routing.PriorityMin, p.Routing.PriorityMax = genRange(r, []uint32{0, 1, 2, 32700, 32757, 32758, 32759, 32760, 32766})
		}
		for range r.IntN(4) {
			o := &pb.GatewayOverride{Interface: globs[pick(len(globs), 7)], Gateway: gateways[pick(len(gateways), 9)]}
			if o.Interface == "" && !wild {
				o.Interface = "*"
			}
			if r.IntN(2) == 0 {
				o.HostIndex = []int32{1, -1, 2, -2, 3, 254, 255, -254, -255, 1 << 30, -(1 << 31)}[r.IntN(11)]
				if !wild {
					o.Gateway = ""
				}
			}
			p.Routing.Gateways = append(p.Routing.Gateways, o)
		}
	}
	probes := []string{"198.18.11.2:7", "[2001:db8::9]:7", "198.18.1.1:0", "x:1", ""}
	for i := range r.IntN(3) {
		a := probes[i] // distinct
		if wild {
			a = probes[r.IntN(len(probes))]
		}
		p.Probes = append(p.Probes, &pb.Probe{Address: a})
	}
	if r.IntN(2) == 0 {
		p.Sysctls = &pb.Sysctls{Scheduler: proto.String("default"), AddAddrTimeout: proto.Uint32(uint32(pick(3000000, 2147483)))}
	}
	return p
}

// genRange returns a range from an edge and a width around the minimum (or
// a reversed or half-given one).
func genRange(r *rand.Rand, edges []uint32) (lo, hi uint32) {
	lo = edges[r.IntN(len(edges))]
	w := []uint64{0, 6, 7, 7, 8, 9, 100}[r.IntN(7)]
	hi = uint32(min(uint64(lo)+w, 1<<32-1))
	switch r.IntN(12) {
	case 0:
		return hi, lo
	case 1:
		return lo, 0
	case 2:
		return 0, hi
	}
	return lo, hi
}

func genIfaces(r *rand.Rand) []Interface {
	names := []string{"eth0", "eth1", "wlan0", "lo", "eth10", "e1"}
	pool := []string{"198.18.1.2/24", "198.18.1.3/24", "198.18.2.2/24", "198.19.0.1/16", "2001:db8::2/64", "2001:db8:1::5/64",
		"fe80::1/64", "127.0.0.1/8", "::1/128", "169.254.1.1/16", "10.1.2.3/8", "198.18.3.4/32", "2001:db8:9::9/128", "0.0.0.0/0",
		"198.18.1.1/24", "198.18.3.2/30", "198.18.3.3/31", "2001:db8::1/64", "2001:db8::3/127"}
	gws := []string{"198.18.1.1", "198.18.2.1", "2001:db8::1", "fe80::1", "10.0.0.1", "198.18.1.0", "198.18.1.255",
		"198.18.1.2", "198.18.3.3", "198.18.3.0", "224.0.0.1", "169.254.1.254", "0.0.0.0", "255.255.255.255",
		"2001:db8::2", "::", "ff02::1", "::1", "2001:db8::ffff:ffff:ffff:ffff"}
	var out []Interface
	for i := range r.IntN(7) {
		ifc := Interface{Name: names[r.IntN(len(names))], Index: 1 + i + r.IntN(2), Up: r.IntN(4) != 0}
		if slices.ContainsFunc(out, func(o Interface) bool { return o.Name == ifc.Name && o.Index == ifc.Index }) {
			continue // no host has one interface twice
		}
		for range r.IntN(7) {
			ifc.Addrs = append(ifc.Addrs, pfx(pool[r.IntN(len(pool))]))
		}
		for range r.IntN(3) {
			ifc.Gateways = append(ifc.Gateways, addr(gws[r.IntN(len(gws))]))
		}
		out = append(out, ifc)
	}
	return out
}

// checkRender asserts Render's invariants on one random input.
func checkRender(t *testing.T, seed uint64) {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	p, ifaces := genPolicy(r), genIfaces(r)
	var vs Violations
	ValidatePolicy(&vs, "policy", p)
	got, err := Render(p, ifaces)
	if err != nil {
		// One validation truth: what the API accepts, every agent renders.
		if len(vs) == 0 {
			t.Fatalf("ValidatePolicy accepts %v but Render refuses it: %v", p, err)
		}
		var ie *InvalidError
		if !errors.As(err, &ie) {
			t.Fatalf("Render error %v is not an *InvalidError", err)
		}
		return
	}
	if len(vs) != 0 {
		t.Fatalf("Render accepts what ValidatePolicy refuses: %v", vs)
	}
	if len(got.Paths) != len(got.Config.Endpoints) {
		t.Fatalf("%d paths for %d endpoints", len(got.Paths), len(got.Config.Endpoints))
	}
	for _, pt := range got.Paths {
		if pt.Routed && pt.Up && pt.Table == 0 {
			t.Fatalf("path %v: routed and up but no table", pt)
		}
		if pt.Routed && !pt.Gateway.IsValid() && !slices.ContainsFunc(got.Problems, func(p *pb.HostProblem) bool {
			return p.GetCode() == pb.HostProblem_CODE_GATEWAY_UNKNOWN && p.GetAddress() == pt.Addr.Addr().String()
		}) {
			t.Fatalf("path %v has no gateway and no problem says so: %v", pt, got.Problems)
		}
	}
	c := got.Config
	if len(c.Endpoints) > mptcp.MaxEndpoints {
		t.Fatalf("%d endpoints", len(c.Endpoints))
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("rendered config invalid: %v", err)
	}
	present, up := map[netip.Addr]bool{}, map[netip.Addr]bool{}
	for _, i := range ifaces {
		for _, a := range i.Addrs {
			present[a.Addr()] = true
			up[a.Addr()] = up[a.Addr()] || i.Up
		}
	}
	for _, e := range c.Endpoints {
		if !present[e.Addr] || !Selectable(e.Addr) {
			t.Fatalf("endpoint %v is not a selectable address of the host", e.Addr)
		}
		if slices.Contains(got.Excluded, e.Addr) {
			t.Fatalf("%v is both an endpoint and excluded", e.Addr)
		}
	}
	if len(got.Excluded) > 0 && len(c.Endpoints) != mptcp.MaxEndpoints {
		t.Fatalf("excluded %v with only %d endpoints", got.Excluded, len(c.Endpoints))
	}
	if !p.GetRouting().GetEnabled() && (len(c.Rules) > 0 || len(c.Routes) > 0) {
		t.Fatal("routing disabled but rules or routes rendered")
	}
	for _, r := range c.Rules {
		if !up[r.Src.Addr()] {
			t.Fatalf("rule %v for an address of a link that is down", r)
		}
	}
	for _, pt := range got.Paths {
		if why := badGateway(pt, ifaces); why != "" {
			t.Fatalf("path %v gets gateway %v, which %s", pt.Addr, pt.Gateway, why)
		}
	}
	shuffled := slices.Clone(ifaces)
	r.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
	again, err := Render(p, shuffled)
	if err != nil {
		t.Fatalf("second Render: %v", err)
	}
	if diff := cmp.Diff(got, again, cmpNetip, protocmp.Transform()); diff != "" {
		t.Fatalf("not deterministic (-first +second):\n%s", diff)
	}
	// The rendered config applies to a fresh namespace and then plans empty.
	k := fakekernel.New(c.Range)
	actual, _ := k.Read(t.Context(), c)
	ops, err := reconcile.Plan(c, actual)
	if err != nil {
		t.Fatalf("plan: %v", err)
	}
	if err := reconcile.Apply(t.Context(), k, ops); err != nil {
		t.Fatalf("apply: %v", err)
	}
	after, _ := k.Read(t.Context(), c)
	if again, err := reconcile.Plan(c, after); err != nil || len(again) != 0 {
		t.Fatalf("second plan %v, %v", again, err)
	}
}

func FuzzRender(f *testing.F) {
	for i := range uint64(16) {
		f.Add(i)
	}
	f.Fuzz(checkRender)
}

// TestRenderRandom runs the fuzz invariants over many seeds in plain go test.
func TestRenderRandom(t *testing.T) {
	for seed := range uint64(3000) {
		checkRender(t, seed)
		if t.Failed() {
			t.Fatalf("seed %d", seed)
		}
	}
}

func TestHostIndexAddr(t *testing.T) {
	tests := []struct {
		prefix string
		idx    int32
		want   string // "" for none
	}{
		{"198.18.2.2/24", 1, "198.18.2.1"},
		{"198.18.2.2/24", 2, ""}, // the host's own address
		{"198.18.2.2/24", 3, "198.18.2.3"},
		{"198.18.2.2/24", -1, "198.18.2.254"},
		{"198.18.2.2/24", -2, "198.18.2.253"},
		{"198.18.2.2/24", 254, "198.18.2.254"},
		{"198.18.2.2/24", 255, ""}, // the broadcast address
		{"198.18.2.2/24", -254, "198.18.2.1"},
		{"198.18.2.2/24", -255, ""},
		{"198.18.2.10/30", 1, "198.18.2.9"},
		{"198.18.2.9/30", -1, "198.18.2.10"},
		{"198.18.2.9/31", 1, ""},
		{"198.18.2.9/32", 1, ""},
		{"198.18.0.5/15", 1, "198.18.0.1"},
		{"198.18.0.5/15", -1, "198.19.255.254"},
		{"2001:db8:2::2/64", 1, "2001:db8:2::1"},
		{"2001:db8:2::2/64", -1, "2001:db8:2:0:ffff:ffff:ffff:ffff"},
		{"2001:db8:2::2/126", -1, "2001:db8:2::3"},
		{"2001:db8:2::2/127", 1, ""},
		{"2001:db8:2::2/64", 0, ""},
		{"2001:db8:2::2/64", -(1 << 31), "2001:db8:2:0:ffff:ffff:8000:0"},
	}
	for _, tt := range tests {
		got, ok := HostIndexAddr(pfx(tt.prefix), tt.idx)
		if tt.want == "" {
			if ok {
				t.Errorf("HostIndexAddr(%s, %d) = %v, want none", tt.prefix, tt.idx, got)
			}
			continue
		}
		if !ok || got != addr(tt.want) {
			t.Errorf("HostIndexAddr(%s, %d) = %v, %v; want %s", tt.prefix, tt.idx, got, ok, tt.want)
		}
	}
}

// TestRenderPaths: every endpoint address is a path with the gateway and
// table its routing got; host_index gateways serve hosts in any subnet, of
// both families.
func TestRenderPaths(t *testing.T) {
	p := &pb.MultipathPolicy{
		Endpoints: []*pb.EndpointRule{{Interface: "eth*", Flags: sub}, {Interface: "wlan0", Flags: sub}},
		Routing: &pb.Routing{Enabled: true, Gateways: []*pb.GatewayOverride{
			{Interface: "eth1", HostIndex: -1},
			{Interface: "eth2", HostIndex: 1},
			{Interface: "wlan0", HostIndex: 2}, // its own address: none
		}},
	}
	got, err := Render(p, hostIfaces())
	if err != nil {
		t.Fatal(err)
	}
	type row struct {
		Addr, If, Gateway string
		Up, Routed        bool
		Table             int
	}
	var rows []row
	for _, pt := range got.Paths {
		gw := ""
		if pt.Gateway.IsValid() {
			gw = pt.Gateway.String()
		}
		rows = append(rows, row{pt.Addr.String(), pt.IfName, gw, pt.Up, pt.Routed, pt.Table})
	}
	want := []row{
		{"198.18.0.2/24", "eth0", "198.18.0.1", true, true, 7109}, // from the main table
		{"198.18.1.2/24", "eth1", "198.18.1.254", true, true, 7116},
		{"198.18.1.3/24", "eth1", "198.18.1.254", true, true, 7135},
		{"198.18.2.2/24", "eth2", "198.18.2.1", false, true, 0}, // down: a gateway, no table
		{"198.18.3.2/24", "wlan0", "", true, true, 7154},
		{"2001:db8::2/64", "eth0", "fe80::1", true, true, 7161},
	}
	if diff := cmp.Diff(want, rows); diff != "" {
		t.Errorf("paths (-want +got):\n%s", diff)
	}
	var codes []string
	for _, pr := range got.Problems {
		codes = append(codes, pr.GetCode().String()+" "+pr.GetInterface()+" "+pr.GetAddress())
	}
	if diff := cmp.Diff([]string{"CODE_GATEWAY_UNKNOWN wlan0 198.18.3.2"}, codes); diff != "" {
		t.Errorf("problems (-want +got):\n%s", diff)
	}
	for _, r := range got.Config.Routes {
		if r.Table == 7116 && r.Dst.Bits() == 0 && r.Gateway != addr("198.18.1.254") {
			t.Errorf("table 7116's default route %v, want via 198.18.1.254", r)
		}
	}

	// Routing off: paths without gateway or table, and no problem.
	p.Routing.Enabled = false
	got, err = Render(p, hostIfaces())
	if err != nil {
		t.Fatal(err)
	}
	for _, pt := range got.Paths {
		if pt.Routed || pt.Table != 0 || pt.Gateway.IsValid() {
			t.Errorf("routing off: path %+v", pt)
		}
	}
	if len(got.Problems) != 0 || len(got.Paths) != 6 {
		t.Errorf("routing off: %d paths, problems %v", len(got.Paths), got.Problems)
	}
}
