package reconcile_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/mpfleet/mpfleet/internal/mptcp"
	"github.com/mpfleet/mpfleet/internal/reconcile"
	"github.com/mpfleet/mpfleet/internal/reconcile/fakekernel"
	"github.com/mpfleet/mpfleet/internal/route"
)

var links = map[int]string{1: "lo", 2: "veth1", 3: "veth2", 4: "veth3", 5: "veth4"}

func ep(a string, id uint8, f mptcp.Flags, ifindex int) mptcp.Endpoint {
	return mptcp.Endpoint{ID: id, Addr: netip.MustParseAddr(a), Flags: f, IfIndex: ifindex}
}

func TestPlan(t *testing.T) {
	s1 := source(addr4(1), 2, 0)
	s2 := source(addr6(2), 3, 1)
	movedGW := s1
	movedGW.Gateway = netip.MustParseAddr("198.18.1.254")
	tests := []struct {
		name    string
		desired reconcile.HostConfig
		actual  reconcile.State
		want    string // the dry-run view
	}{
		{
			name:    "nothing managed",
			desired: reconcile.HostConfig{},
			actual:  reconcile.State{Enabled: ptr(true), Limits: &mptcp.Limits{Subflows: 2}},
			want:    "no changes\n",
		},
		{
			name: "from scratch",
			desired: withSources(reconcile.HostConfig{
				Enabled: ptr(true),
				Limits:  &mptcp.Limits{Subflows: 2, AddAddrAccepted: 2},
				Sysctls: map[string]string{"net.mptcp.add_addr_timeout": "60"},
			}, mptcp.FlagSubflow, s1, s2),
			actual: reconcile.State{
				Enabled: ptr(false), Limits: &mptcp.Limits{Subflows: 2},
				Sysctls: map[string]string{"net.mptcp.add_addr_timeout": "120"},
				Links:   links,
			},
			want: `~ sysctl net.mptcp.enabled = 1 (was 0)
~ sysctl net.mptcp.add_addr_timeout = 60 (was 120)
~ limits subflows 2 add_addr_accepted 2 (was subflows 2 add_addr_accepted 0)
+ route 198.18.1.0/24 dev veth1 table 7100 src 198.18.1.2 scope link
+ route default via 198.18.1.1 dev veth1 table 7100
+ route 2001:db8:2::/64 dev veth2 table 7101 src 2001:db8:2::2
+ route default via 2001:db8:2::1 dev veth2 table 7101
+ rule 7100: from 198.18.1.2 lookup 7100
+ rule 7101: from 2001:db8:2::2 lookup 7101
+ endpoint 198.18.1.2 id 1 subflow dev veth1
+ endpoint 2001:db8:2::2 id 2 subflow dev veth2
`,
		},
		{
			name: "in sync",
			desired: withSources(reconcile.HostConfig{
				Enabled: ptr(true), Limits: &mptcp.Limits{Subflows: 2, AddAddrAccepted: 2},
				Sysctls: map[string]string{"net.mptcp.add_addr_timeout": " 60"},
			}, mptcp.FlagSubflow, s1),
			actual: reconcile.State{
				Enabled: ptr(true), Limits: &mptcp.Limits{Subflows: 2, AddAddrAccepted: 2},
				Sysctls:   map[string]string{"net.mptcp.add_addr_timeout": "60\n"},
				Endpoints: []mptcp.Endpoint{ep("198.18.1.2", 4, mptcp.FlagSubflow, 2)},
				Rules:     []route.Rule{s1.Rule()},
				Routes:    s1.Routes(),
			},
			want: "no changes\n",
		},
		{
			name: "endpoints keep their ids, change flags in place or are re-added",
			desired: reconcile.HostConfig{Endpoints: []mptcp.Endpoint{
				ep("198.18.4.2", 0, mptcp.FlagSubflow, 5),
				ep("198.18.2.2", 0, mptcp.FlagSignal, 3),
				ep("198.18.1.2", 0, mptcp.FlagSubflow|mptcp.FlagBackup, 2),
			}},
			actual: reconcile.State{Links: links, Endpoints: []mptcp.Endpoint{
				ep("198.18.2.2", 3, mptcp.FlagSubflow, 3),
				ep("198.18.1.2", 5, mptcp.FlagSubflow, 2),
				ep("198.18.3.2", 7, mptcp.FlagSignal, 4),
			}},
			want: `- endpoint 198.18.2.2 id 3 subflow dev veth2
- endpoint 198.18.3.2 id 7 signal dev veth3
~ endpoint 198.18.1.2 id 5 flags subflow backup (was subflow)
+ endpoint 198.18.4.2 id 1 subflow dev veth4
+ endpoint 198.18.2.2 id 3 signal dev veth2
`,
		},
		{
			name: "interface change re-adds",
			desired: reconcile.HostConfig{Endpoints: []mptcp.Endpoint{
				ep("198.18.1.2", 0, mptcp.FlagSubflow|mptcp.FlagFullmesh, 3),
			}},
			actual: reconcile.State{Endpoints: []mptcp.Endpoint{ep("198.18.1.2", 2, mptcp.FlagSubflow, 2)}},
			want: `- endpoint 198.18.1.2 id 2 subflow dev if2
+ endpoint 198.18.1.2 id 2 subflow fullmesh dev if3
`,
		},
		{
			name: "implicit endpoint becomes a real one",
			desired: reconcile.HostConfig{Endpoints: []mptcp.Endpoint{
				ep("198.18.1.2", 0, mptcp.FlagSubflow, 0),
			}},
			actual: reconcile.State{Endpoints: []mptcp.Endpoint{ep("198.18.1.2", 1, mptcp.FlagImplicit, 0)}},
			want: `- endpoint 198.18.1.2 id 1 implicit
+ endpoint 198.18.1.2 id 1 subflow
`,
		},
		{
			name: "an explicit id displaces an existing endpoint",
			desired: reconcile.HostConfig{Endpoints: []mptcp.Endpoint{
				ep("198.18.1.2", 0, mptcp.FlagSubflow, 0),
				ep("198.18.2.2", 1, mptcp.FlagSubflow, 0),
			}},
			actual: reconcile.State{Endpoints: []mptcp.Endpoint{ep("198.18.1.2", 1, mptcp.FlagSubflow, 0)}},
			want: `- endpoint 198.18.1.2 id 1 subflow
+ endpoint 198.18.2.2 id 1 subflow
+ endpoint 198.18.1.2 id 2 subflow
`,
		},
		{
			name:    "a moved gateway replaces the default route",
			desired: reconcile.HostConfig{Rules: []route.Rule{s1.Rule()}, Routes: movedGW.Routes()},
			actual:  reconcile.State{Links: links, Rules: []route.Rule{s1.Rule()}, Routes: s1.Routes()},
			want: `- route default via 198.18.1.1 dev veth1 table 7100
+ route default via 198.18.1.254 dev veth1 table 7100
`,
		},
		{
			name:    "stale policy routing goes, rule first, gateway route before connected",
			desired: reconcile.HostConfig{},
			actual:  reconcile.State{Links: links, Rules: []route.Rule{s1.Rule()}, Routes: s1.Routes()},
			want: `- rule 7100: from 198.18.1.2 lookup 7100
- route default via 198.18.1.1 dev veth1 table 7100
- route 198.18.1.0/24 dev veth1 table 7100 src 198.18.1.2 scope link
`,
		},
		{
			name:    "limits where the kernel reported none",
			desired: reconcile.HostConfig{Limits: &mptcp.Limits{Subflows: 8, AddAddrAccepted: 8}},
			actual:  reconcile.State{},
			want:    "~ limits subflows 8 add_addr_accepted 8\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ops, err := reconcile.Plan(tt.desired, tt.actual)
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(tt.want, ops.String()); d != "" {
				t.Errorf("Plan (-want +got):\n%s", d)
			}
		})
	}
}

