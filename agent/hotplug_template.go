package agent

// The fast path's template: what an address that appears on an interface
// would get, worked out when the base is made, so that the event costs a
// map lookup. It answers only where policy.Render and reconcile.Plan
// cannot answer otherwise, and says "unsure" everywhere else, which sends
// the address the render-and-plan way (hotplug.go); TestHotTemplateAgrees
// holds it to that on random policies and hosts.
//
// Where it answers: a policy without routing, over a kernel that holds
// exactly what the base renders (nothing pending). An address that is new
// to the host (on no interface yet), on an interface that is up and has not
// flapped since its endpoints were made, then gets what Render gives it:
// nothing if it is not Selectable or no endpoint rule selects it (the
// first rule whose family, interface glob and CIDR match gives the flags
// and port), else an endpoint bound to the interface, as long as the
// addresses selected stay within mptcp.MaxEndpoints (past it, one would
// push another out: a deletion). Render leaves endpoint IDs to Plan, which
// gives a new endpoint the lowest ID the kernel's endpoints leave free (with
// nothing pending, every endpoint the kernel holds is one the policy
// keeps). Without routing, an endpoint changes nothing of what decides
// the controller connection's route, so management-path protection has
// nothing to hold back.

import (
	"net/netip"
	"path"

	"github.com/mpfleet/mpfleet/internal/mptcp"
	"github.com/mpfleet/mpfleet/internal/policy"
	"github.com/mpfleet/mpfleet/internal/reconcile"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
)

// hotTemplate answers for an address on one of the base's interfaces.
type hotTemplate struct {
	links []hotLink
	// addrs holds every address on the host, by address.
	addrs map[netip.Addr]hotAddr
	// picks is how many addresses the policy selects (endpoints and
	// excluded ones).
	picks int
	// ids are the endpoint IDs the kernel holds.
	ids [256]bool
}

// hotLink is one interface of the base.
type hotLink struct {
	index int
	// usable: up, and not down since its endpoints were made.
	usable bool
	// rules are the policy's endpoint rules whose interface glob matches
	// the interface, in the policy's order.
	rules []hotRule
}

// hotRule is an endpoint rule as it applies on one interface.
type hotRule struct {
	v4, v6 bool         // the families it selects
	cidr   netip.Prefix // the range it selects from; invalid: any
	flags  mptcp.Flags
	port   uint16
}

// hotAddr is where an address is.
type hotAddr struct {
	link   int
	prefix netip.Prefix
}

// hotVerdict is the template's answer.
type hotVerdict int

const (
	hotUnsure      hotVerdict = iota // render and plan
	hotKnown                         // on its interface already: nothing changes
	hotNotSelected                   // no endpoint: only the base learns of it
	hotEndpoint                      // this endpoint, and nothing else
)

// newHotTemplate returns the template of policy p on ifaces over the kernel
// state st, which holds what p renders there, with flapped the links down
// since their endpoints were made; nil when p routes.
func newHotTemplate(p *pb.MultipathPolicy, ifaces []policy.Interface, st reconcile.State, flapped map[int]bool) *hotTemplate {
	if p.GetRouting().GetEnabled() {
		return nil
	}
	r, err := policy.Render(p, ifaces)
	if err != nil {
		return nil
	}
	t := &hotTemplate{addrs: map[netip.Addr]hotAddr{}, picks: len(r.Config.Endpoints) + len(r.Excluded)}
	for _, e := range st.Endpoints {
		t.ids[e.ID] = true
	}
	for _, ifc := range ifaces {
		l := hotLink{index: ifc.Index, usable: ifc.Index > 0 && ifc.Up && !flapped[ifc.Index]}
		for _, er := range p.GetEndpoints() {
			if hr, ok := hotRuleOn(er, ifc.Name); ok {
				l.rules = append(l.rules, hr)
			}
		}
		t.links = append(t.links, l)
		for _, a := range ifc.Addrs {
			if a.IsValid() {
				t.addrs[a.Addr()] = hotAddr{ifc.Index, a}
			}
		}
	}
	return t
}

// hotRuleOn returns endpoint rule er as it applies on the interface name,
// and false if it can select nothing there.
func hotRuleOn(er *pb.EndpointRule, name string) (hotRule, bool) {
	if g := er.GetInterface(); g != "" {
		if ok, err := path.Match(g, name); err != nil || !ok {
			return hotRule{}, false
		}
	}
	r := hotRule{flags: policy.FlagsFromProto(er.GetFlags()), port: uint16(er.GetPort())}
	switch er.GetFamily() {
	case pb.AddressFamily_ADDRESS_FAMILY_IPV4:
		r.v4 = true
	case pb.AddressFamily_ADDRESS_FAMILY_IPV6:
		r.v6 = true
	default:
		r.v4, r.v6 = true, true
	}
	if s := er.GetCidr(); s != "" {
		pfx, err := netip.ParsePrefix(s)
		if err != nil {
			return hotRule{}, false
		}
		r.cidr = pfx
	}
	return r, true
}

// lookup answers for the address p appearing on link; with hotEndpoint,
// the endpoint to add. It allocates nothing.
func (t *hotTemplate) lookup(link int, p netip.Prefix) (mptcp.Endpoint, hotVerdict) {
	var l *hotLink
	for i := range t.links {
		if t.links[i].index == link {
			l = &t.links[i]
			break
		}
	}
	if l == nil || !l.usable {
		return mptcp.Endpoint{}, hotUnsure
	}
	a := p.Addr()
	if x, ok := t.addrs[a]; ok {
		if x.link == link && x.prefix == p {
			return mptcp.Endpoint{}, hotKnown
		}
		return mptcp.Endpoint{}, hotUnsure // on another interface, or its prefix changed
	}
	if !policy.Selectable(a) {
		return mptcp.Endpoint{}, hotNotSelected
	}
	for _, r := range l.rules {
		if (a.Is4() && !r.v4) || (!a.Is4() && !r.v6) || (r.cidr.IsValid() && !r.cidr.Contains(a)) {
			continue
		}
		if t.picks >= mptcp.MaxEndpoints {
			return mptcp.Endpoint{}, hotUnsure
		}
		id := t.freeID()
		if id == 0 {
			return mptcp.Endpoint{}, hotUnsure
		}
		return mptcp.Endpoint{ID: id, Addr: a, Port: r.port, Flags: r.flags, IfIndex: link}, hotEndpoint
	}
	return mptcp.Endpoint{}, hotNotSelected
}

// freeID returns the lowest endpoint ID not in use, 0 if none is left.
func (t *hotTemplate) freeID() uint8 {
	for id := 1; id < len(t.ids); id++ {
		if !t.ids[id] {
			return uint8(id)
		}
	}
	return 0
}

// note records that ad is on the host now, with an endpoint of ID id (0:
// none).
func (t *hotTemplate) note(ad addedAddr, id uint8) {
	t.addrs[ad.addr.Addr()] = hotAddr{ad.link, ad.addr}
	if id != 0 {
		t.ids[id] = true
		t.picks++
	}
}
