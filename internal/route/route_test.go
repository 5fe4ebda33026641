package route

import (
	"encoding/json"
	"errors"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestRangeValidate(t *testing.T) {
	tests := []struct {
		name string
		r    Range
		ok   bool
	}{
		{"default", DefaultRange, true},
		{"single", Range{1000, 1000, 1000, 1000}, true},
		{"empty tables", Range{10, 9, 100, 200}, false},
		{"table zero", Range{0, 9, 100, 200}, false},
		{"main table", Range{200, 300, 100, 200}, false},
		{"local table", Range{255, 255, 100, 200}, false},
		{"priority zero", Range{1000, 1100, 0, 200}, false},
		{"main rule", Range{1000, 1100, 30000, 32766}, false},
		{"default rule", Range{1000, 1100, 32760, 32767}, false},
		{"after the default rule", Range{1000, 1100, 40000, 40100}, false},
		{"default table", Range{253, 253, 100, 200}, false},
		{"just above local", Range{256, 300, 100, 200}, true},
		{"just below default", Range{1, 252, 1, 32765}, true},
		{"reversed priorities", Range{1000, 1100, 300, 200}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.r.Validate()
			if (err == nil) != tt.ok {
				t.Fatalf("Validate(%v) = %v, want ok=%v", tt.r, err, tt.ok)
			}
			if err != nil && !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v does not wrap ErrInvalid", err)
			}
		})
	}
}

func TestRangeChecks(t *testing.T) {
	r := DefaultRange
	src := netip.MustParsePrefix("198.18.1.2/32")
	dst := netip.MustParsePrefix("198.18.1.0/24")
	tests := []struct {
		name string
		err  error
		want error
	}{
		{"rule ok", r.CheckRule(Rule{Priority: 7100, Src: src, Table: 7199}), nil},
		{"rule low priority", r.CheckRule(Rule{Priority: 7099, Src: src, Table: 7100}), ErrOutOfRange},
		{"rule high priority", r.CheckRule(Rule{Priority: 7200, Src: src, Table: 7100}), ErrOutOfRange},
		{"rule foreign table", r.CheckRule(Rule{Priority: 7100, Src: src, Table: 254}), ErrOutOfRange},
		{"rule no source", r.CheckRule(Rule{Priority: 7100, Table: 7100}), ErrInvalid},
		{"rule wrong family", r.CheckRule(Rule{Priority: 7100, Src: src, Table: 7100, Family: FamilyV6}), ErrInvalid},
		{"route ok", r.CheckRoute(Route{Table: 7100, Dst: dst, LinkIndex: 2, Scope: ScopeLink}), nil},
		{"route main", r.CheckRoute(Route{Table: 254, Dst: dst, LinkIndex: 2}), ErrOutOfRange},
		{"route table 0", r.CheckRoute(Route{Dst: dst, LinkIndex: 2}), ErrInvalid},
		{"route no link", r.CheckRoute(Route{Table: 7100, Dst: dst}), ErrInvalid},
		{"route mixed gateway", r.CheckRoute(Route{Table: 7100, Dst: dst, LinkIndex: 2, Gateway: netip.MustParseAddr("2001:db8::1")}), ErrInvalid},
		{"route gateway scope link", r.CheckRoute(Route{Table: 7100, Dst: dst, LinkIndex: 2, Gateway: netip.MustParseAddr("198.18.1.1"), Scope: ScopeLink}), ErrInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.want == nil {
				if tt.err != nil {
					t.Fatalf("got %v, want nil", tt.err)
				}
				return
			}
			if !errors.Is(tt.err, tt.want) {
				t.Fatalf("got %v, want an error wrapping %v", tt.err, tt.want)
			}
		})
	}
}

