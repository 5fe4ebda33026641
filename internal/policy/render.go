package policy

import (
	"cmp"
	"fmt"
	"hash/fnv"
	"maps"
	"net/netip"
	"path"
	"slices"
	"strconv"

	"github.com/mpfleet/mpfleet/internal/mptcp"
	"github.com/mpfleet/mpfleet/internal/reconcile"
	"github.com/mpfleet/mpfleet/internal/route"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
)

// Interface is one network interface of a host as rendering sees it.
type Interface struct {
	Name  string
	Index int
	// Up is true when the link is administratively and operationally up.
	Up bool
	// Addrs are the interface's addresses with their subnet lengths.
	Addrs []netip.Prefix
	// Gateways are the gateways of the main table's routes through the
	// interface, the preferred first.
	Gateways []netip.Addr
}

// Rendered is a policy rendered against one host's interfaces.
type Rendered struct {
	// Config is the host's desired kernel state.
	Config reconcile.HostConfig
	// Excluded are addresses the rules selected that were left out because
	// a namespace holds at most mptcp.MaxEndpoints endpoints, in address
	// order.
	Excluded []netip.Addr
	// Problems say what of the policy could not be rendered as asked on this
	// host: an address whose table gets no default route because no gateway
	// is known (CODE_GATEWAY_UNKNOWN), an address left out by the endpoint
	// maximum (CODE_ENDPOINTS_EXCLUDED); each names the interface and address
	// and says how to fix it.
	Problems []*pb.HostProblem
	// Paths are the managed paths, one per endpoint address, in address
	// order: what the agent checks and reports as MptcpHealth.paths.
	Paths []Path
}

// Path is one managed path: an endpoint address on its interface, with the
// routing the policy gives it.
type Path struct {
	// Addr is the endpoint address with its subnet length.
	Addr netip.Prefix
	// IfIndex and IfName name the interface.
	IfIndex int
	IfName  string
	// Up is whether the link was up when rendered.
	Up bool
	// Routed is whether policy routing is enabled for the path.
	Routed bool
	// Gateway is the gateway of the path's table; invalid when none is
	// known (or routing is off).
	Gateway netip.Addr
	// Table is the path's routing table, 0 when not routed (or the link is
	// down).
	Table int
}

// SysctlProblems returns a CODE_SYSCTL_UNSUPPORTED problem for each sysctl
// (full name, as reconcile.HostConfig.WithoutUnsupported returns them) the
// host's kernel lacks.
func SysctlProblems(names []string) []*pb.HostProblem {
	var out []*pb.HostProblem
	for _, n := range names {
		out = append(out, &pb.HostProblem{
			Code: pb.HostProblem_CODE_SYSCTL_UNSUPPORTED,
			Message: fmt.Sprintf("the policy sets %s but this host's kernel lacks it, so it is not managed here (remove it from the policy's sysctls for such hosts, or run a kernel that has it)",
				n),
		})
	}
	return out
}

// ProblemMessages returns the messages of problems, for the places that show
// them as sentences.
func ProblemMessages(ps []*pb.HostProblem) []string {
	out := make([]string, 0, len(ps))
	for _, p := range ps {
		out = append(out, p.GetMessage())
	}
	return out
}

// kernelDefaultLimits are the limits of a fresh namespace, which a policy
// that does not name a limit gets: the agent owns the limits.
var kernelDefaultLimits = mptcp.Limits{Subflows: 2, AddAddrAccepted: 0}

