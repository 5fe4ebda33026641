package agent

// Hotplug: an address that appears on a managed interface becomes an
// endpoint at once, ahead of the full reconcile that its change triggers.
//
// The full reconcile reads the host's facts and the kernel, renders, plans
// and applies: a dozen netlink dumps and /proc reads before the first op.
// The fast path instead takes what the last reconcile that left the kernel
// as desired knew (the interfaces it rendered against and the kernel state
// it read back: the base), and runs on the goroutine that delivers the
// address event (NetlinkSystem's watch, watch_linux.go), before the loop
// hears of the change at all. Two ways, one answer:
//
//   - The template (hotplug_template.go), made when the base is: for a
//     policy without routing, over a kernel that holds exactly what the
//     base renders, what an address on each interface would get, so that
//     the event costs a map lookup and one netlink request (on the kernel's
//     own socket for it, when it has one: mptcpnl.EndpointAdder). It
//     answers only where it is sure to agree with the second way, and
//     leaves the rest to it; a property test holds it to that.
//   - Render and plan: the base's interfaces plus the new address, rendered
//     and planned with the full reconcile's own code, against the base's
//     kernel state. What the new set adds for the new address alone, and
//     only that, is applied at once: its endpoint, and when the policy
//     routes it, its rule and its table's routes first (Plan's order: no
//     endpoint before its routing, or a subflow opened from it at once
//     would leave by the main table).
//
// Anything else the address would change (another endpoint pushed out by
// the endpoint maximum, a table moved, a deletion of any kind) leaves it all
// to the full reconcile, as does anything that makes the base doubtful: an
// address removed, a link changed, a link that went down, a reconcile that
// failed or was not confirmed (no base is made before the controller
// confirms a new revision), dry run (none is made at all). The fast path
// never deletes, holds back what management-path protection would (an op
// that changes how the controller connection is routed is left to the full
// reconcile, which asks the kernel), and applies under the journal: an op
// the kernel refuses (an endpoint ID taken meanwhile) undoes the rest, and
// the full reconcile that follows decides. That reconcile then finds
// nothing to do for the address.
//
// Each address is taken on its own, in the order the kernel announced
// them, the base growing by what each brought. Addresses that come while a
// reconcile runs wait for the base it leaves, and are then taken before any
// later one. The reconcile that follows reports what the fast path applied
// as the last plan, and records its endpoints for --cleanup (record.go)
// once it finds the kernel as desired: after the kernel took them, not
// before as the full reconcile's own are, because the record (a file
// written and synced, 0.2 to 1 ms here) would cost more than the whole
// event. An agent killed in between leaves such an endpoint unrecorded
// until its next reconcile; the kernel's endpoints do not outlive a reboot,
// so only a --cleanup run in that gap, without a restart, leaves it behind.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
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

// hotplugBox is the fast path's state, shared by the goroutine that
// delivers address events and the loop, under mu.
type hotplugBox struct {
	mu sync.Mutex
	// base is what the fast path builds on; nil while a reconcile runs,
	// and from a change the fast path cannot account for until the next
	// reconcile leaves one.
	base *hotplugBase
	// added are the addresses that came while there was no base, to be
	// taken once there is, in order; blocked: a change came that the fast
	// path cannot account for, so that no base is made before the next
	// reconcile begins.
	added   []addedAddr
	blocked bool
	// applied is what the fast path applied since the loop last took it.
	applied reconcile.Ops
}

// addedAddr is an address that appeared on a link.
type addedAddr struct {
	link int
	addr netip.Prefix
}

// maxHotplugPending bounds the addresses waiting for a base; past it, the
// full reconcile takes them all.
const maxHotplugPending = 256