func TestSource(t *testing.T) {
	tests := []struct {
		name   string
		s      Source
		rule   Rule
		routes []Route
	}{
		{
			name: "ipv4",
			s:    Source{Addr: netip.MustParsePrefix("198.18.1.2/24"), LinkIndex: 3, Gateway: netip.MustParseAddr("198.18.1.1"), Table: 7101, Priority: 7102},
			rule: Rule{Priority: 7102, Src: netip.MustParsePrefix("198.18.1.2/32"), Table: 7101, Family: FamilyV4},
			routes: []Route{
				{Table: 7101, Dst: netip.MustParsePrefix("198.18.1.0/24"), LinkIndex: 3, Src: netip.MustParseAddr("198.18.1.2"), Scope: ScopeLink},
				{Table: 7101, Dst: netip.MustParsePrefix("0.0.0.0/0"), Gateway: netip.MustParseAddr("198.18.1.1"), LinkIndex: 3},
			},
		},
		{
			name: "ipv6 without gateway",
			s:    Source{Addr: netip.MustParsePrefix("2001:db8:1::2/64"), LinkIndex: 4, Table: 7110, Priority: 7110},
			rule: Rule{Priority: 7110, Src: netip.MustParsePrefix("2001:db8:1::2/128"), Table: 7110, Family: FamilyV6},
			routes: []Route{
				{Table: 7110, Dst: netip.MustParsePrefix("2001:db8:1::/64"), LinkIndex: 4, Src: netip.MustParseAddr("2001:db8:1::2")},
			},
		},
	}
	cmpOpts := cmp.Comparer(func(a, b netip.Addr) bool { return a == b })
	pfx := cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if d := cmp.Diff(tt.rule, tt.s.Rule(), cmpOpts, pfx); d != "" {
				t.Errorf("Rule() (-want +got):\n%s", d)
			}
			if d := cmp.Diff(tt.routes, tt.s.Routes(), cmpOpts, pfx); d != "" {
				t.Errorf("Routes() (-want +got):\n%s", d)
			}
			if err := DefaultRange.CheckRule(tt.s.Rule()); err != nil {
				t.Error(err)
			}
			for _, r := range tt.s.Routes() {
				if err := DefaultRange.CheckRoute(r); err != nil {
					t.Error(err)
				}
			}
		})
	}
}

func TestRenderIsStable(t *testing.T) {
	s1 := Source{Addr: netip.MustParsePrefix("198.18.1.2/24"), LinkIndex: 3, Gateway: netip.MustParseAddr("198.18.1.1"), Table: 7100, Priority: 7100}
	s2 := Source{Addr: netip.MustParsePrefix("2001:db8:2::2/64"), LinkIndex: 4, Gateway: netip.MustParseAddr("fe80::1"), Table: 7101, Priority: 7101}
	rules := []Rule{s2.Rule(), s1.Rule()}
	routes := append(s2.Routes(), s1.Routes()...)
	want := `rule 7100: from 198.18.1.2 lookup 7100
rule 7101: from 2001:db8:2::2 lookup 7101
route 198.18.1.0/24 dev if3 table 7100 src 198.18.1.2 scope link
route default via 198.18.1.1 dev if3 table 7100
route 2001:db8:2::/64 dev if4 table 7101 src 2001:db8:2::2
route default via fe80::1 dev if4 table 7101
`
	got := Render(rules, routes)
	if got != want {
		t.Fatalf("Render:\n%s\nwant:\n%s", got, want)
	}
	// Reversed input, unmasked prefixes: same text.
	routes[0].Dst = netip.MustParsePrefix("2001:db8:2::2/64")
	if got2 := Render([]Rule{rules[1], rules[0]}, []Route{routes[3], routes[2], routes[1], routes[0]}); got2 != want {
		t.Fatalf("Render of reordered input:\n%s\nwant:\n%s", got2, want)
	}
}

func TestJSONRoundTrip(t *testing.T) {
	s := Source{Addr: netip.MustParsePrefix("2001:db8:2::2/64"), LinkIndex: 4, Gateway: netip.MustParseAddr("2001:db8:2::1"), Table: 7101, Priority: 7101}
	type both struct {
		Rule   Rule
		Routes []Route
	}
	in := both{s.Rule(), s.Routes()}
	in.Routes[0].Scope = ScopeLink
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	var out both
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatalf("unmarshal %s: %v", b, err)
	}
	if d := cmp.Diff(in, out, cmp.Comparer(func(a, b netip.Addr) bool { return a == b }), cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); d != "" {
		t.Fatalf("round trip of %s (-in +out):\n%s", b, d)
	}
}

func TestReserved(t *testing.T) {
	for _, tt := range []struct {
		min, max uint32
		tables   bool // TablesReserved
		prios    bool // PrioritiesReserved
	}{
		{0, 0, true, true},
		{0, 10, true, true},
		{1, 252, false, false},
		{253, 253, true, false},
		{250, 254, true, false},
		{255, 300, true, false},
		{256, 32765, false, false},
		{32000, 32766, false, true},
		{32767, 32767, false, true},
	} {
		if got := TablesReserved(tt.min, tt.max); got != tt.tables {
			t.Errorf("TablesReserved(%d, %d) = %v", tt.min, tt.max, got)
		}
		if got := PrioritiesReserved(tt.min, tt.max); got != tt.prios {
			t.Errorf("PrioritiesReserved(%d, %d) = %v", tt.min, tt.max, got)
		}
	}
}