// Render renders policy p against a host's interfaces. It is a pure
// function: the same policy and interfaces, in any order, give the same
// result. An invalid policy (ValidatePolicy) is an *InvalidError.
//
// Endpoints: the rules are taken in order; each selects the addresses, in
// address order, that match all its criteria (interface glob with path.Match,
// CIDR, family) and no earlier rule took; an address gets the flags and port
// of the first rule that selects it. Link-local, loopback, multicast and
// unspecified addresses are never selected. The first mptcp.MaxEndpoints
// selected addresses become endpoints, bound to their interface; the rest are
// Excluded. Endpoint IDs are left 0, so that reconcile.Plan keeps the ID of an
// endpoint that exists and picks the lowest free one for a new one.
//
// Links that are down (not administratively and operationally up) keep their
// endpoints but get no routing: the kernel refuses routes through a link
// that is down, and deletes those there were. Keeping the endpoint is what
// lets a subflow over the link survive a flap: deleting an endpoint closes its
// subflows, and adding it back opens new ones only for a "subflow" endpoint
// (a "signal" one is announced again); a "fullmesh" endpoint without
// "subflow" only joins addresses the peer announces from then on, so a
// subflow it lost would not come back. (Measured on 6.18: with the endpoint
// kept, the subflow resumes by retransmission once the routes are back.)
//
// Routing, when enabled: each endpoint address on an up link gets a rule
// `from ADDR/32 (or /128) lookup T priority P` and in table T its connected
// route and a default route through its gateway (see route.Source). T and P
// share one offset into the policy's table and priority ranges, chosen by a
// hash of the address with linear probing (addresses probing in address
// order), so that an address keeps its table when others come and go. The
// gateway is that of the first routing.gateways entry whose glob matches the
// interface and that yields a gateway of the address's family (an address
// of that family, or a host_index inside the address's prefix, see
// HostIndexAddr); else the interface's first gateway of that family inside
// the address's subnet, or (IPv6) a link-local one. A candidate that cannot
// be a gateway on this host is passed over as if it yielded nothing: one of
// the host's own addresses, the network or broadcast address of one of the
// interface's IPv4 prefixes, or an address no host routes through
// (unspecified, multicast, loopback, IPv4 link-local). With none, the table
// has no default route and a CODE_GATEWAY_UNKNOWN problem says so, naming
// the candidates passed over and why. Each endpoint address is also a Path,
// with its gateway and table.
//
// Limits: the agent owns them, so an unset limit is the kernel default
// (subflows 2, add_addr_accepted 0). Enabled and the sysctls are managed
// only when set.
func Render(p *pb.MultipathPolicy, ifaces []Interface) (Rendered, error) {
	var vs Violations
	ValidatePolicy(&vs, "policy", p)
	if err := vs.Err(); err != nil {
		return Rendered{}, err
	}
	var out Rendered
	cfg := &out.Config
	tmin, tmax, pmin, pmax := RoutingRange(p.GetRouting())
	cfg.Range = route.Range{TableMin: tmin, TableMax: tmax, PriorityMin: pmin, PriorityMax: pmax}
	if p != nil && p.Enabled != nil {
		cfg.Enabled = ptr(p.GetEnabled())
	}
	lim := kernelDefaultLimits
	if l := p.GetLimits(); l != nil && l.Subflows != nil {
		lim.Subflows = l.GetSubflows()
	}
	if l := p.GetLimits(); l != nil && l.AddAddrAccepted != nil {
		lim.AddAddrAccepted = l.GetAddAddrAccepted()
	}
	cfg.Limits = &lim
	cfg.Sysctls = renderSysctls(p.GetSysctls())

	// Candidate addresses, each once, in address order.
	cands := candidates(ifaces)
	type pick struct {
		cand
		rule int
	}
	var picks []pick
	taken := map[netip.Addr]bool{}
	for i, r := range p.GetEndpoints() {
		for _, c := range cands {
			if !taken[c.addr.Addr()] && ruleMatches(r, c) {
				taken[c.addr.Addr()] = true
				picks = append(picks, pick{c, i})
			}
		}
	}
	if len(picks) > mptcp.MaxEndpoints {
		rest := picks[mptcp.MaxEndpoints:]
		slices.SortFunc(rest, func(a, b pick) int { return a.addr.Addr().Compare(b.addr.Addr()) })
		for _, pk := range rest {
			out.Excluded = append(out.Excluded, pk.addr.Addr())
			out.Problems = append(out.Problems, &pb.HostProblem{
				Code: pb.HostProblem_CODE_ENDPOINTS_EXCLUDED, Interface: pk.iface.Name, Address: pk.addr.Addr().String(),
				Message: fmt.Sprintf("%s on %s is selected by endpoints[%d] but left out: a network namespace holds at most %d MPTCP endpoints (narrow the endpoint rules, or order them so that the addresses wanted come first)",
					pk.addr.Addr(), pk.iface.Name, pk.rule, mptcp.MaxEndpoints),
			})
		}
		picks = picks[:mptcp.MaxEndpoints]
	}
	slices.SortFunc(picks, func(a, b pick) int { return a.addr.Addr().Compare(b.addr.Addr()) })
	for _, pk := range picks {
		r := p.GetEndpoints()[pk.rule]
		cfg.Endpoints = append(cfg.Endpoints, mptcp.Endpoint{
			Addr:    pk.addr.Addr(),
			Port:    uint16(r.GetPort()),
			Flags:   FlagsFromProto(r.GetFlags()),
			IfIndex: pk.iface.Index,
		})
	}

	routed := p.GetRouting().GetEnabled()
	local := localAddrs(ifaces)
	width := min(tmax-tmin, pmax-pmin) + 1
	used := map[uint32]bool{}
	for _, pk := range picks { // in address order
		path := Path{Addr: pk.addr, IfIndex: pk.iface.Index, IfName: pk.iface.Name, Up: pk.iface.Up, Routed: routed}
		if routed {
			// The gateway is resolved for a down link too: its path reports
			// what it would use.
			gw, problem := gateway(p.GetRouting(), pk.iface, pk.addr, local)
			if problem != nil {
				out.Problems = append(out.Problems, problem)
			}
			path.Gateway = gw
		}
		if routed && pk.iface.Up {
			off := addrHash(pk.addr.Addr()) % width
			for used[off] {
				off = (off + 1) % width
			}
			used[off] = true
			src := route.Source{
				Addr: pk.addr, LinkIndex: pk.iface.Index, Gateway: path.Gateway,
				Table: int(tmin + off), Priority: int(pmin + off),
			}
			path.Table = src.Table
			cfg.Rules = append(cfg.Rules, src.Rule())
			cfg.Routes = append(cfg.Routes, src.Routes()...)
		}
		out.Paths = append(out.Paths, path)
	}
	route.SortRules(cfg.Rules)
	route.SortRoutes(cfg.Routes)
	if err := cfg.Validate(); err != nil {
		return Rendered{}, fmt.Errorf("policy: rendered config: %w", err)
	}
	return out, nil
}