// hotplugBase is what the last reconcile that left the kernel as desired
// knew: the desired configuration, the interfaces it rendered against
// (gateways remembered), the kernel it applied to and the state it read
// back. The fast path adds to it what it applies.
type hotplugBase struct {
	ctx    context.Context
	log    *slog.Logger
	d      *pb.DesiredConfig
	ifaces []policy.Interface
	k      reconcile.Kernel
	// fast is k's own way to add an endpoint with one request, if it has
	// one.
	fast    endpointAdder
	state   reconcile.State
	flapped map[int]bool // links down since their endpoints were made
	// local is the controller connection's local address, remote the
	// controller's, as the loop knew them.
	local  func() netip.Addr
	remote netip.Addr
	// pending is the plan on ifaces against state (the ops held back, or
	// the kernel did not take), by key.
	pending map[opID]int
	// tmpl answers for an address without rendering; nil: every address
	// is rendered and planned.
	tmpl *hotTemplate
}

// endpointAdder is a reconcile.Kernel that can add an endpoint with one
// request on a socket of its own (netlinkKernel).
type endpointAdder interface {
	addEndpointNow(e mptcp.Endpoint) error
}

// errHotplugSkip: the new addresses would change more than their own
// additions.
var errHotplugSkip = errors.New("the new addresses change more than their own endpoints and routing")

// offerAddress runs the fast path for an address or link change, on the
// goroutine that delivers it: an added address is applied at once if there
// is a base, or waits for one; any other change ends the base.
func (a *Agent) offerAddress(c Change) {
	h := &a.hot
	h.mu.Lock()
	defer h.mu.Unlock()
	switch {
	case !c.Addr || !c.Added.IsValid():
		h.drop()
	case h.base != nil:
		h.drain()
		if h.base != nil {
			h.add(addedAddr{c.Link, c.Added})
		}
	case !h.blocked && len(h.added) < maxHotplugPending:
		h.added = append(h.added, addedAddr{c.Link, c.Added})
	default:
		h.drop()
	}
}

// drop ends the base: doubtful until the next reconcile, which decides.
func (h *hotplugBox) drop() {
	h.base, h.added, h.blocked = nil, nil, true
}

// drain takes the addresses that waited for the base, in order.
func (h *hotplugBox) drain() {
	for len(h.added) > 0 && h.base != nil {
		ad := h.added[0]
		h.added = h.added[1:]
		h.add(ad)
	}
	h.added = nil
}

// add runs the fast path for one address on the base: the template if it
// answers, else render and plan.
func (h *hotplugBox) add(ad addedAddr) {
	b := h.base
	if b.tmpl != nil {
		switch ep, v := b.tmpl.lookup(ad.link, ad.addr); v {
		case hotKnown:
			return
		case hotNotSelected:
			b.ifaces, _ = withAddresses(b.ifaces, []addedAddr{ad}, nil)
			b.tmpl.note(ad, 0)
			return
		case hotEndpoint:
			h.addEndpoint(b, ad, ep)
			return
		}
	}
	h.renderAndPlan(b, ad)
}

// addEndpoint applies the template's endpoint for ad.
func (h *hotplugBox) addEndpoint(b *hotplugBase, ad addedAddr, ep mptcp.Endpoint) {
	var err error
	if b.fast != nil {
		err = b.fast.addEndpointNow(ep)
	}
	e := ep // on the heap from here on, not before the request
	ops := reconcile.Ops{{Kind: reconcile.AddEndpoint, Endpoint: &e, Dev: b.state.Links[ad.link]}}
	if b.fast == nil {
		err = reconcile.Apply(b.ctx, b.k, ops)
	}
	if err != nil {
		b.log.Debug("hotplug: left to the full reconcile", "address", ad.addr, "err", err)
		h.drop()
		return
	}
	b.ifaces, _ = withAddresses(b.ifaces, []addedAddr{ad}, nil)
	b.state = withOps(b.state, ops)
	b.tmpl.note(ad, ep.ID)
	h.applied = append(h.applied, ops...)
	b.log.Debug("hotplug: applied ahead of the reconcile", "ops", ops)
}

