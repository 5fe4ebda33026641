package route

import (
	"cmp"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Proto is a routing protocol number: the rtm_protocol of a route and the
// FRA_PROTOCOL of a rule, which `ip route` and `ip rule` print as "proto".
// The kernel interprets none above RTPROT_STATIC; routing daemons mark what
// they install with their own (bird 12, bgp 186), so that they can tell it
// from what others installed.
type Proto uint8

// Protocol marks every rule and route mpfleet adds. The agent lists, changes
// and deletes only entries inside its Range that carry it.
//
// Why 173 (0xad): it is in neither the kernel's RTPROT_* list (0–4, 8–18 up
// to keepalived, 42 babel, 84 ovn, 99 openr, 186–189 bgp/isis/ospf/rip, 192
// eigrp, as of Linux 6.18) nor iproute2's /etc/iproute2/rt_protos, and clear
// of the numbers other tools are known to take for themselves: FRR's 186–198
// (ripng, nhrp, ldp, sharp, pbr, zstatic, openfabric, srte), Calico's 80,
// OpenContrail's 109, Monogon's 129, osctld's 230 and mwan4's 77 (0x4d, the
// "M" one would pick first). The kernel has assigned its new numbers from the
// low end (17, 18, 42, 84, 99), so a number in the unassigned middle is the
// least likely to be claimed later. `echo "173 mpfleet" >
// /etc/iproute2/rt_protos.d/mpfleet.conf` makes ip print it by name.
const Protocol Proto = 173

// Protocols that matter to mpfleet besides its own.
const (
	// ProtoUnspec is what a rule gets when it is added without a protocol:
	// by `ip rule add` and by mpfleet agents before Protocol.
	ProtoUnspec Proto = 0
	// ProtoKernel marks what the kernel made itself.
	ProtoKernel Proto = 2
	// ProtoBoot is what `ip route add` gives a route by default.
	ProtoBoot Proto = 3
	// ProtoStatic is what mpfleet agents before Protocol gave their routes.
	ProtoStatic Proto = 4
)

// LegacyRuleProtocol and LegacyRouteProtocol are the protocols mpfleet's rules
// and routes carried before Protocol. An entry with one of them that is
// exactly what mpfleet wants is adopted (re-made with Protocol, see
// routenl.Manager.SetRuleProtocol) rather than reported as foreign, so that agents
// that upgrade take over what their predecessors made.
const (
	LegacyRuleProtocol  = ProtoUnspec
	LegacyRouteProtocol = ProtoStatic
)

// CheckAdoption allows re-making a rule or route with another protocol only
// between Protocol and legacy (LegacyRuleProtocol or LegacyRouteProtocol):
// adopting what an older agent made, or undoing that. Anything else is
// someone else's and fails wrapping ErrInvalid.
func CheckAdoption(from, to, legacy Proto) error {
	if (from == legacy && to == Protocol) || (from == Protocol && to == legacy) {
		return nil
	}
	return fmt.Errorf("only %v and %v are exchanged, not %v for %v: %w", legacy, Protocol, from, to, ErrInvalid)
}

// protoNames are the names iproute2 and the kernel give protocol numbers.
var protoNames = names[Proto]{
	0: "unspec", 1: "redirect", 2: "kernel", 3: "boot", 4: "static",
	8: "gated", 9: "ra", 10: "mrt", 11: "zebra", 12: "bird", 13: "dnrouted",
	14: "xorp", 15: "ntk", 16: "dhcp", 17: "mrouted", 18: "keepalived",
	42: "babel", 84: "ovn", 99: "openr", 186: "bgp", 187: "isis", 188: "ospf",
	189: "rip", 192: "eigrp", Protocol: "mpfleet",
}

// String returns the protocol's name ("boot", "mpfleet") or its number.
func (p Proto) String() string { return protoNames.format(p) }

// MarshalText implements encoding.TextMarshaler.
func (p Proto) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler: a name String returns,
// or a number 0–255.
func (p *Proto) UnmarshalText(b []byte) error { return protoNames.parse("protocol", b, p) }

// Type is a route's type (RTN_*).
type Type uint8

// Route types, with the kernel's values. mpfleet makes unicast routes only.
const (
	TypeUnicast     Type = 1
	TypeBlackhole   Type = 6
	TypeUnreachable Type = 7
	TypeProhibit    Type = 8
	TypeThrow       Type = 9
)

var typeNames = names[Type]{
	0: "unspec", 1: "unicast", 2: "local", 3: "broadcast", 4: "anycast", 5: "multicast",
	6: "blackhole", 7: "unreachable", 8: "prohibit", 9: "throw", 10: "nat", 11: "xresolve",
}

// String returns the type's name as `ip route` prints it.
func (t Type) String() string { return typeNames.format(t) }

// MarshalText implements encoding.TextMarshaler.
func (t Type) MarshalText() ([]byte, error) { return []byte(t.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (t *Type) UnmarshalText(b []byte) error { return typeNames.parse("route type", b, t) }

// ForeignRule is a rule inside the owned Range (its priority or the table it
// looks up is in it) that is not mpfleet's: it lacks Protocol, or it is not
// the plain `from PREFIX lookup TABLE` rule mpfleet makes. mpfleet never
// changes or deletes it; it reports it.
type ForeignRule struct {
	// Rule holds the priority, the source (invalid for "from all") and the
	// table looked up (0 for a rule that looks none up: goto, blackhole...).
	Rule
	// Protocol is the protocol the kernel reports for it.
	Protocol Proto `json:"protocol"`
	// Detail is what else the rule matches or does, as `ip rule` prints it
	// ("not", "to 198.18.9.0/24", "fwmark 0x1", "iif eth0", "goto 7000",
	// "unreachable"); empty for a plain from-lookup rule.
	Detail string `json:"detail,omitempty"`
}

// Plain reports whether f is a rule of the shape mpfleet makes: a source, a
// table, nothing else.
func (f ForeignRule) Plain() bool { return f.Detail == "" && f.Src.IsValid() && f.Table > 0 }

// String renders f as `ip rule` does, with its protocol:
// "7150: from 198.18.1.3 lookup 100 proto boot".
func (f ForeignRule) String() string {
	var b strings.Builder
	from := "all"
	if f.Src.IsValid() {
		from = prefixString(f.Src)
	}
	fmt.Fprintf(&b, "%d: from %s", f.Priority, from)
	if f.Detail != "" {
		b.WriteString(" " + f.Detail)
	}
	if f.Table > 0 {
		b.WriteString(" lookup " + strconv.Itoa(f.Table))
	}
	b.WriteString(" proto " + f.Protocol.String())
	return b.String()
}

// ForeignRoute is a route in an owned table that is not mpfleet's: it lacks
// Protocol, or it is not the unicast, metric 0, single-path route mpfleet
// makes. mpfleet never changes or deletes it; it reports it.
type ForeignRoute struct {
	// Route holds what the model has: table, destination, gateway, output
	// interface (0 for a multipath or a blackhole-like route), source and
	// scope.
	Route
	// Protocol is the protocol the kernel reports for it.
	Protocol Proto `json:"protocol"`
	// Type is its type: unicast, or blackhole, unreachable, prohibit,
	// throw...
	Type Type `json:"type"`
	// Metric is its priority (`ip route`'s "metric").
	Metric int `json:"metric,omitempty"`
	// Nexthops counts the next hops of a multipath route (0 otherwise).
	Nexthops int `json:"nexthops,omitempty"`
}

// Plain reports whether f is a route of the shape mpfleet makes: unicast,
// metric 0, one next hop through an interface.
func (f ForeignRoute) Plain() bool {
	return f.Type == TypeUnicast && f.Metric == 0 && f.Nexthops == 0 && f.LinkIndex > 0
}

// String renders f in `ip route` style with its type, protocol and metric:
// "unreachable default table 7150 proto boot metric 100".
func (f ForeignRoute) String() string {
	var b strings.Builder
	if f.Type != TypeUnicast {
		b.WriteString(f.Type.String() + " ")
	}
	if f.LinkIndex > 0 {
		b.WriteString(f.Format(""))
	} else {
		dst := "default"
		if f.Dst.IsValid() && f.Dst.Bits() > 0 {
			dst = prefixString(f.Dst)
		}
		fmt.Fprintf(&b, "%s table %d", dst, f.Table)
	}
	b.WriteString(" proto " + f.Protocol.String())
	if f.Metric != 0 {
		b.WriteString(" metric " + strconv.Itoa(f.Metric))
	}
	if f.Nexthops > 0 {
		fmt.Fprintf(&b, " (%d nexthops)", f.Nexthops)
	}
	return b.String()
}

// SortForeignRules sorts foreign rules as SortRules does, then by protocol
// and detail.
func SortForeignRules(fs []ForeignRule) {
	slices.SortFunc(fs, func(a, b ForeignRule) int {
		return cmp.Or(compareRules(a.Rule, b.Rule), cmp.Compare(a.Protocol, b.Protocol), strings.Compare(a.Detail, b.Detail))
	})
}

// SortForeignRoutes sorts foreign routes as SortRoutes does, then by type,
// metric and protocol.
func SortForeignRoutes(fs []ForeignRoute) {
	slices.SortFunc(fs, func(a, b ForeignRoute) int {
		return cmp.Or(CompareRoutes(a.Route, b.Route), cmp.Compare(a.Type, b.Type),
			cmp.Compare(a.Metric, b.Metric), cmp.Compare(a.Protocol, b.Protocol), cmp.Compare(a.Nexthops, b.Nexthops))
	})
}