func TestPlanOps(t *testing.T) {
	desired := reconcile.HostConfig{
		Enabled:   ptr(true),
		Endpoints: []mptcp.Endpoint{ep("198.18.1.2", 0, mptcp.FlagSubflow|mptcp.FlagBackup, 2)},
		Sysctls:   map[string]string{"net.mptcp.scheduler": "default"},
	}
	actual := reconcile.State{
		Enabled:   ptr(true),
		Sysctls:   map[string]string{"net.mptcp.scheduler": "burst"},
		Endpoints: []mptcp.Endpoint{ep("198.18.1.2", 3, mptcp.FlagSubflow, 2), ep("198.18.9.2", 1, mptcp.FlagSignal, 0)},
		Links:     links,
	}
	want := reconcile.Ops{
		{Kind: reconcile.SetSysctl, Sysctl: "net.mptcp.scheduler", Value: "default", Old: "burst"},
		{Kind: reconcile.DelEndpoint, Endpoint: ptr(ep("198.18.9.2", 1, mptcp.FlagSignal, 0))},
		{Kind: reconcile.SetEndpointFlags, Endpoint: ptr(ep("198.18.1.2", 3, mptcp.FlagSubflow, 2)), Flags: mptcp.FlagSubflow | mptcp.FlagBackup},
	}
	got, err := reconcile.Plan(desired, actual)
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(want, got, cmpOpts); d != "" {
		t.Fatalf("Plan (-want +got):\n%s", d)
	}
	// Plain values: JSON round trip for the API.
	b, err := json.Marshal(got)
	if err != nil {
		t.Fatal(err)
	}
	var back reconcile.Ops
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatalf("unmarshal %s: %v", b, err)
	}
	if d := cmp.Diff(got, back, cmpOpts); d != "" {
		t.Fatalf("JSON round trip of %s (-orig +back):\n%s", b, d)
	}
}

