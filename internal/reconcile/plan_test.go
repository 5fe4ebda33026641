package reconcile

import (
	"encoding/json"
	"errors"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/mpfleet/mpfleet/internal/mptcp"
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
		desired HostConfig
		actual  State
		want    string // the dry-run view
	}{
		{
			name:    "nothing managed",
			desired: HostConfig{},
			actual:  State{Enabled: ptr(true), Limits: &mptcp.Limits{Subflows: 2}},
			want:    "no changes\n",
		},
		{
			name: "from scratch",
			desired: withSources(HostConfig{
				Enabled: ptr(true),
				Limits:  &mptcp.Limits{Subflows: 2, AddAddrAccepted: 2},
				Sysctls: map[string]string{"net.mptcp.add_addr_timeout": "60"},
			}, mptcp.FlagSubflow, s1, s2),
			actual: State{
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
			desired: withSources(HostConfig{
				Enabled: ptr(true), Limits: &mptcp.Limits{Subflows: 2, AddAddrAccepted: 2},
				Sysctls: map[string]string{"net.mptcp.add_addr_timeout": " 60"},
			}, mptcp.FlagSubflow, s1),
			actual: State{
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
			desired: HostConfig{Endpoints: []mptcp.Endpoint{
				ep("198.18.4.2", 0, mptcp.FlagSubflow, 5),
				ep("198.18.2.2", 0, mptcp.FlagSignal, 3),
				ep("198.18.1.2", 0, mptcp.FlagSubflow|mptcp.FlagBackup, 2),
			}},
			actual: State{Links: links, Endpoints: []mptcp.Endpoint{
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
			desired: HostConfig{Endpoints: []mptcp.Endpoint{
				ep("198.18.1.2", 0, mptcp.FlagSubflow|mptcp.FlagFullmesh, 3),
			}},
			actual: State{Endpoints: []mptcp.Endpoint{ep("198.18.1.2", 2, mptcp.FlagSubflow, 2)}},
			want: `- endpoint 198.18.1.2 id 2 subflow dev if2
+ endpoint 198.18.1.2 id 2 subflow fullmesh dev if3
`,
		},
		{
			name: "implicit endpoint becomes a real one",
			desired: HostConfig{Endpoints: []mptcp.Endpoint{
				ep("198.18.1.2", 0, mptcp.FlagSubflow, 0),
			}},
			actual: State{Endpoints: []mptcp.Endpoint{ep("198.18.1.2", 1, mptcp.FlagImplicit, 0)}},
			want: `- endpoint 198.18.1.2 id 1 implicit
+ endpoint 198.18.1.2 id 1 subflow
`,
		},
		{
			name: "an explicit id displaces an existing endpoint",
			desired: HostConfig{Endpoints: []mptcp.Endpoint{
				ep("198.18.1.2", 0, mptcp.FlagSubflow, 0),
				ep("198.18.2.2", 1, mptcp.FlagSubflow, 0),
			}},
			actual: State{Endpoints: []mptcp.Endpoint{ep("198.18.1.2", 1, mptcp.FlagSubflow, 0)}},
			want: `- endpoint 198.18.1.2 id 1 subflow
+ endpoint 198.18.2.2 id 1 subflow
+ endpoint 198.18.1.2 id 2 subflow
`,
		},
		{
			name:    "a moved gateway replaces the default route",
			desired: HostConfig{Rules: []route.Rule{s1.Rule()}, Routes: movedGW.Routes()},
			actual:  State{Links: links, Rules: []route.Rule{s1.Rule()}, Routes: s1.Routes()},
			want: `- route default via 198.18.1.1 dev veth1 table 7100
+ route default via 198.18.1.254 dev veth1 table 7100
`,
		},
		{
			name:    "stale policy routing goes, rule first, gateway route before connected",
			desired: HostConfig{},
			actual:  State{Links: links, Rules: []route.Rule{s1.Rule()}, Routes: s1.Routes()},
			want: `- rule 7100: from 198.18.1.2 lookup 7100
- route default via 198.18.1.1 dev veth1 table 7100
- route 198.18.1.0/24 dev veth1 table 7100 src 198.18.1.2 scope link
`,
		},
		{
			name:    "limits where the kernel reported none",
			desired: HostConfig{Limits: &mptcp.Limits{Subflows: 8, AddAddrAccepted: 8}},
			actual:  State{},
			want:    "~ limits subflows 8 add_addr_accepted 8\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ops, err := Plan(tt.desired, tt.actual)
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
	desired := HostConfig{
		Enabled:   ptr(true),
		Endpoints: []mptcp.Endpoint{ep("198.18.1.2", 0, mptcp.FlagSubflow|mptcp.FlagBackup, 2)},
		Sysctls:   map[string]string{"net.mptcp.scheduler": "default"},
	}
	actual := State{
		Enabled:   ptr(true),
		Sysctls:   map[string]string{"net.mptcp.scheduler": "burst"},
		Endpoints: []mptcp.Endpoint{ep("198.18.1.2", 3, mptcp.FlagSubflow, 2), ep("198.18.9.2", 1, mptcp.FlagSignal, 0)},
		Links:     links,
	}
	want := Ops{
		{Kind: SetSysctl, Sysctl: "net.mptcp.scheduler", Value: "default", Old: "burst"},
		{Kind: DelEndpoint, Endpoint: ptr(ep("198.18.9.2", 1, mptcp.FlagSignal, 0))},
		{Kind: SetEndpointFlags, Endpoint: ptr(ep("198.18.1.2", 3, mptcp.FlagSubflow, 2)), Flags: mptcp.FlagSubflow | mptcp.FlagBackup},
	}
	got, err := Plan(desired, actual)
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
	var back Ops
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatalf("unmarshal %s: %v", b, err)
	}
	if d := cmp.Diff(got, back, cmpOpts); d != "" {
		t.Fatalf("JSON round trip of %s (-orig +back):\n%s", b, d)
	}
}

func TestPlanRejects(t *testing.T) {
	nine := HostConfig{}
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
		desired HostConfig
		actual  State
		want    []error
	}{
		{"nine endpoints", nine, State{}, []error{ErrInvalid, mptcp.ErrTooManyEndpoints}},
		{"duplicate address", HostConfig{Endpoints: []mptcp.Endpoint{ep("198.18.1.2", 0, sub, 0), ep("198.18.1.2", 0, sub, 0)}}, State{}, []error{ErrInvalid}},
		{"duplicate id", HostConfig{Endpoints: []mptcp.Endpoint{ep("198.18.1.2", 2, sub, 0), ep("198.18.2.2", 2, sub, 0)}}, State{}, []error{ErrInvalid}},
		{"signal fullmesh", HostConfig{Endpoints: []mptcp.Endpoint{ep("198.18.1.2", 0, mptcp.FlagSignal|mptcp.FlagFullmesh, 0)}}, State{}, []error{ErrInvalid}},
		{"implicit", HostConfig{Endpoints: []mptcp.Endpoint{ep("198.18.1.2", 0, mptcp.FlagImplicit, 0)}}, State{}, []error{ErrInvalid}},
		{"port on subflow", HostConfig{Endpoints: []mptcp.Endpoint{{Addr: netip.MustParseAddr("198.18.1.2"), Port: 8080, Flags: sub}}}, State{}, []error{ErrInvalid}},
		{"no address", HostConfig{Endpoints: []mptcp.Endpoint{{Flags: sub}}}, State{}, []error{ErrInvalid}},
		{"limits above 8", HostConfig{Limits: &mptcp.Limits{Subflows: 9}}, State{}, []error{ErrInvalid}},
		{"foreign sysctl", HostConfig{Sysctls: map[string]string{"net.ipv4.ip_forward": "1"}}, State{}, []error{ErrInvalid}},
		{"enabled as a sysctl", HostConfig{Sysctls: map[string]string{SysctlEnabled: "1"}}, State{}, []error{ErrInvalid}},
		{"empty sysctl value", HostConfig{Sysctls: map[string]string{"net.mptcp.scheduler": " "}}, State{}, []error{ErrInvalid}},
		{"rule priority outside range", HostConfig{Rules: []route.Rule{outside.Rule()}}, State{}, []error{ErrInvalid, route.ErrOutOfRange}},
		{"route in main", HostConfig{Routes: foreignTable.Routes()}, State{}, []error{ErrInvalid, route.ErrOutOfRange}},
		{"two default routes in a table", HostConfig{Routes: append(s1.Routes(), s1.Routes()[1:]...)}, State{}, []error{ErrInvalid}},
		{"bad range", HostConfig{Range: route.Range{TableMin: 1, TableMax: 300, PriorityMin: 1, PriorityMax: 2}}, State{}, []error{ErrInvalid}},
		{"sysctl the kernel lacks", HostConfig{Sysctls: map[string]string{"net.mptcp.scheduler": "default"}}, State{Sysctls: map[string]string{}}, []error{ErrUnsupported, errors.ErrUnsupported}},
		{"no mptcp sysctls at all", HostConfig{Enabled: ptr(true)}, State{}, []error{ErrUnsupported}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ops, err := Plan(tt.desired, tt.actual)
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
	ops := Ops{
		{Kind: SetSysctl, Sysctl: SysctlEnabled, Value: "1", Old: "0"},
		{Kind: SetLimits, Limits: &mptcp.Limits{Subflows: 4}, OldLimits: &mptcp.Limits{Subflows: 2}},
		{Kind: AddEndpoint, Endpoint: &e},
		{Kind: DelEndpoint, Endpoint: &e},
		{Kind: SetEndpointFlags, Endpoint: &e, Flags: mptcp.FlagSubflow | mptcp.FlagBackup},
		{Kind: AddRule, Rule: ptr(s1.Rule())},
		{Kind: DelRule, Rule: ptr(s1.Rule())},
		{Kind: AddRoute, Route: &s1.Routes()[0]},
		{Kind: DelRoute, Route: &s1.Routes()[1]},
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
	if _, err := (Op{Kind: SetSysctl, Sysctl: "net.mptcp.scheduler", Value: "x"}).Inverse(); !errors.Is(err, ErrInvalid) {
		t.Errorf("inverse without the old value: %v, want ErrInvalid", err)
	}
}
