package reconcile

import (
	"cmp"
	"fmt"
	"maps"
	"net/netip"
	"slices"

	"github.com/mpfleet/mpfleet/internal/mptcp"
	"github.com/mpfleet/mpfleet/internal/route"
)

// Plan computes the operations that take the kernel from actual to desired.
// It is a pure function; an invalid desired config (ErrInvalid), one that
// needs what the kernel lacks (ErrUnsupported), or one that would add a rule
// or route where a foreign one holds the table or priority (ErrConflict: see
// AvoidForeign) is an error and no plan.
//
// Foreign rules and routes (actual.Foreign, actual.ForeignRoutes) are never
// deleted or changed, with one exception: a legacy one that is exactly what
// desired wants is adopted with SetRuleProtocol or SetRouteProtocol rather
// than added (see foreign.go).
//
// The order is chosen so that every step is legal on its own and no step
// breaks traffic earlier than it must:
//
//  1. sysctls (net.mptcp.enabled first, then by name) and limits;
//  2. deletions: stale and to-be-replaced endpoints first, so the kernel's
//     limit of mptcp.MaxEndpoints never blocks an addition, then rules, then
//     routes (those through a gateway before the connected route that
//     reaches it);
//  3. additions: adopted routes, then new routes (connected routes before
//     those through a gateway), then adopted and new rules that use them,
//     then endpoint flag changes in place, and endpoints last: no endpoint is
//     added before its route exists.
//
// Endpoints are matched by address. A match keeps its ID (unless desired
// names another) and changes in place when only the backup or fullmesh flag
// differs; any other difference deletes it and adds it again. Applying the
// plan and planning again yields no ops.
func Plan(desired HostConfig, actual State) (Ops, error) {
	if err := desired.Validate(); err != nil {
		return nil, err
	}
	var ops Ops

	// 1. Sysctls and limits.
	if desired.Enabled != nil {
		if actual.Enabled == nil {
			return nil, fmt.Errorf("sysctl %s: %w", SysctlEnabled, ErrUnsupported)
		}
		if *desired.Enabled != *actual.Enabled {
			ops = append(ops, Op{Kind: SetSysctl, Sysctl: SysctlEnabled, Value: boolValue(*desired.Enabled), Old: boolValue(*actual.Enabled)})
		}
	}
	for _, name := range desired.SysctlNames() {
		old, ok := actual.Sysctls[name]
		if !ok {
			return nil, fmt.Errorf("sysctl %s: %w", name, ErrUnsupported)
		}
		if v := normValue(desired.Sysctls[name]); v != normValue(old) {
			ops = append(ops, Op{Kind: SetSysctl, Sysctl: name, Value: v, Old: normValue(old)})
		}
	}
	if desired.Limits != nil && (actual.Limits == nil || *desired.Limits != *actual.Limits) {
		op := Op{Kind: SetLimits, Limits: ptr(*desired.Limits)}
		if actual.Limits != nil {
			op.OldLimits = ptr(*actual.Limits)
		}
		ops = append(ops, op)
	}

	// Endpoints: decide what stays, what changes in place, what goes.
	eadd, edel, eflags := planEndpoints(desired.Endpoints, actual.Endpoints)

	// Rules and routes: sets of canonical values. Legacy foreign ones that
	// are wanted are adopted instead of added; nothing is added where a
	// foreign one holds the table or priority.
	adopt := adoptions(desired, actual)
	occ := occupiedBy(actual, adopt)
	rdel, radd := diff(canonRules(actual.Rules), canonRules(desired.Rules))
	route.SortRules(rdel)
	route.SortRules(radd)
	var radopt []Op
	radd = slices.DeleteFunc(radd, func(r route.Rule) bool {
		i, ok := adopt.rules[r]
		if ok {
			radopt = append(radopt, Op{Kind: SetRuleProtocol, Rule: ptr(r), Protocol: route.Protocol, OldProtocol: actual.Foreign[i].Protocol})
		}
		return ok
	})
	for _, r := range radd {
		if h, ok := occ.ruleHold(r); ok {
			return nil, fmt.Errorf("rule %v: %v: %w", r, h, ErrConflict)
		}
	}
	tdel, tadd := diff(canonRoutes(actual.Routes), canonRoutes(desired.Routes))
	route.SortRoutes(tadd)
	route.SortRoutes(tdel)
	slices.Reverse(tdel)
	var tadopt []Op
	tadd = slices.DeleteFunc(tadd, func(r route.Route) bool {
		i, ok := adopt.routes[r.Key()]
		if ok {
			tadopt = append(tadopt, Op{Kind: SetRouteProtocol, Route: ptr(r), Protocol: route.Protocol, OldProtocol: actual.ForeignRoutes[i].Protocol, Dev: actual.Links[r.LinkIndex]})
		}
		return ok
	})
	for _, r := range tadd {
		if h, ok := occ.tableHold(r.Table); ok {
			return nil, fmt.Errorf("route %v: %v: %w", r, h, ErrConflict)
		}
	}

	// 2. Deletions.
	for _, e := range edel {
		ops = append(ops, Op{Kind: DelEndpoint, Endpoint: ptr(e), Dev: actual.Links[e.IfIndex]})
	}
	for _, r := range rdel {
		ops = append(ops, Op{Kind: DelRule, Rule: ptr(r)})
	}
	for _, r := range tdel {
		ops = append(ops, Op{Kind: DelRoute, Route: ptr(r), Dev: actual.Links[r.LinkIndex]})
	}
	// 3. Additions.
	ops = append(ops, tadopt...)
	for _, r := range tadd {
		ops = append(ops, Op{Kind: AddRoute, Route: ptr(r), Dev: actual.Links[r.LinkIndex]})
	}
	ops = append(ops, radopt...)
	for _, r := range radd {
		ops = append(ops, Op{Kind: AddRule, Rule: ptr(r)})
	}
	for _, f := range eflags {
		ops = append(ops, Op{Kind: SetEndpointFlags, Endpoint: ptr(f.cur), Flags: f.flags})
	}
	for _, e := range eadd {
		ops = append(ops, Op{Kind: AddEndpoint, Endpoint: ptr(e), Dev: actual.Links[e.IfIndex]})
	}
	return ops, nil
}

