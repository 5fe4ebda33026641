// Package route models mpfleet's source-based policy routing: for each managed
// local address a rule `from ADDR lookup TABLE priority P` and, in that table,
// the address's connected route and a default route through the interface's
// gateway. mpfleet only ever adds, changes or deletes rules and routes inside
// the table-id and rule-priority Range that it owns and that carry its routing
// protocol number, Protocol. Everything outside the range belongs to someone
// else and is left alone; an entry inside it without Protocol is foreign
// (ForeignRule, ForeignRoute): it is listed, so that it can be reported, and
// never changed or deleted. The rtnetlink driver that does this (never `ip`)
// is package routenl, so that code that only models routing links no netlink
// code.
package route

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// Range is the table ids and rule priorities mpfleet owns. A rule is owned
// when both its priority and its table lie in the range; a route is owned when
// its table does. Bounds are inclusive.
type Range struct {
	TableMin, TableMax       uint32
	PriorityMin, PriorityMax uint32
}

// DefaultRange is tables 7100–7199 and rule priorities 7100–7199.
//
// Why there: table ids above 255 do not fit the 8-bit rtm_table field that
// old tools read, so nothing legacy lands there by accident, and they stay
// clear of 253–255 (default, main, local), of Calico's default 1–250, of
// Cilium's 2004/2005 and of wg-quick's 51820. Priorities 7100–7199 come after
// the local table (0) and the priorities other agents commonly use (Cilium
// 9–100, Tailscale 5210–5310) and before main (32766), so a source rule is
// consulted before the main table's default route, as the policy-routing
// recipe needs. One hundred of each is far more than one namespace's
// MPTCP endpoints (at most 8) in both families, and using the same number for
// an address's table and its rule priority keeps `ip rule` readable.
var DefaultRange = Range{TableMin: 7100, TableMax: 7199, PriorityMin: 7100, PriorityMax: 7199}

// ErrOutOfRange is wrapped by every error about a rule or route outside the
// owned Range.
var ErrOutOfRange = errors.New("outside mpfleet's owned range")

// ErrInvalid is wrapped by errors about a malformed rule or route.
var ErrInvalid = errors.New("invalid")

// ErrConflict is wrapped by errors about a change that a foreign rule or
// route (one inside the range that mpfleet did not make) stands in the way
// of.
var ErrConflict = errors.New("conflicts with a rule or route mpfleet did not make")

// The kernel's reserved table ids and rule priorities, which no Range may
// include.
const (
	// TableUnspec (0) is no table: a rule or route request without one.
	TableUnspec = 0
	// TableDefault, TableMain and TableLocal are the kernel's own tables.
	TableDefault = 253
	TableMain    = 254
	TableLocal   = 255
	// PriorityLocal is the rule that looks up the local table; PriorityMain
	// and PriorityDefault those of the main and default tables. A source
	// rule must come before PriorityMain to be consulted before the main
	// table's default route.
	PriorityLocal   = 0
	PriorityMain    = 32766
	PriorityDefault = 32767
)

// TablesReserved reports whether the tables lo..hi include a reserved one
// (TableUnspec, TableDefault, TableMain, TableLocal).
func TablesReserved(lo, hi uint32) bool {
	return lo <= TableUnspec || (lo <= TableLocal && hi >= TableDefault)
}

// PrioritiesReserved reports whether the rule priorities lo..hi include
// PriorityLocal or reach PriorityMain (and PriorityDefault after it): a
// range above PriorityMain would come after the main table's rule, where a
// source rule is never consulted for traffic the main table routes.
func PrioritiesReserved(lo, hi uint32) bool {
	return lo <= PriorityLocal || hi >= PriorityMain
}

// Validate reports whether r is usable: non-empty, ordered bounds that avoid
// the kernel's reserved tables (0, 253–255) and rule priorities (0, 32766,
// 32767). policy.ValidatePolicy applies the same rules, through
// TablesReserved and PrioritiesReserved, to what the API accepts.
func (r Range) Validate() error {
	switch {
	case r.TableMin > r.TableMax:
		return fmt.Errorf("route range: tables %d-%d: %w", r.TableMin, r.TableMax, ErrInvalid)
	case TablesReserved(r.TableMin, r.TableMax):
		return fmt.Errorf("route range: tables %d-%d include a reserved table (0 unspec, 253 default, 254 main, 255 local): %w", r.TableMin, r.TableMax, ErrInvalid)
	case r.PriorityMin > r.PriorityMax:
		return fmt.Errorf("route range: priorities %d-%d: %w", r.PriorityMin, r.PriorityMax, ErrInvalid)
	case PrioritiesReserved(r.PriorityMin, r.PriorityMax):
		return fmt.Errorf("route range: priorities %d-%d include a reserved rule priority (0 local, 32766 main, 32767 default): %w", r.PriorityMin, r.PriorityMax, ErrInvalid)
	}
	return nil
}