// renderAndPlan runs the fast path for ad by rendering and planning.
func (h *hotplugBox) renderAndPlan(b *hotplugBase, ad addedAddr) {
	ifaces, news := withAddresses(b.ifaces, []addedAddr{ad}, b.flapped)
	if ifaces == nil {
		h.drop()
		return
	}
	if len(news) == 0 {
		return // known already (an address's lifetimes renewed, say)
	}
	ops, err := hotplugOps(b.d.GetPolicy(), b.pending, ifaces, b.state, news)
	if err != nil {
		b.log.Debug("hotplug: left to the full reconcile", "addresses", news, "err", err)
		h.drop()
		return
	}
	if len(ops) > 0 {
		c := mgmtConn{local: b.local(), controller: b.remote}
		if _, held := protect(ops, b.state, c.local); len(held) > 0 {
			h.drop()
			return
		}
		if c.local.IsValid() && c.controller.IsValid() && lookups(b.state, ops, c).changed() {
			h.drop() // the full reconcile asks the kernel (guardPath)
			return
		}
		if err := reconcile.Apply(b.ctx, b.k, ops); err != nil {
			b.log.Debug("hotplug: left to the full reconcile", "addresses", news, "err", err)
			h.drop()
			return
		}
		// What was pending stays so: the new plan is the old one and ops.
		b.state = withOps(b.state, ops)
		h.applied = append(h.applied, ops...)
		b.log.Debug("hotplug: applied ahead of the reconcile", "ops", ops)
	}
	b.ifaces = ifaces
	if b.tmpl != nil {
		b.tmpl = newHotTemplate(b.d.GetPolicy(), b.ifaces, b.state, b.flapped)
	}
}

// stopHotplug ends the fast path's base: a reconcile reads the host and
// the kernel anew (or the kernel is left alone). What the fast path applied
// is taken first; addresses that come from now on wait for the next base.
func (l *loop) stopHotplug() {
	h := &l.a.hot
	h.mu.Lock()
	h.base, h.added, h.blocked = nil, nil, false
	ops := h.applied
	h.applied = nil
	h.mu.Unlock()
	l.tookHotplugged(ops)
}

// startHotplug makes the base of the fast path from what a reconcile that
// left the kernel as desired knew (see hotplugBase), unless it is a dry run
// or a change came meanwhile that the base would not account for.
func (l *loop) startHotplug(ctx context.Context, d *pb.DesiredConfig, ifaces []policy.Interface, k reconcile.Kernel, st reconcile.State) {
	if l.a.opts.DryRun {
		return
	}
	b := &hotplugBase{
		ctx: ctx, log: l.log, d: d, ifaces: ifaces, k: k, state: st,
		flapped: maps.Clone(l.flapped), remote: l.remote, local: l.a.localAddr,
	}
	if b.local == nil {
		local := l.local
		b.local = func() netip.Addr { return local }
	}
	was, err := planOn(d.GetPolicy(), ifaces, st)
	if err != nil {
		l.log.Debug("hotplug: no base", "err", err)
		return
	}
	b.pending = opCounts(was)
	if len(was) == 0 {
		b.tmpl = newHotTemplate(d.GetPolicy(), ifaces, st, b.flapped)
	}
	b.fast, _ = k.(endpointAdder)
	h := &l.a.hot
	h.mu.Lock()
	if !h.blocked {
		h.base = b
	}
	h.mu.Unlock()
}

// hotplug, on the loop when an address or link changed: the addresses that
// waited for the base are taken. What the fast path applied is left for
// the reconcile that follows (stopHotplug, and its record at the end), not
// handled now: the loop's work, a synced file above all, while the kernel
// hands the new endpoint to whoever waits for it would only slow them.
func (l *loop) hotplug(context.Context) {
	h := &l.a.hot
	h.mu.Lock()
	if h.base != nil && len(h.added) > 0 {
		h.drain()
	}
	h.mu.Unlock()
}

// tookHotplugged makes ops, which the fast path applied, the last plan.
// Their endpoints are recorded as mpfleet's by the reconcile that follows,
// once it finds the kernel as desired (recordEndpoints).
func (l *loop) tookHotplugged(ops reconcile.Ops) {
	if len(ops) > 0 {
		l.lastPlan = ops
	}
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