type cand struct {
	addr  netip.Prefix
	iface *Interface
}

// candidates returns the selectable addresses of the interfaces, each
// address once (the interface with the lowest name, then index, wins), in
// address order.
func candidates(ifaces []Interface) []cand {
	ifs := make([]*Interface, len(ifaces))
	for i := range ifaces {
		ifs[i] = &ifaces[i]
	}
	slices.SortStableFunc(ifs, func(a, b *Interface) int {
		return cmp.Or(cmp.Compare(a.Name, b.Name), cmp.Compare(a.Index, b.Index))
	})
	seen := map[netip.Addr]bool{}
	var cs []cand
	for _, ifc := range ifs {
		if ifc.Index <= 0 {
			continue
		}
		for _, a := range ifc.Addrs {
			if !a.IsValid() {
				continue
			}
			if !Selectable(a.Addr()) || seen[a.Addr()] {
				continue
			}
			seen[a.Addr()] = true
			cs = append(cs, cand{addr: a, iface: ifc})
		}
	}
	slices.SortFunc(cs, func(x, y cand) int { return x.addr.Addr().Compare(y.addr.Addr()) })
	return cs
}

// Selectable reports whether a can ever become an MPTCP endpoint: it is a
// unicast address that is not link-local, loopback or unspecified, without a
// zone.
func Selectable(a netip.Addr) bool {
	return a.IsValid() && a.Zone() == "" && !a.Is4In6() && !a.IsUnspecified() && !a.IsLoopback() &&
		!a.IsLinkLocalUnicast() && !a.IsMulticast() && !a.IsInterfaceLocalMulticast()
}

func ruleMatches(r *pb.EndpointRule, c cand) bool {
	a := c.addr.Addr()
	switch r.GetFamily() {
	case pb.AddressFamily_ADDRESS_FAMILY_IPV4:
		if !a.Is4() {
			return false
		}
	case pb.AddressFamily_ADDRESS_FAMILY_IPV6:
		if a.Is4() {
			return false
		}
	}
	if g := r.GetInterface(); g != "" {
		if ok, err := path.Match(g, c.iface.Name); err != nil || !ok {
			return false
		}
	}
	if s := r.GetCidr(); s != "" {
		pfx, err := netip.ParsePrefix(s)
		if err != nil || !pfx.Contains(a) {
			return false
		}
	}
	return true
}

// addrHash is FNV-1a over the 16-byte form of a: fixed, so that a table
// assignment never changes between versions.
func addrHash(a netip.Addr) uint32 {
	h := fnv.New32a()
	b := a.As16()
	_, _ = h.Write(b[:])
	return h.Sum32()
}

// renderSysctls maps the policy's sysctls to their names under net.mptcp.
func renderSysctls(s *pb.Sysctls) map[string]string {
	m := map[string]string{}
	str := func(name string, v *string) {
		if v != nil {
			m["net.mptcp."+name] = *v
		}
	}
	num := func(name string, v *uint32) {
		if v != nil {
			m["net.mptcp."+name] = strconv.FormatUint(uint64(*v), 10)
		}
	}
	boolean := func(name string, v *bool) {
		if v != nil {
			m["net.mptcp."+name] = boolString(*v)
		}
	}
	if s == nil {
		return nil
	}
	str("scheduler", s.Scheduler)
	str("path_manager", s.PathManager)
	boolean("checksum_enabled", s.ChecksumEnabled)
	num("add_addr_timeout", s.AddAddrTimeout)
	boolean("allow_join_initial_addr_port", s.AllowJoinInitialAddrPort)
	num("stale_loss_cnt", s.StaleLossCnt)
	num("blackhole_timeout", s.BlackholeTimeout)
	num("close_timeout", s.CloseTimeout)
	if len(m) == 0 {
		return nil
	}
	return m
}