func TestPlanRejects(t *testing.T) {
	nine := reconcile.HostConfig{}
	for i := 1; i <= 9; i++ {
		nine.Endpoints = append(nine.Endpoints, mptcp.Endpoint{Addr: addr4(i).Addr(), Flags: mptcp.FlagSubflow})
	}
	sub := mptcp.FlagSubflow
	s1 := source(addr4(1), 2, 0)
	outside := s1
	outside.Priority = 32000
	foreignTable := s1
	foreignTable.Table = 254
	tests := []struct {
		name    string
		desired reconcile.HostConfig
		actual  reconcile.State
		want    []error
	}{
		{"nine endpoints", nine, reconcile.State{}, []error{reconcile.ErrInvalid, mptcp.ErrTooManyEndpoints}},
		{"duplicate address", reconcile.HostConfig{Endpoints: []mptcp.Endpoint{ep("198.18.1.2", 0, sub, 0), ep("198.18.1.2", 0, sub, 0)}}, reconcile.State{}, []error{reconcile.ErrInvalid}},
		{"duplicate id", reconcile.HostConfig{Endpoints: []mptcp.Endpoint{ep("198.18.1.2", 2, sub, 0), ep("198.18.2.2", 2, sub, 0)}}, reconcile.State{}, []error{reconcile.ErrInvalid}},
		{"signal fullmesh", reconcile.HostConfig{Endpoints: []mptcp.Endpoint{ep("198.18.1.2", 0, mptcp.FlagSignal|mptcp.FlagFullmesh, 0)}}, reconcile.State{}, []error{reconcile.ErrInvalid}},
		{"implicit", reconcile.HostConfig{Endpoints: []mptcp.Endpoint{ep("198.18.1.2", 0, mptcp.FlagImplicit, 0)}}, reconcile.State{}, []error{reconcile.ErrInvalid}},
		{"port on subflow", reconcile.HostConfig{Endpoints: []mptcp.Endpoint{{Addr: netip.MustParseAddr("198.18.1.2"), Port: 8080, Flags: sub}}}, reconcile.State{}, []error{reconcile.ErrInvalid}},
		{"no address", reconcile.HostConfig{Endpoints: []mptcp.Endpoint{{Flags: sub}}}, reconcile.State{}, []error{reconcile.ErrInvalid}},
		{"limits above 8", reconcile.HostConfig{Limits: &mptcp.Limits{Subflows: 9}}, reconcile.State{}, []error{reconcile.ErrInvalid}},
		{"foreign sysctl", reconcile.HostConfig{Sysctls: map[string]string{"net.ipv4.ip_forward": "1"}}, reconcile.State{}, []error{reconcile.ErrInvalid}},
		{"enabled as a sysctl", reconcile.HostConfig{Sysctls: map[string]string{reconcile.SysctlEnabled: "1"}}, reconcile.State{}, []error{reconcile.ErrInvalid}},
		{"empty sysctl value", reconcile.HostConfig{Sysctls: map[string]string{"net.mptcp.scheduler": " "}}, reconcile.State{}, []error{reconcile.ErrInvalid}},
		{"rule priority outside range", reconcile.HostConfig{Rules: []route.Rule{outside.Rule()}}, reconcile.State{}, []error{reconcile.ErrInvalid, route.ErrOutOfRange}},
		{"route in main", reconcile.HostConfig{Routes: foreignTable.Routes()}, reconcile.State{}, []error{reconcile.ErrInvalid, route.ErrOutOfRange}},
		{"two default routes in a table", reconcile.HostConfig{Routes: append(s1.Routes(), s1.Routes()[1:]...)}, reconcile.State{}, []error{reconcile.ErrInvalid}},
		{"bad range", reconcile.HostConfig{Range: route.Range{TableMin: 1, TableMax: 300, PriorityMin: 1, PriorityMax: 2}}, reconcile.State{}, []error{reconcile.ErrInvalid}},
		{"sysctl the kernel lacks", reconcile.HostConfig{Sysctls: map[string]string{"net.mptcp.scheduler": "default"}}, reconcile.State{Sysctls: map[string]string{}}, []error{reconcile.ErrUnsupported, errors.ErrUnsupported}},
		{"no mptcp sysctls at all", reconcile.HostConfig{Enabled: ptr(true)}, reconcile.State{}, []error{reconcile.ErrUnsupported}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ops, err := reconcile.Plan(tt.desired, tt.actual)
			if err == nil {
				t.Fatalf("Plan = %v, want an error", ops)
			}
			for _, w := range tt.want {
				if !errors.Is(err, w) {
					t.Errorf("error %q does not match %v", err, w)
				}
			}
		})
	}
}