// HasTable reports whether table t is owned.
func (r Range) HasTable(t int) bool {
	return t >= 0 && uint64(t) >= uint64(r.TableMin) && uint64(t) <= uint64(r.TableMax)
}

// HasPriority reports whether rule priority p is owned.
func (r Range) HasPriority(p int) bool {
	return p >= 0 && uint64(p) >= uint64(r.PriorityMin) && uint64(p) <= uint64(r.PriorityMax)
}

// OwnsRule reports whether rule x is inside the range.
func (r Range) OwnsRule(x Rule) bool { return r.HasPriority(x.Priority) && r.HasTable(x.Table) }

// OverlapsRule reports whether rule x's priority or the table it looks up
// lies in the range: such a rule that is not mpfleet's is foreign.
func (r Range) OverlapsRule(x Rule) bool { return r.HasPriority(x.Priority) || r.HasTable(x.Table) }

// CheckRule returns an error wrapping ErrOutOfRange or ErrInvalid unless x is
// a well-formed rule inside the range.
func (r Range) CheckRule(x Rule) error {
	if err := x.Validate(); err != nil {
		return err
	}
	if !r.HasPriority(x.Priority) {
		return fmt.Errorf("rule priority %d %w (priorities %d-%d)", x.Priority, ErrOutOfRange, r.PriorityMin, r.PriorityMax)
	}
	if !r.HasTable(x.Table) {
		return fmt.Errorf("rule table %d %w (tables %d-%d)", x.Table, ErrOutOfRange, r.TableMin, r.TableMax)
	}
	return nil
}

// CheckRoute returns an error wrapping ErrOutOfRange or ErrInvalid unless x is
// a well-formed route inside the range.
func (r Range) CheckRoute(x Route) error {
	if err := x.Validate(); err != nil {
		return err
	}
	if !r.HasTable(x.Table) {
		return fmt.Errorf("route table %d %w (tables %d-%d)", x.Table, ErrOutOfRange, r.TableMin, r.TableMax)
	}
	return nil
}

// String renders r as "tables 7100-7199 priorities 7100-7199".
func (r Range) String() string {
	return fmt.Sprintf("tables %d-%d priorities %d-%d", r.TableMin, r.TableMax, r.PriorityMin, r.PriorityMax)
}

// Family is an address family.
type Family uint8

// Address families, with the kernel's AF_* values.
const (
	FamilyUnspec Family = 0
	FamilyV4     Family = 2  // AF_INET
	FamilyV6     Family = 10 // AF_INET6
)

// FamilyOf returns the family of a.
func FamilyOf(a netip.Addr) Family {
	switch {
	case !a.IsValid():
		return FamilyUnspec
	case a.Is4() || a.Is4In6():
		return FamilyV4
	default:
		return FamilyV6
	}
}

// String returns "inet", "inet6" or "unspec".
func (f Family) String() string {
	switch f {
	case FamilyV4:
		return "inet"
	case FamilyV6:
		return "inet6"
	case FamilyUnspec:
		return "unspec"
	}
	return "family" + strconv.Itoa(int(f))
}