func boolString(b bool) string {
	if b {
		return "1"
	}
	return "0"
}

func ptr[T any](v T) *T { return &v }

var flagMap = []struct {
	pb pb.EndpointFlag
	f  mptcp.Flags
}{
	{pb.EndpointFlag_ENDPOINT_FLAG_SIGNAL, mptcp.FlagSignal},
	{pb.EndpointFlag_ENDPOINT_FLAG_SUBFLOW, mptcp.FlagSubflow},
	{pb.EndpointFlag_ENDPOINT_FLAG_BACKUP, mptcp.FlagBackup},
	{pb.EndpointFlag_ENDPOINT_FLAG_FULLMESH, mptcp.FlagFullmesh},
	{pb.EndpointFlag_ENDPOINT_FLAG_LAMINAR, mptcp.FlagLaminar},
}

// FlagsFromProto converts API endpoint flags to the kernel's; unknown ones
// are left out.
func FlagsFromProto(fs []pb.EndpointFlag) mptcp.Flags {
	var out mptcp.Flags
	for _, f := range fs {
		for _, m := range flagMap {
			if m.pb == f {
				out |= m.f
			}
		}
	}
	return out
}

// FlagsToProto converts kernel endpoint flags to the API's, in the enum's
// order; the kernel-only implicit flag has no API value and is left out.
func FlagsToProto(f mptcp.Flags) []pb.EndpointFlag {
	var out []pb.EndpointFlag
	for _, m := range flagMap {
		if f&m.f != 0 {
			out = append(out, m.pb)
		}
	}
	return out
}

// InterfacesFromFacts returns the interfaces of an agent's facts; addresses
// and gateways that do not parse are left out.
func InterfacesFromFacts(f *pb.HostFacts) []Interface {
	var out []Interface
	for _, fi := range f.GetInterfaces() {
		ifc := Interface{Name: fi.GetName(), Index: int(fi.GetIndex()), Up: fi.GetUp()}
		for _, s := range fi.GetAddresses() {
			if p, err := netip.ParsePrefix(s); err == nil {
				ifc.Addrs = append(ifc.Addrs, p)
			} else if a, err := netip.ParseAddr(s); err == nil {
				ifc.Addrs = append(ifc.Addrs, netip.PrefixFrom(a, a.BitLen()))
			}
		}
		for _, s := range fi.GetGateways() {
			if a, err := netip.ParseAddr(s); err == nil {
				ifc.Gateways = append(ifc.Gateways, a)
			}
		}
		out = append(out, ifc)
	}
	return out
}

// linkNames maps interface indexes to names: ifaces first, then links.
func linkNames(ifaces []Interface, links map[int]string) map[int]string {
	m := maps.Clone(links)
	if m == nil {
		m = map[int]string{}
	}
	for _, i := range ifaces {
		if i.Index > 0 && i.Name != "" {
			m[i.Index] = i.Name
		}
	}
	return m
}

// AppliedFromState renders a state read back from the kernel for the API,
// naming interfaces from ifaces (or the state's own link names).
func AppliedFromState(s reconcile.State, ifaces []Interface) *pb.AppliedState {
	names := linkNames(ifaces, s.Links)
	a := &pb.AppliedState{}
	eps := slices.Clone(s.Endpoints)
	slices.SortFunc(eps, func(x, y mptcp.Endpoint) int { return cmp.Or(cmp.Compare(x.ID, y.ID), x.Addr.Compare(y.Addr)) })
	for _, e := range eps {
		a.Endpoints = append(a.Endpoints, &pb.AppliedEndpoint{
			Id: uint32(e.ID), Address: e.Addr.String(), Port: uint32(e.Port),
			Flags: FlagsToProto(e.Flags), Interface: names[e.IfIndex],
		})
	}
	if s.Limits != nil {
		a.Limits = &pb.Limits{Subflows: ptr(s.Limits.Subflows), AddAddrAccepted: ptr(s.Limits.AddAddrAccepted)}
	}
	rules := slices.Clone(s.Rules)
	route.SortRules(rules)
	for _, r := range rules {
		a.Rules = append(a.Rules, &pb.AppliedRule{Priority: uint32(r.Priority), From: r.Src.String(), Table: uint32(r.Table)})
	}
	routes := slices.Clone(s.Routes)
	route.SortRoutes(routes)
	for _, r := range routes {
		ar := &pb.AppliedRoute{Table: uint32(r.Table), Destination: r.Dst.String(), Interface: names[r.LinkIndex]}
		if r.Gateway.IsValid() {
			ar.Gateway = r.Gateway.String()
		}
		if r.Src.IsValid() {
			ar.Source = r.Src.String()
		}
		a.Routes = append(a.Routes, ar)
	}
	if s.Enabled != nil || len(s.Sysctls) > 0 {
		a.Sysctls = map[string]string{}
	}
	for name, v := range s.Sysctls {
		a.Sysctls[shortSysctl(name)] = v
	}
	if s.Enabled != nil {
		a.Sysctls["enabled"] = boolString(*s.Enabled)
	}
	return a
}