func TestOpInverse(t *testing.T) {
	s1 := source(addr4(1), 2, 0)
	e := ep("198.18.1.2", 3, mptcp.FlagSubflow, 2)
	ops := reconcile.Ops{
		{Kind: reconcile.SetSysctl, Sysctl: reconcile.SysctlEnabled, Value: "1", Old: "0"},
		{Kind: reconcile.SetLimits, Limits: &mptcp.Limits{Subflows: 4}, OldLimits: &mptcp.Limits{Subflows: 2}},
		{Kind: reconcile.AddEndpoint, Endpoint: &e},
		{Kind: reconcile.DelEndpoint, Endpoint: &e},
		{Kind: reconcile.SetEndpointFlags, Endpoint: &e, Flags: mptcp.FlagSubflow | mptcp.FlagBackup},
		{Kind: reconcile.AddRule, Rule: ptr(s1.Rule())},
		{Kind: reconcile.DelRule, Rule: ptr(s1.Rule())},
		{Kind: reconcile.AddRoute, Route: &s1.Routes()[0]},
		{Kind: reconcile.DelRoute, Route: &s1.Routes()[1]},
	}
	for _, op := range ops {
		inv, err := op.Inverse()
		if err != nil {
			t.Fatalf("%v: %v", op, err)
		}
		if inv.Kind == op.Kind && inv.String() == op.String() {
			t.Errorf("inverse of %v is itself", op)
		}
		back, err := inv.Inverse()
		if err != nil {
			t.Fatal(err)
		}
		if d := cmp.Diff(op, back, cmpOpts); d != "" {
			t.Errorf("inverse of inverse of %v (-op +back):\n%s", op, d)
		}
	}
	if _, err := (reconcile.Op{Kind: reconcile.SetSysctl, Sysctl: "net.mptcp.scheduler", Value: "x"}).Inverse(); !errors.Is(err, reconcile.ErrInvalid) {
		t.Errorf("inverse without the old value: %v, want ErrInvalid", err)
	}
}

