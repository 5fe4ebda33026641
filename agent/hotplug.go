package agent

// Hotplug: an address that appears on a managed interface becomes an
// endpoint at once, ahead of the full reconcile that its change triggers.
//
// The full reconcile reads the host's facts and the kernel, renders, plans
// and applies: a dozen netlink dumps and /proc reads before the first op.
// The fast path instead takes what the last reconcile that left the kernel
// as desired knew (the interfaces it rendered against and the kernel state
// it read back), adds the new address to its interface, and renders and
// plans with the same code against both interface sets. What the new set
// adds for the new address alone, and only that, is applied at once: its
// endpoint, and when the policy routes it, its rule and its table's routes
// first (Plan's order: no endpoint before its routing, or a subflow opened
// from it at once would leave by the main table). Anything else the address
// would change (another endpoint pushed out by the endpoint maximum, a
// table moved, a deletion of any kind) leaves it all to the full reconcile,
// as does anything that makes the remembered state doubtful: an address
// removed, a link changed, a link that went down, a reconcile that failed
// or was not confirmed, dry run. The fast path never deletes, goes through
// management-path protection like a full plan, and is journaled: an op the
// kernel refuses (an endpoint ID taken meanwhile) undoes the rest, and the
// full reconcile that follows decides. That reconcile then finds nothing to
// do for the address.

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sync"

	"github.com/mpfleet/mpfleet/internal/mptcp"
	"github.com/mpfleet/mpfleet/internal/policy"
	"github.com/mpfleet/mpfleet/internal/reconcile"
	"github.com/mpfleet/mpfleet/internal/route"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
)

// hotplugBox is the mailbox of added addresses between the address watch
// and the loop.
type hotplugBox struct {
	mu    sync.Mutex
	added []addedAddr
	// blocked: a change since the last reconcile began that the fast path
	// cannot account for (an address removed or unknown, a link changed).
	blocked bool
}

// addedAddr is an address that appeared on a link.
type addedAddr struct {
	link int
	addr netip.Prefix
}

// offerAddress records an address change for the fast path: an address
// added, or (any other change) that the fast path must wait for the next
// full reconcile.
func (a *Agent) offerAddress(c Change) {
	a.hot.mu.Lock()
	defer a.hot.mu.Unlock()
	if c.Addr && c.Added.IsValid() {
		if len(a.hot.added) < maxHotplugPending {
			a.hot.added = append(a.hot.added, addedAddr{c.Link, c.Added})
			return
		}
	}
	a.hot.blocked = true
}

// maxHotplugPending bounds the addresses waiting for the fast path; past
// it, the full reconcile takes them all.
const maxHotplugPending = 256

// takeAddresses returns the addresses added since the last take and
// whether the fast path must leave them to the full reconcile; both start
// over.
func (a *Agent) takeAddresses() ([]addedAddr, bool) {
	a.hot.mu.Lock()
	defer a.hot.mu.Unlock()
	added, blocked := a.hot.added, a.hot.blocked
	a.hot.added, a.hot.blocked = nil, false
	return added, blocked
}

// hotplugBase is what the last reconcile that left the kernel as desired
// knew: the desired configuration, the interfaces it rendered against
// (gateways remembered), the kernel it applied to and the state it read
// back. The fast path adds to it what it applies.
type hotplugBase struct {
	d      *pb.DesiredConfig
	ifaces []policy.Interface
	k      reconcile.Kernel
	state  reconcile.State
	// pending is the plan on ifaces against state (the ops held back, or
	// the kernel did not take), by key; made at the first use.
	pending map[opID]int
}

// errHotplugSkip: the new addresses would change more than their own
// additions.
var errHotplugSkip = errors.New("the new addresses change more than their own endpoints and routing")

// hotplug runs the fast path for the addresses added since the last look,
// if the loop holds a base to build on; see the top of the file.
func (l *loop) hotplug(ctx context.Context) {
	added, blocked := l.a.takeAddresses()
	b := l.base
	if blocked || b == nil || b.k != l.kernel || b.d != l.effective || l.a.opts.DryRun {
		l.base = nil // doubtful until the next reconcile, which decides
		return
	}
	if len(added) == 0 {
		return
	}
	ifaces, news := withAddresses(b.ifaces, added, l.flapped)
	if ifaces == nil {
		l.base = nil
		return
	}
	if len(news) == 0 {
		return // known already (an address's lifetimes renewed, say)
	}
	if b.pending == nil {
		was, err := planOn(b.d.GetPolicy(), b.ifaces, b.state)
		if err != nil {
			l.log.Debug("hotplug: left to the full reconcile", "err", err)
			l.base = nil
			return
		}
		b.pending = opCounts(was)
	}
	ops, err := hotplugOps(b.d.GetPolicy(), b.pending, ifaces, b.state, news)
	if err != nil {
		l.log.Debug("hotplug: left to the full reconcile", "addresses", news, "err", err)
		l.base = nil
		return
	}
	if len(ops) == 0 {
		b.ifaces = ifaces // not selected by the policy
		return
	}
	if _, held := protect(ops, b.state, l.localAddr()); len(held) > 0 {
		l.base = nil
		return
	}
	if msg := l.guardPath(ctx, b.state, ops); msg != "" {
		l.base = nil // the full reconcile refuses the plan and says why
		return
	}
	if err := l.recordBefore(ops); err != nil {
		l.log.Debug("hotplug: left to the full reconcile", "addresses", news, "err", err)
		l.base = nil
		return
	}
	if err := reconcile.Apply(ctx, b.k, ops); err != nil {
		l.log.Debug("hotplug: left to the full reconcile", "addresses", news, "err", err)
		l.base = nil
		return
	}
	// What was pending stays so: the new plan is the old one and ops.
	b.ifaces, b.state = ifaces, withOps(b.state, ops)
	l.lastPlan = ops
	l.log.Debug("hotplug: applied ahead of the reconcile", "ops", ops.String())
}