func shortSysctl(name string) string {
	if len(name) > len("net.mptcp.") && name[:len("net.mptcp.")] == "net.mptcp." {
		return name[len("net.mptcp."):]
	}
	return name
}

// StateFromApplied is the inverse of AppliedFromState: the kernel state an
// agent reported, as reconcile.Plan takes it, with interface names resolved
// through ifaces (the host's facts). Entries that do not parse, and those on
// an interface ifaces does not name, are left out. A connected IPv4 route
// gets scope link, as mpfleet makes them.
func StateFromApplied(a *pb.AppliedState, ifaces []Interface) reconcile.State {
	byName := map[string]int{}
	for _, i := range ifaces {
		if i.Name != "" && i.Index > 0 {
			if _, dup := byName[i.Name]; !dup {
				byName[i.Name] = i.Index
			}
		}
	}
	s := reconcile.State{Links: linkNames(ifaces, nil)}
	index := func(name string) (int, bool) {
		if name == "" {
			return 0, true
		}
		i, ok := byName[name]
		return i, ok
	}
	for _, e := range a.GetEndpoints() {
		addr, err := netip.ParseAddr(e.GetAddress())
		idx, ok := index(e.GetInterface())
		if err != nil || !ok || e.GetId() > 255 || e.GetPort() > 65535 {
			continue
		}
		s.Endpoints = append(s.Endpoints, mptcp.Endpoint{
			ID: uint8(e.GetId()), Addr: addr, Port: uint16(e.GetPort()),
			Flags: FlagsFromProto(e.GetFlags()), IfIndex: idx,
		})
	}
	if l := a.GetLimits(); l != nil {
		s.Limits = &mptcp.Limits{Subflows: l.GetSubflows(), AddAddrAccepted: l.GetAddAddrAccepted()}
	}
	for _, r := range a.GetRules() {
		src, err := netip.ParsePrefix(r.GetFrom())
		if err != nil {
			continue
		}
		s.Rules = append(s.Rules, route.Rule{Priority: int(r.GetPriority()), Src: src, Table: int(r.GetTable())}.Canonical())
	}
	for _, r := range a.GetRoutes() {
		dst, err := netip.ParsePrefix(r.GetDestination())
		idx, ok := byName[r.GetInterface()]
		if err != nil || !ok {
			continue
		}
		x := route.Route{Table: int(r.GetTable()), Dst: dst, LinkIndex: idx}
		if r.GetGateway() != "" {
			if x.Gateway, err = netip.ParseAddr(r.GetGateway()); err != nil {
				continue
			}
		}
		if r.GetSource() != "" {
			if x.Src, err = netip.ParseAddr(r.GetSource()); err != nil {
				continue
			}
		}
		if dst.Addr().Is4() && !x.Gateway.IsValid() {
			x.Scope = route.ScopeLink
		}
		s.Routes = append(s.Routes, x.Canonical())
	}
	for name, v := range a.GetSysctls() {
		if name == "enabled" {
			s.Enabled = ptr(v != "0")
			continue
		}
		if s.Sysctls == nil {
			s.Sysctls = map[string]string{}
		}
		s.Sysctls["net.mptcp."+name] = v
	}
	return s
}

// OpsToProto renders a plan for the API: each op's kind and its dry-run
// description.
func OpsToProto(ops reconcile.Ops) []*pb.PlanOperation {
	out := make([]*pb.PlanOperation, 0, len(ops))
	for _, op := range ops {
		out = append(out, &pb.PlanOperation{Kind: string(op.Kind), Description: op.String()})
	}
	return out
}