// legacy returns s's rule and routes as an agent before route.Protocol made
// them: foreign, the rule without a protocol, the routes proto static.
func legacy(s route.Source) ([]route.ForeignRule, []route.ForeignRoute) {
	rules := []route.ForeignRule{{Rule: s.Rule(), Protocol: route.LegacyRuleProtocol}}
	var routes []route.ForeignRoute
	for _, r := range s.Routes() {
		routes = append(routes, route.ForeignRoute{Route: r, Protocol: route.LegacyRouteProtocol, Type: route.TypeUnicast})
	}
	return rules, routes
}

// handRule is `ip rule add from SRC lookup TABLE priority PRIO` (proto
// unspec).
func handRule(prio int, src string, table int) route.ForeignRule {
	return route.ForeignRule{Rule: route.Rule{Priority: prio, Src: netip.MustParsePrefix(src), Table: table}.Canonical()}
}

// unreachable is `ip route add unreachable DST table TABLE` (proto boot).
func unreachable(dst string, table int) route.ForeignRoute {
	return route.ForeignRoute{Route: route.Route{Table: table, Dst: netip.MustParsePrefix(dst)}, Protocol: route.ProtoBoot, Type: route.TypeUnreachable}
}

func TestPlanForeign(t *testing.T) {
	s1 := source(addr4(1), 2, 0)
	s2 := source(addr6(2), 3, 1)
	l1r, l1t := legacy(s1)
	l2r, l2t := legacy(s2)
	hand := handRule(7150, "198.18.9.2/32", 100)
	unr := unreachable("198.18.99.0/24", 7160)
	boot := l1r[0]
	boot.Protocol = route.ProtoBoot
	marked := l1r[0]
	marked.Detail = "fwmark 0x1"
	moved := s1
	moved.Gateway = otherGW(addr4(1))
	tests := []struct {
		name    string
		desired reconcile.HostConfig
		actual  reconcile.State
		want    string // the dry-run view
	}{
		{
			name:    "foreign entries are never deleted",
			desired: reconcile.HostConfig{},
			actual: reconcile.State{Links: links, Rules: []route.Rule{s1.Rule()}, Routes: s1.Routes(),
				Foreign: []route.ForeignRule{hand}, ForeignRoutes: []route.ForeignRoute{unr}},
			want: `- rule 7100: from 198.18.1.2 lookup 7100
- route default via 198.18.1.1 dev veth1 table 7100
- route 198.18.1.0/24 dev veth1 table 7100 src 198.18.1.2 scope link
`,
		},
		{
			name:    "foreign entries elsewhere in the range do not stop an add",
			desired: withSources(reconcile.HostConfig{}, mptcp.FlagSubflow, s1),
			actual:  reconcile.State{Links: links, Foreign: []route.ForeignRule{hand}, ForeignRoutes: []route.ForeignRoute{unr}},
			want: `+ route 198.18.1.0/24 dev veth1 table 7100 src 198.18.1.2 scope link
+ route default via 198.18.1.1 dev veth1 table 7100
+ rule 7100: from 198.18.1.2 lookup 7100
+ endpoint 198.18.1.2 id 1 subflow dev veth1
`,
		},
		{
			name:    "what older agents made is adopted, not added",
			desired: withSources(reconcile.HostConfig{}, mptcp.FlagSubflow, s1, s2),
			actual: reconcile.State{Links: links, Endpoints: []mptcp.Endpoint{ep("198.18.1.2", 1, mptcp.FlagSubflow, 2), ep("2001:db8:2::2", 2, mptcp.FlagSubflow, 3)},
				Foreign: slices.Concat(l1r, l2r), ForeignRoutes: slices.Concat(l1t, l2t)},
			want: `~ route 198.18.1.0/24 dev veth1 table 7100 src 198.18.1.2 scope link proto mpfleet (was static)
~ route default via 198.18.1.1 dev veth1 table 7100 proto mpfleet (was static)
~ route 2001:db8:2::/64 dev veth2 table 7101 src 2001:db8:2::2 proto mpfleet (was static)
~ route default via 2001:db8:2::1 dev veth2 table 7101 proto mpfleet (was static)
~ rule 7100: from 198.18.1.2 lookup 7100 proto mpfleet (was unspec)
~ rule 7101: from 2001:db8:2::2 lookup 7101 proto mpfleet (was unspec)
`,
		},
		{
			name:    "a legacy entry nothing wants stays foreign",
			desired: withSources(reconcile.HostConfig{}, mptcp.FlagSubflow, s2),
			actual: reconcile.State{Links: links, Endpoints: []mptcp.Endpoint{ep("2001:db8:2::2", 2, mptcp.FlagSubflow, 3)},
				Rules: []route.Rule{s2.Rule()}, Routes: s2.Routes(), Foreign: l1r, ForeignRoutes: l1t},
			want: "no changes\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ops, err := reconcile.Plan(tt.desired, tt.actual)
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(tt.want, ops.String()); d != "" {
				t.Errorf("Plan (-want +got):\n%s", d)
			}
			for _, op := range ops {
				if op.Kind == reconcile.DelRule || op.Kind == reconcile.DelRoute {
					for _, c := range reconcile.Conflicts(tt.desired, tt.actual) {
						if (c.Rule != nil && op.Rule != nil && c.Rule.Rule == *op.Rule) || (c.Route != nil && op.Route != nil && c.Route.Route == *op.Route) {
							t.Errorf("%v deletes a foreign entry", op)
						}
					}
				}
			}
		})
	}

	// Nothing is added where a foreign entry holds the table or priority.
	conflicts := []struct {
		name    string
		desired reconcile.HostConfig
		actual  reconcile.State
		why     string
	}{
		{"a hand-made rule at the priority", withSources(reconcile.HostConfig{}, 0, s1),
			reconcile.State{Foreign: []route.ForeignRule{handRule(7100, "198.18.9.2/32", 100)}}, "priority 7100 is held by rule 7100: from 198.18.9.2 lookup 100 proto unspec"},
		{"a hand-made rule into the table", withSources(reconcile.HostConfig{}, 0, s1),
			reconcile.State{Foreign: []route.ForeignRule{handRule(5000, "198.18.9.2/32", 7100)}}, "table 7100 is held by rule 5000"},
		{"a hand-made route in the table", withSources(reconcile.HostConfig{}, 0, s1),
			reconcile.State{ForeignRoutes: []route.ForeignRoute{unreachable("198.18.99.0/24", 7100)}}, "table 7100 is held by route unreachable 198.18.99.0/24 table 7100 proto boot"},
		{"a look-alike with another protocol is not adopted", withSources(reconcile.HostConfig{}, 0, s1),
			reconcile.State{Foreign: []route.ForeignRule{boot}}, "proto boot"},
		{"a legacy rule with a twin is not adopted", withSources(reconcile.HostConfig{}, 0, s1),
			reconcile.State{Foreign: []route.ForeignRule{l1r[0], marked}}, "priority 7100 is held"},
		{"a legacy route that differs is not adopted", withSources(reconcile.HostConfig{}, 0, moved),
			reconcile.State{Foreign: l1r, ForeignRoutes: l1t}, "table 7100 is held by route default via 198.18.1.1"},
	}
	for _, c := range conflicts {
		t.Run(c.name, func(t *testing.T) {
			ops, err := reconcile.Plan(c.desired, c.actual)
			if !errors.Is(err, reconcile.ErrConflict) || !errors.Is(err, route.ErrConflict) || !strings.Contains(err.Error(), c.why) {
				t.Fatalf("Plan = %v, %v; want ErrConflict saying %q", ops, err, c.why)
			}
		})
	}
}