// withAddresses returns ifaces with the added addresses on their links,
// and the addresses that are new; nil ifaces when one of them is on a link
// not known, not up, or down since its endpoints were made, or replaces an
// address of another prefix length.
func withAddresses(ifaces []policy.Interface, added []addedAddr, flapped map[int]bool) ([]policy.Interface, []netip.Addr) {
	out := slices.Clone(ifaces)
	var news []netip.Addr
	for _, ad := range added {
		i := slices.IndexFunc(out, func(x policy.Interface) bool { return x.Index == ad.link })
		if i < 0 || !out[i].Up || flapped[ad.link] {
			return nil, nil
		}
		j := slices.IndexFunc(out[i].Addrs, func(p netip.Prefix) bool { return p.Addr() == ad.addr.Addr() })
		switch {
		case j >= 0 && out[i].Addrs[j] == ad.addr:
			continue
		case j >= 0:
			return nil, nil
		}
		out[i].Addrs = append(slices.Clone(out[i].Addrs), ad.addr)
		if !slices.Contains(news, ad.addr.Addr()) {
			news = append(news, ad.addr.Addr())
		}
	}
	return out, news
}

// planOn is the full reconcile's plan for policy p on ifaces against st:
// rendered, sysctls the kernel lacks left out, foreign rules and routes
// avoided, planned.
func planOn(p *pb.MultipathPolicy, ifaces []policy.Interface, st reconcile.State) (reconcile.Ops, error) {
	r, err := policy.Render(p, ifaces)
	if err != nil {
		return nil, err
	}
	cfg, _ := r.Config.WithoutUnsupported(st)
	cfg, _ = reconcile.AvoidForeign(cfg, st)
	return reconcile.Plan(cfg, st)
}

// hotplugOps returns what policy p on interfaces after adds to st for the
// addresses news, beyond the ops pending before they came (opCounts of
// planOn the interfaces before): the plan's endpoint additions for news,
// and the rules from them and the routes of their tables. An op of the new
// plan that is none of these and was not pending means the addresses
// change more than their own additions: errHotplugSkip.
func hotplugOps(p *pb.MultipathPolicy, pending map[opID]int, after []policy.Interface, st reconcile.State, news []netip.Addr) (reconcile.Ops, error) {
	now, err := planOn(p, after, st)
	if err != nil {
		return nil, err
	}
	left := maps.Clone(pending)
	isNew := map[netip.Addr]bool{}
	for _, a := range news {
		isNew[a] = true
	}
	tables := map[int]bool{}
	for _, op := range now {
		if op.Kind == reconcile.AddRule && op.Rule != nil && isNew[op.Rule.Src.Addr()] {
			tables[op.Rule.Table] = true
		}
	}
	var out reconcile.Ops
	for _, op := range now {
		if id := idOf(op); left[id] > 0 {
			left[id]--
			continue
		}
		switch {
		case op.Kind == reconcile.AddEndpoint && op.Endpoint != nil && isNew[op.Endpoint.Addr]:
		case op.Kind == reconcile.AddRule && op.Rule != nil && isNew[op.Rule.Src.Addr()]:
		case op.Kind == reconcile.AddRoute && op.Route != nil && tables[op.Route.Table]:
		default:
			return nil, fmt.Errorf("%s: %w", op, errHotplugSkip)
		}
		out = append(out, op)
	}
	return out, nil
}

// opID is an op by value, its pointers followed (has: which were set).
type opID struct {
	kind                  reconcile.Kind
	sysctl, value, old    string
	limits, oldLimits     mptcp.Limits
	endpoint              mptcp.Endpoint
	flags                 mptcp.Flags
	rule                  route.Rule
	route                 route.Route
	protocol, oldProtocol route.Proto
	has                   [5]bool
}

func idOf(op reconcile.Op) opID {
	id := opID{kind: op.Kind, sysctl: op.Sysctl, value: op.Value, old: op.Old, flags: op.Flags, protocol: op.Protocol, oldProtocol: op.OldProtocol}
	if op.Limits != nil {
		id.limits, id.has[0] = *op.Limits, true
	}
	if op.OldLimits != nil {
		id.oldLimits, id.has[1] = *op.OldLimits, true
	}
	if op.Endpoint != nil {
		id.endpoint, id.has[2] = *op.Endpoint, true
	}
	if op.Rule != nil {
		id.rule, id.has[3] = *op.Rule, true
	}
	if op.Route != nil {
		id.route, id.has[4] = *op.Route, true
	}
	return id
}

// opCounts counts ops by opID.
func opCounts(ops reconcile.Ops) map[opID]int {
	m := make(map[opID]int, len(ops))
	for _, op := range ops {
		m[idOf(op)]++
	}
	return m
}

// withOps returns st with the additions of ops made.
func withOps(st reconcile.State, ops reconcile.Ops) reconcile.State {
	st.Endpoints, st.Rules, st.Routes = slices.Clone(st.Endpoints), slices.Clone(st.Rules), slices.Clone(st.Routes)
	for _, op := range ops {
		switch {
		case op.Kind == reconcile.AddEndpoint && op.Endpoint != nil:
			st.Endpoints = append(st.Endpoints, *op.Endpoint)
		case op.Kind == reconcile.AddRule && op.Rule != nil:
			st.Rules = append(st.Rules, *op.Rule)
		case op.Kind == reconcile.AddRoute && op.Route != nil:
			st.Routes = append(st.Routes, *op.Route)
		}
	}
	return st
}