func TestProto(t *testing.T) {
	for p, want := range map[Proto]string{0: "unspec", 3: "boot", 4: "static", 12: "bird", 173: "mpfleet", 77: "77", 186: "bgp"} {
		if got := p.String(); got != want {
			t.Errorf("Proto(%d).String() = %q, want %q", uint8(p), got, want)
		}
		b, _ := p.MarshalText()
		var back Proto
		if err := back.UnmarshalText(b); err != nil || back != p {
			t.Errorf("round trip of %d through %q: %d, %v", uint8(p), b, back, err)
		}
	}
	var p Proto
	if err := p.UnmarshalText([]byte("nope")); !errors.Is(err, ErrInvalid) {
		t.Errorf("UnmarshalText(nope) = %v", err)
	}
	// mpfleet's own is nobody else's: not a protocol the kernel or iproute2
	// name, not a legacy one.
	if n := Protocol.String(); n != "mpfleet" || Protocol == LegacyRuleProtocol || Protocol == LegacyRouteProtocol {
		t.Errorf("Protocol %d is %q", uint8(Protocol), n)
	}
	for _, tt := range []struct {
		from, to, legacy Proto
		ok               bool
	}{
		{LegacyRuleProtocol, Protocol, LegacyRuleProtocol, true},
		{Protocol, LegacyRuleProtocol, LegacyRuleProtocol, true},
		{LegacyRouteProtocol, Protocol, LegacyRouteProtocol, true},
		{ProtoBoot, Protocol, LegacyRouteProtocol, false},
		{Protocol, ProtoKernel, LegacyRouteProtocol, false},
		{LegacyRouteProtocol, Protocol, LegacyRuleProtocol, false},
		{Protocol, Protocol, LegacyRuleProtocol, false},
	} {
		if err := CheckAdoption(tt.from, tt.to, tt.legacy); (err == nil) != tt.ok || (err != nil && !errors.Is(err, ErrInvalid)) {
			t.Errorf("CheckAdoption(%v, %v, %v) = %v, want ok=%v", tt.from, tt.to, tt.legacy, err, tt.ok)
		}
	}
}

func TestForeignStrings(t *testing.T) {
	src := netip.MustParsePrefix("198.18.1.2/32")
	rules := []struct {
		f     ForeignRule
		want  string
		plain bool
	}{
		{ForeignRule{Rule: Rule{Priority: 7150, Src: src, Table: 7150}}, "7150: from 198.18.1.2 lookup 7150 proto unspec", true},
		{ForeignRule{Rule: Rule{Priority: 7150, Table: 7150}, Protocol: ProtoBoot, Detail: "fwmark 0x1"}, "7150: from all fwmark 0x1 lookup 7150 proto boot", false},
		{ForeignRule{Rule: Rule{Priority: 7150, Src: src}, Detail: "goto 7000"}, "7150: from 198.18.1.2 goto 7000 proto unspec", false},
	}
	for _, tt := range rules {
		if got := tt.f.String(); got != tt.want || tt.f.Plain() != tt.plain {
			t.Errorf("%+v: %q plain %v, want %q plain %v", tt.f, got, tt.f.Plain(), tt.want, tt.plain)
		}
	}
	dflt := Route{Table: 7150, Dst: netip.MustParsePrefix("0.0.0.0/0"), Gateway: netip.MustParseAddr("198.18.1.1"), LinkIndex: 3}
	routes := []struct {
		f     ForeignRoute
		want  string
		plain bool
	}{
		{ForeignRoute{Route: dflt, Protocol: ProtoStatic, Type: TypeUnicast}, "default via 198.18.1.1 dev if3 table 7150 proto static", true},
		{ForeignRoute{Route: dflt, Protocol: ProtoBoot, Type: TypeUnicast, Metric: 100}, "default via 198.18.1.1 dev if3 table 7150 proto boot metric 100", false},
		{ForeignRoute{Route: Route{Table: 7150, Dst: netip.MustParsePrefix("198.18.9.0/24")}, Protocol: ProtoBoot, Type: TypeBlackhole}, "blackhole 198.18.9.0/24 table 7150 proto boot", false},
		{ForeignRoute{Route: Route{Table: 7150, Dst: netip.MustParsePrefix("::/0")}, Protocol: 12, Type: TypeUnicast, Nexthops: 2}, "default table 7150 proto bird (2 nexthops)", false},
	}
	for _, tt := range routes {
		if got := tt.f.String(); got != tt.want || tt.f.Plain() != tt.plain {
			t.Errorf("%+v: %q plain %v, want %q plain %v", tt.f, got, tt.f.Plain(), tt.want, tt.plain)
		}
	}
	// JSON, as a State carries them.
	in := []ForeignRoute{routes[2].f}
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	var out []ForeignRoute
	if err := json.Unmarshal(b, &out); err != nil || !cmp.Equal(in, out, cmp.Comparer(func(a, b netip.Prefix) bool { return a == b }), cmp.Comparer(func(a, b netip.Addr) bool { return a == b })) {
		t.Errorf("JSON round trip of %s: %+v, %v", b, out, err)
	}
}