type flagChange struct {
	cur   mptcp.Endpoint
	flags mptcp.Flags
}

// planEndpoints matches desired endpoints to actual ones by address and
// returns the endpoints to add (each with its ID), to delete, and to change
// in place; each list sorted by ID.
func planEndpoints(desired, actual []mptcp.Endpoint) (add, del []mptcp.Endpoint, flags []flagChange) {
	byAddr := make(map[netip.Addr]mptcp.Endpoint, len(actual))
	for _, a := range actual {
		byAddr[a.Addr] = a
	}
	want := slices.Clone(desired)
	slices.SortFunc(want, func(a, b mptcp.Endpoint) int { return a.Addr.Compare(b.Addr) })

	explicit := map[uint8]bool{}
	for _, d := range want {
		if d.ID != 0 {
			explicit[d.ID] = true
		}
	}
	used := maps.Clone(explicit)
	kept := map[netip.Addr]bool{}
	var pending []mptcp.Endpoint // to add; ID 0 means allocate
	for _, d := range want {
		a, ok := byAddr[d.Addr]
		if !ok {
			pending = append(pending, d)
			continue
		}
		id := d.ID
		if id == 0 && !explicit[a.ID] {
			id = a.ID // keep the existing endpoint's ID
		}
		sameButFlags := id == a.ID && d.Port == a.Port && d.IfIndex == a.IfIndex &&
			(d.Flags^a.Flags)&^mutableFlags == 0
		if sameButFlags {
			kept[a.Addr] = true
			used[a.ID] = true
			if d.Flags != a.Flags {
				flags = append(flags, flagChange{cur: a, flags: d.Flags})
			}
			continue
		}
		// Replace: delete the old one (below) and add d, with the old ID
		// when it is free to take.
		d.ID = id
		if id != 0 {
			used[id] = true
		}
		pending = append(pending, d)
	}
	for _, a := range actual {
		if !kept[a.Addr] {
			del = append(del, a)
		}
	}
	next := uint8(1)
	for _, d := range pending {
		if d.ID == 0 {
			for used[next] {
				next++
			}
			d.ID = next
			used[next] = true
		}
		add = append(add, d)
	}
	byID := func(a, b mptcp.Endpoint) int { return cmp.Compare(a.ID, b.ID) }
	slices.SortFunc(add, byID)
	slices.SortFunc(del, byID)
	slices.SortFunc(flags, func(a, b flagChange) int { return cmp.Compare(a.cur.ID, b.cur.ID) })
	return add, del, flags
}

func canonRules(rs []route.Rule) []route.Rule {
	out := make([]route.Rule, len(rs))
	for i, r := range rs {
		out[i] = r.Canonical()
	}
	return out
}

func canonRoutes(rs []route.Route) []route.Route {
	out := make([]route.Route, len(rs))
	for i, r := range rs {
		out[i] = r.Canonical()
	}
	return out
}

// diff returns the elements of have not in want and those of want not in
// have.
func diff[T comparable](have, want []T) (del, add []T) {
	hs := make(map[T]bool, len(have))
	for _, h := range have {
		hs[h] = true
	}
	ws := make(map[T]bool, len(want))
	for _, w := range want {
		ws[w] = true
		if !hs[w] {
			add = append(add, w)
		}
	}
	for _, h := range have {
		if !ws[h] {
			del = append(del, h)
		}
	}
	return del, add
}

func ptr[T any](v T) *T { return &v }