// MarshalText implements encoding.TextMarshaler.
func (f Family) MarshalText() ([]byte, error) { return []byte(f.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (f *Family) UnmarshalText(b []byte) error {
	switch string(b) {
	case "inet":
		*f = FamilyV4
	case "inet6":
		*f = FamilyV6
	case "unspec", "":
		*f = FamilyUnspec
	default:
		return fmt.Errorf("family %q: %w", b, ErrInvalid)
	}
	return nil
}

// Scope is a route scope (RT_SCOPE_*).
type Scope uint8

// Route scopes, with the kernel's values.
const (
	ScopeUniverse Scope = 0
	ScopeSite     Scope = 200
	ScopeLink     Scope = 253
	ScopeHost     Scope = 254
)

// String returns the scope's name as `ip route` prints it.
func (s Scope) String() string { return scopeNames.format(s) }

var scopeNames = names[Scope]{ScopeUniverse: "global", ScopeSite: "site", ScopeLink: "link", ScopeHost: "host"}

// MarshalText implements encoding.TextMarshaler.
func (s Scope) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler: a name String returns,
// "universe" or "" (global), or a number 0–255.
func (s *Scope) UnmarshalText(b []byte) error {
	if string(b) == "universe" || len(b) == 0 {
		*s = ScopeUniverse
		return nil
	}
	return scopeNames.parse("scope", b, s)
}

// Rule is a policy-routing rule `from Src lookup Table priority Priority`.
type Rule struct {
	Priority int          `json:"priority"`
	Src      netip.Prefix `json:"src"`
	Table    int          `json:"table"`
	Family   Family       `json:"family,omitempty"` // derived from Src when unset
}

// Canonical returns x with Src masked and Family filled in from Src.
func (x Rule) Canonical() Rule {
	if x.Src.IsValid() {
		x.Src = x.Src.Masked()
		x.Family = FamilyOf(x.Src.Addr())
	}
	return x
}

// Validate reports a malformed rule.
func (x Rule) Validate() error {
	if !x.Src.IsValid() {
		return fmt.Errorf("rule %v: no source prefix: %w", x, ErrInvalid)
	}
	if x.Family != FamilyUnspec && x.Family != FamilyOf(x.Src.Addr()) {
		return fmt.Errorf("rule %v: family %v does not match source: %w", x, x.Family, ErrInvalid)
	}
	if x.Priority < 0 || x.Table <= 0 {
		return fmt.Errorf("rule %v: %w", x, ErrInvalid)
	}
	return nil
}

// String renders x as `ip rule` does: "7100: from 198.18.1.2 lookup 7100".
func (x Rule) String() string {
	from := "all"
	if x.Src.IsValid() {
		from = prefixString(x.Src)
	}
	return fmt.Sprintf("%d: from %s lookup %d", x.Priority, from, x.Table)
}

// Route is one route in a policy-routing table.
type Route struct {
	Table     int          `json:"table"`
	Dst       netip.Prefix `json:"dst"`              // 0.0.0.0/0 or ::/0 for the default route
	Gateway   netip.Addr   `json:"gateway,omitzero"` // zero for a directly connected route
	LinkIndex int          `json:"link_index"`       // output interface
	Src       netip.Addr   `json:"src,omitzero"`     // preferred source address; optional
	Scope     Scope        `json:"scope,omitempty"`  // ScopeLink for a connected IPv4 route
}

// Family returns the route's family, taken from Dst.
func (x Route) Family() Family { return FamilyOf(x.Dst.Addr()) }

// Canonical returns x as the kernel reports it back: Dst masked and, for
// IPv6, scope universe (the kernel ignores and never reports an IPv6 route's
// scope).
func (x Route) Canonical() Route {
	if x.Dst.IsValid() {
		x.Dst = x.Dst.Masked()
	}
	if x.Family() == FamilyV6 {
		x.Scope = ScopeUniverse
	}
	return x
}

// Key identifies a route in the kernel: no two routes of mpfleet share a
// table and destination.
type Key struct {
	Table int
	Dst   netip.Prefix
}

// Key returns x's identity.
func (x Route) Key() Key { return Key{Table: x.Table, Dst: x.Dst.Masked()} }

// Validate reports a malformed route.
func (x Route) Validate() error {
	f := x.Family()
	switch {
	case !x.Dst.IsValid():
		return fmt.Errorf("route %v: no destination: %w", x, ErrInvalid)
	case x.Table <= 0:
		return fmt.Errorf("route %v: no table: %w", x, ErrInvalid)
	case x.LinkIndex <= 0:
		return fmt.Errorf("route %v: no output interface: %w", x, ErrInvalid)
	case x.Gateway.IsValid() && FamilyOf(x.Gateway) != f:
		return fmt.Errorf("route %v: gateway family differs from destination: %w", x, ErrInvalid)
	case x.Src.IsValid() && FamilyOf(x.Src) != f:
		return fmt.Errorf("route %v: source family differs from destination: %w", x, ErrInvalid)
	case x.Gateway.IsValid() && x.Scope != ScopeUniverse:
		return fmt.Errorf("route %v: a route through a gateway needs scope global: %w", x, ErrInvalid)
	}
	return nil
}

// String renders x in `ip route` style with the interface as "if<index>".
func (x Route) String() string { return x.Format("") }

// Format renders x in `ip route` style, naming the interface dev (or
// "if<index>" when dev is empty).
func (x Route) Format(dev string) string {
	var b strings.Builder
	if x.Dst.IsValid() && x.Dst.Bits() == 0 {
		b.WriteString("default")
	} else {
		b.WriteString(prefixString(x.Dst))
	}
	if x.Gateway.IsValid() {
		b.WriteString(" via " + x.Gateway.String())
	}
	if dev == "" {
		dev = "if" + strconv.Itoa(x.LinkIndex)
	}
	b.WriteString(" dev " + dev)
	b.WriteString(" table " + strconv.Itoa(x.Table))
	if x.Src.IsValid() {
		b.WriteString(" src " + x.Src.String())
	}
	if x.Scope != ScopeUniverse {
		b.WriteString(" scope " + x.Scope.String())
	}
	return b.String()
}

// prefixString prints a host prefix as a bare address, as ip does.
func prefixString(p netip.Prefix) string {
	if p.Bits() == p.Addr().BitLen() {
		return p.Addr().String()
	}
	return p.String()
}

// Source describes one managed local address and the policy routing it gets.
type Source struct {
	Addr      netip.Prefix // the local address with its subnet length, e.g. 198.18.1.2/24
	LinkIndex int          // the interface that holds it
	Gateway   netip.Addr   // the interface's gateway; zero for no default route
	Table     int          // the address's own table
	Priority  int          // its rule's priority
}

// Rule returns the rule `from ADDR/32 (or /128) lookup Table priority Priority`.
func (s Source) Rule() Rule {
	a := s.Addr.Addr()
	return Rule{Priority: s.Priority, Src: netip.PrefixFrom(a, a.BitLen()), Table: s.Table, Family: FamilyOf(a)}
}

// Routes returns the address's connected route (the subnet, scope link, src
// ADDR) and, when a gateway is known, the table's default route through it.
func (s Source) Routes() []Route {
	a := s.Addr.Addr()
	rs := []Route{(Route{
		Table:     s.Table,
		Dst:       s.Addr.Masked(),
		LinkIndex: s.LinkIndex,
		Src:       a,
		Scope:     ScopeLink,
	}).Canonical()}
	if s.Gateway.IsValid() {
		rs = append(rs, Route{
			Table:     s.Table,
			Dst:       netip.PrefixFrom(netip.IPv6Unspecified(), 0),
			Gateway:   s.Gateway,
			LinkIndex: s.LinkIndex,
		})
		if a.Is4() {
			rs[1].Dst = netip.PrefixFrom(netip.IPv4Unspecified(), 0)
		}
	}
	return rs
}

// SortRules sorts rules by priority, then table, then source.
func SortRules(rs []Rule) { slices.SortFunc(rs, compareRules) }

func compareRules(a, b Rule) int {
	return cmp.Or(cmp.Compare(a.Priority, b.Priority), cmp.Compare(a.Table, b.Table),
		a.Src.Addr().Compare(b.Src.Addr()), cmp.Compare(a.Src.Bits(), b.Src.Bits()))
}

// SortRoutes sorts routes by table, then destination (a table's connected
// routes before its default route), then the rest.
func SortRoutes(rs []Route) {
	slices.SortFunc(rs, CompareRoutes)
}

// CompareRoutes orders routes for SortRoutes: by table; within a table the
// routes without a gateway first, so that adding in this order never adds a
// route before the one its gateway is reached through.
func CompareRoutes(a, b Route) int {
	ag, bg := a.Gateway.IsValid(), b.Gateway.IsValid()
	gw := 0
	if ag != bg {
		gw = -1
		if ag {
			gw = 1
		}
	}
	return cmp.Or(cmp.Compare(a.Table, b.Table), gw,
		cmp.Compare(a.Family(), b.Family()),
		cmp.Compare(b.Dst.Bits(), a.Dst.Bits()), a.Dst.Addr().Compare(b.Dst.Addr()),
		a.Gateway.Compare(b.Gateway), cmp.Compare(a.LinkIndex, b.LinkIndex),
		a.Src.Compare(b.Src), cmp.Compare(a.Scope, b.Scope))
}

// Render renders rules and routes as stable text, one per line, sorted:
// "rule 7100: from 198.18.1.2 lookup 7100" and "route default via … table 7100".
// Tests compare kernel state by it.
func Render(rules []Rule, routes []Route) string {
	rules = slices.Clone(rules)
	routes = slices.Clone(routes)
	for i := range rules {
		rules[i] = rules[i].Canonical()
	}
	for i := range routes {
		routes[i] = routes[i].Canonical()
	}
	SortRules(rules)
	SortRoutes(routes)
	var b strings.Builder
	for _, r := range rules {
		b.WriteString("rule " + r.String() + "\n")
	}
	for _, r := range routes {
		b.WriteString("route " + r.String() + "\n")
	}
	return b.String()
}