func TestConflicts(t *testing.T) {
	s1 := source(addr4(1), 2, 0)
	l1r, l1t := legacy(s1)
	hand := handRule(7150, "198.18.9.2/32", 100)
	unr := unreachable("198.18.99.0/24", 7160)
	actual := reconcile.State{Foreign: append(l1r, hand), ForeignRoutes: append(l1t, unr)}

	var got []string
	for _, c := range reconcile.Conflicts(withSources(reconcile.HostConfig{}, 0, s1), actual) {
		got = append(got, c.String()+" @ "+c.Where(route.DefaultRange))
	}
	want := []string{
		"rule 7150: from 198.18.9.2 lookup 100 proto unspec @ priority 7150",
		"route unreachable 198.18.99.0/24 table 7160 proto boot @ table 7160",
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("Conflicts with the legacy entries adopted (-want +got):\n%s", d)
	}
	// Wanted by nothing, the legacy entries are conflicts too.
	if n := len(reconcile.Conflicts(reconcile.HostConfig{}, actual)); n != 5 {
		t.Errorf("%d conflicts without a desired config, want all 5", n)
	}
}

func TestAvoidForeign(t *testing.T) {
	rng := route.Range{TableMin: 7100, TableMax: 7103, PriorityMin: 7100, PriorityMax: 7103}
	s0, s1, s2 := source(addr4(1), 2, 0), source(addr4(2), 3, 1), source(addr6(3), 4, 2)
	desired := withSources(reconcile.HostConfig{Range: rng}, mptcp.FlagSubflow, s0, s1, s2)
	actual := reconcile.State{
		// 7101's priority and 7102's table are taken.
		Foreign:       []route.ForeignRule{handRule(7101, "198.18.9.2/32", 100)},
		ForeignRoutes: []route.ForeignRoute{unreachable("198.18.99.0/24", 7102)},
	}
	got, moves := reconcile.AvoidForeign(desired, actual)
	var ms []string
	for _, m := range moves {
		ms = append(ms, fmt.Sprintf("%d/%d -> %d/%d %v: %v", m.Table, m.Priority, m.NewTable, m.NewPriority, m.Sources, m.Because))
	}
	wantMoves := []string{
		"7101/7101 -> 7103/7103 [198.18.2.2/32]: priority 7101 is held by rule 7101: from 198.18.9.2 lookup 100 proto unspec",
		// 7102 is held, 7103 taken by the move before, 7100 by s0, 7101 held.
		"7102/7102 -> 0/0 [2001:db8:3::2/128]: table 7102 is held by route unreachable 198.18.99.0/24 table 7102 proto boot",
	}
	if d := cmp.Diff(wantMoves, ms); d != "" {
		t.Errorf("moves (-want +got):\n%s", d)
	}
	if !moves[1].Dropped() || moves[0].Dropped() {
		t.Errorf("Dropped: %v %v", moves[0].Dropped(), moves[1].Dropped())
	}
	s1moved := s1
	s1moved.Table, s1moved.Priority = 7103, 7103
	want := withSources(reconcile.HostConfig{Range: rng}, mptcp.FlagSubflow, s0, s1moved)
	want.Endpoints = desired.Endpoints // AvoidForeign moves routing only
	route.SortRoutes(want.Routes)
	if d := cmp.Diff(want, got, cmpOpts); d != "" {
		t.Errorf("config (-want +got):\n%s", d)
	}
	if _, err := reconcile.Plan(desired, actual); !errors.Is(err, reconcile.ErrConflict) {
		t.Errorf("Plan of the config as it was: %v, want ErrConflict", err)
	}

	// Applied, it stays where it went, and the foreign entries stay.
	ctx := context.Background()
	k := fakekernel.New(rng)
	mustLoad(t, k, actual)
	before := k.Snapshot()
	read, _ := k.Read(ctx, got)
	ops, err := reconcile.Plan(got, read)
	if err != nil {
		t.Fatal(err)
	}
	if err := reconcile.Apply(ctx, k, ops); err != nil {
		t.Fatal(err)
	}
	after, _ := k.Read(ctx, desired)
	if d := cmp.Diff(before.Foreign, after.Foreign, cmpOpts); d != "" {
		t.Errorf("foreign rules changed (-before +after):\n%s", d)
	}
	if d := cmp.Diff(before.ForeignRoutes, after.ForeignRoutes, cmpOpts); d != "" {
		t.Errorf("foreign routes changed (-before +after):\n%s", d)
	}
	again, moves2 := reconcile.AvoidForeign(desired, after)
	if d := cmp.Diff(got, again, cmpOpts); d != "" || len(moves2) != 2 {
		t.Errorf("second AvoidForeign differs (-first +second):\n%s", d)
	}
	if ops, err := reconcile.Plan(again, after); err != nil || len(ops) != 0 {
		t.Errorf("second plan = %v, %v; want none", ops, err)
	}

	// Without foreign entries, or with only adoptable ones, nothing moves.
	l0r, l0t := legacy(s0)
	for _, st := range []reconcile.State{{}, {Foreign: l0r, ForeignRoutes: l0t}} {
		if got, moves := reconcile.AvoidForeign(desired, st); len(moves) != 0 || !cmp.Equal(got, desired, cmpOpts) {
			t.Errorf("AvoidForeign with %v moved %v", st.Foreign, moves)
		}
	}
}

