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
