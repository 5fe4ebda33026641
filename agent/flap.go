package agent

// Links that go down and come back: their gateways remembered, their
// subflow endpoints re-created.

import (
	"net/netip"
	"slices"

	"github.com/mpfleet/mpfleet/internal/mptcp"
	"github.com/mpfleet/mpfleet/internal/policy"
	"github.com/mpfleet/mpfleet/internal/reconcile"
)

// recreate returns, for each "subflow" endpoint that stays on a link that
// went down and is up again, a delete and an add. The in-kernel path manager
// never re-opens a subflow that closed (a join that failed while the link was
// away, a subflow the peer reset): adding a "subflow" endpoint opens subflows
// on existing connections. Deleting closes the endpoint's subflows that
// survived, for one round trip.
//
// A "signal" endpoint is left alone: deleting and re-adding it (RM_ADDR then
// ADD_ADDR with the same id) while a subflow over it still retransmitted was
// seen to corrupt the connection's byte stream on kernel 6.18.44 (5 of 34
// server-side flaps in the lab); a surviving subflow resumes by
// retransmission, which costs nothing. The price: a signal endpoint whose
// subflows all closed during a long outage is not announced again until its
// address comes back or the agent restarts. A "fullmesh" or "laminar"
// endpoint without the subflow flag is left alone too: adding it opens
// nothing (it only joins addresses the peer announces later), so deleting it
// would lose a subflow that survived.
func (l *loop) recreate(cfg reconcile.HostConfig, actual reconcile.State, ops reconcile.Ops, ifaces []policy.Interface) reconcile.Ops {
	if len(l.flapped) == 0 {
		return nil
	}
	up := map[int]bool{}
	for _, i := range ifaces {
		up[i.Index] = i.Up
	}
	touched := map[netip.Addr]bool{}
	for _, op := range ops {
		if (op.Kind == reconcile.DelEndpoint || op.Kind == reconcile.AddEndpoint) && op.Endpoint != nil {
			touched[op.Endpoint.Addr] = true
		}
	}
	byAddr := map[netip.Addr]mptcp.Endpoint{}
	for _, e := range actual.Endpoints {
		byAddr[e.Addr] = e
	}
	var out reconcile.Ops
	for _, e := range cfg.Endpoints {
		cur, ok := byAddr[e.Addr]
		if !ok || touched[e.Addr] || !l.flapped[e.IfIndex] || !up[e.IfIndex] || e.Flags&mptcp.FlagSubflow == 0 {
			continue
		}
		e.ID = cur.ID
		dev := actual.Links[e.IfIndex]
		out = append(out,
			reconcile.Op{Kind: reconcile.DelEndpoint, Endpoint: &cur, Dev: dev},
			reconcile.Op{Kind: reconcile.AddEndpoint, Endpoint: &e, Dev: dev})
	}
	return out
}

// gwKey names one family's gateways of one link.
type gwKey struct {
	index int
	name  string
	v4    bool
}

// rememberGateways fills in, for a link that has no gateway of a family now,
// the ones it had when last seen with some. When a link goes down the kernel
// deletes its routes in every table, the main table's too, and nothing may
// put them back when it returns; the link's own tables still need their
// default routes. The memory of a link ends with the link.
func (l *loop) rememberGateways(ifaces []policy.Interface) []policy.Interface {
	if l.gateways == nil {
		l.gateways = map[gwKey][]netip.Addr{}
	}
	seen := map[gwKey]bool{}
	for i := range ifaces {
		ifc := &ifaces[i]
		for _, v4 := range []bool{true, false} {
			k := gwKey{ifc.Index, ifc.Name, v4}
			seen[k] = true
			var cur []netip.Addr
			for _, g := range ifc.Gateways {
				if g.Unmap().Is4() == v4 {
					cur = append(cur, g)
				}
			}
			if len(cur) > 0 {
				l.gateways[k] = cur
			} else if mem := l.gateways[k]; len(mem) > 0 {
				ifc.Gateways = append(slices.Clone(ifc.Gateways), mem...)
			}
		}
	}
	for k := range l.gateways {
		if !seen[k] {
			delete(l.gateways, k)
		}
	}
	return ifaces
}

// clearFlapped forgets the links that are up again (or gone).
func (l *loop) clearFlapped(ifaces []policy.Interface) {
	up := map[int]bool{}
	for _, i := range ifaces {
		up[i.Index] = i.Up
	}
	for idx := range l.flapped {
		if isUp, present := up[idx]; isUp || !present {
			delete(l.flapped, idx)
		}
	}
}