// TestPlanRevert: reverting an apply that adopted legacy entries gives them
// their protocol back rather than deleting them.
func TestPlanRevert(t *testing.T) {
	ctx := context.Background()
	s1, s2 := source(addr4(1), 2, 0), source(addr4(2), 3, 1)
	l1r, l1t := legacy(s1)
	k := fakekernel.New(route.Range{})
	k.SetLinks(links)
	mustLoad(t, k, reconcile.State{Rules: []route.Rule{s2.Rule()}, Routes: s2.Routes(), Foreign: l1r, ForeignRoutes: l1t})
	beforeSnap := k.Snapshot()
	desired := withSources(reconcile.HostConfig{}, 0, s1)
	desired.Endpoints = nil
	before, _ := k.Read(ctx, desired)
	ops, err := reconcile.Plan(desired, before)
	if err != nil {
		t.Fatal(err)
	}
	if err := reconcile.Apply(ctx, k, ops); err != nil {
		t.Fatal(err)
	}
	now, _ := k.Read(ctx, desired)
	prev := reconcile.HostConfig{Rules: before.Rules, Routes: before.Routes}
	back, err := reconcile.PlanRevert(prev, before, now)
	if err != nil {
		t.Fatal(err)
	}
	// s2, which the apply deleted, comes back; s1's entries are given back.
	want := `+ route 198.18.2.0/24 dev veth2 table 7101 src 198.18.2.2 scope link
+ route default via 198.18.2.1 dev veth2 table 7101
+ rule 7101: from 198.18.2.2 lookup 7101
~ rule 7100: from 198.18.1.2 lookup 7100 proto unspec (was mpfleet)
~ route 198.18.1.0/24 dev veth1 table 7100 src 198.18.1.2 scope link proto static (was mpfleet)
~ route default via 198.18.1.1 dev veth1 table 7100 proto static (was mpfleet)
`
	if d := cmp.Diff(want, back.String()); d != "" {
		t.Errorf("revert plan (-want +got):\n%s", d)
	}
	for _, op := range back {
		if op.Kind == reconcile.DelRule || op.Kind == reconcile.DelRoute {
			t.Errorf("revert deletes %v", op)
		}
	}
	if err := reconcile.Apply(ctx, k, back); err != nil {
		t.Fatalf("revert:\n%v\n%v", back, err)
	}
	if d := cmp.Diff(beforeSnap, k.Snapshot(), cmpOpts); d != "" {
		t.Errorf("after the revert (-before +after):\n%s\nrevert plan:\n%v", d, back)
	}
}
