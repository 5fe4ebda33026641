package reconcile

import (
	"cmp"
	"fmt"
	"maps"
	"net/netip"
	"slices"

	"github.com/mpfleet/mpfleet/internal/route"
)

// Foreign rules and routes — those inside the owned range that mpfleet did
// not make (State.Foreign, State.ForeignRoutes) — are never changed or
// deleted. mpfleet does not share a table or a rule priority with one:
//
//   - Plan refuses (ErrConflict) to add a rule at a priority, or a rule or
//     route into a table, that a foreign entry holds;
//   - AvoidForeign moves what a desired config puts there to the next free
//     table and priority of the range, before Plan;
//   - Conflicts lists the foreign entries, for the host to report.
//
// The exception is migration. Agents before route.Protocol made their rules
// without a protocol and their routes with proto static. A foreign entry with
// that legacy protocol that is exactly what the desired config wants
// (nothing more: same priority, source and table, or same route, of the
// shape mpfleet makes) is adopted: Plan re-makes it with route.Protocol
// (SetRuleProtocol, SetRouteProtocol) instead of adding it, so that an agent
// that upgrades takes over what its predecessor made and the host is not
// reported forever. A rule made by hand with `ip rule add` is
// indistinguishable from a legacy one; adopting it when it is exactly what
// mpfleet wants there changes nothing in the routing, but mpfleet deletes it
// when it no longer wants it. Legacy entries that match nothing desired stay
// foreign and are reported.

// adoption is what Plan adopts: for each desired rule and route a foreign
// entry stands for, the entry's index and protocol.
type adoption struct {
	rules  map[route.Rule]int // canonical desired rule → index in State.Foreign
	routes map[route.Key]int  // desired route key → index in State.ForeignRoutes
}

// adoptions finds the foreign entries Plan adopts: legacy-protocol, plain,
// exactly a desired entry that mpfleet does not hold yet, and alone with
// that rule selector or route key among the foreign ones.
func adoptions(desired HostConfig, actual State) adoption {
	a := adoption{rules: map[route.Rule]int{}, routes: map[route.Key]int{}}
	if len(actual.Foreign) == 0 && len(actual.ForeignRoutes) == 0 {
		return a
	}
	ours := setOf(actual.Rules, route.Rule.Canonical)
	count := countOf(actual.Foreign, route.ForeignRule.Canonical)
	want := setOf(desired.Rules, route.Rule.Canonical)
	for i, f := range actual.Foreign {
		r := f.Canonical()
		if want[r] && !ours[r] && count[r] == 1 && f.Plain() && f.Protocol == route.LegacyRuleProtocol {
			a.rules[r] = i
		}
	}
	oursKeys := setOf(actual.Routes, route.Route.Key)
	keys := countOf(actual.ForeignRoutes, route.ForeignRoute.Key)
	wantRoutes := map[route.Key]route.Route{}
	for _, r := range desired.Routes {
		wantRoutes[r.Key()] = r.Canonical()
	}
	for i, f := range actual.ForeignRoutes {
		k := f.Key()
		if w, ok := wantRoutes[k]; ok && w == f.Canonical() && !oursKeys[k] && keys[k] == 1 &&
			f.Plain() && f.Protocol == route.LegacyRouteProtocol {
			a.routes[k] = i
		}
	}
	return a
}

// without returns a without the adoptions into the given tables: a table
// that moves adopts nothing where it was.
func (a adoption) without(tables map[int]bool) adoption {
	out := adoption{rules: map[route.Rule]int{}, routes: map[route.Key]int{}}
	for r, i := range a.rules {
		if !tables[r.Table] {
			out.rules[r] = i
		}
	}
	for k, i := range a.routes {
		if !tables[k.Table] {
			out.routes[k] = i
		}
	}
	return out
}

// occupied is what the foreign entries that are not adopted hold: tables
// (a foreign rule's lookup, a foreign route's table) and rule priorities,
// each with the first entry that holds it.
type occupied struct {
	tables     map[int]Conflict
	priorities map[int]Conflict
}

func occupiedBy(actual State, a adoption) occupied {
	o := occupied{tables: map[int]Conflict{}, priorities: map[int]Conflict{}}
	adoptedRule, adoptedRoute := indexes(a.rules), indexes(a.routes)
	for i, f := range actual.Foreign {
		if adoptedRule[i] {
			continue
		}
		c := Conflict{Rule: ptr(f)}
		if _, ok := o.priorities[f.Priority]; !ok {
			o.priorities[f.Priority] = c
		}
		if _, ok := o.tables[f.Table]; !ok && f.Table > 0 {
			o.tables[f.Table] = c
		}
	}
	for i, f := range actual.ForeignRoutes {
		if _, ok := o.tables[f.Table]; !ok && !adoptedRoute[i] {
			o.tables[f.Table] = Conflict{Route: ptr(f)}
		}
	}
	return o
}

// Hold is a table or rule priority a foreign entry holds.
type Hold struct {
	What string   // "table 7150", "priority 7150"
	By   Conflict // the foreign entry
}

// String renders h as "priority 7150 is held by rule 7150: from ...".
func (h Hold) String() string { return h.What + " is held by " + h.By.String() }

// ruleHold returns what holds rule r's priority or table.
func (o occupied) ruleHold(r route.Rule) (Hold, bool) {
	if by, ok := o.priorities[r.Priority]; ok {
		return Hold{What: fmt.Sprintf("priority %d", r.Priority), By: by}, true
	}
	return o.tableHold(r.Table)
}

// tableHold returns what holds table t.
func (o occupied) tableHold(t int) (Hold, bool) {
	if by, ok := o.tables[t]; ok {
		return Hold{What: fmt.Sprintf("table %d", t), By: by}, true
	}
	return Hold{}, false
}

// Conflict is a foreign rule or route: inside the owned range, not made by
// mpfleet, left alone. Exactly one of Rule and Route is set.
type Conflict struct {
	Rule  *route.ForeignRule  `json:"rule,omitempty"`
	Route *route.ForeignRoute `json:"route,omitempty"`
}

// String renders c as `ip rule` or `ip route` would, prefixed "rule " or
// "route ".
func (c Conflict) String() string {
	if c.Rule != nil {
		return "rule " + c.Rule.String()
	}
	if c.Route != nil {
		return "route " + c.Route.String()
	}
	return "nothing"
}

// Where says what of the range c holds: "priority 7150", "table 7150",
// "priority 7150 and table 7151".
func (c Conflict) Where(rng route.Range) string {
	if c.Route != nil {
		return fmt.Sprintf("table %d", c.Route.Table)
	}
	if c.Rule == nil {
		return ""
	}
	p, t := rng.HasPriority(c.Rule.Priority), rng.HasTable(c.Rule.Table)
	switch {
	case p && t:
		return fmt.Sprintf("priority %d and table %d", c.Rule.Priority, c.Rule.Table)
	case t:
		return fmt.Sprintf("table %d", c.Rule.Table)
	}
	return fmt.Sprintf("priority %d", c.Rule.Priority)
}

// Conflicts returns the foreign rules and routes of actual that Plan does not
// adopt for desired, rules first, each sorted: what a host reports.
func Conflicts(desired HostConfig, actual State) []Conflict {
	a := adoptions(desired, actual)
	rules, routes := except(actual.Foreign, indexes(a.rules)), except(actual.ForeignRoutes, indexes(a.routes))
	route.SortForeignRules(rules)
	route.SortForeignRoutes(routes)
	var out []Conflict
	for _, f := range rules {
		out = append(out, Conflict{Rule: ptr(f)})
	}
	for _, f := range routes {
		out = append(out, Conflict{Route: ptr(f)})
	}
	return out
}

// Move is a table of a desired config that AvoidForeign moved, with its
// rules, because a foreign entry holds its table or its rules' priority.
type Move struct {
	// Table and Priority are where the config put it (Priority: that of its
	// first rule; 0 without rules).
	Table, Priority int
	// NewTable and NewPriority are where it went; both 0 when no table and
	// priority of the range was free and its rules and routes were left out.
	NewTable, NewPriority int
	// Sources are the sources of its rules, in order.
	Sources []netip.Prefix
	// Because is what stood in the way.
	Because Hold
}

// Dropped reports whether the move found no room.
func (m Move) Dropped() bool { return m.NewTable == 0 }

// AvoidForeign returns desired with every table that a foreign entry of
// actual holds, or whose rules' priority one holds (an entry Plan adopts
// holds nothing), moved together with its rules to the first table and
// priority of the range from there on, at the same offset into the table
// and priority ranges (the way policy.Render probes), that neither a
// foreign entry nor another of desired's tables and priorities holds. With
// none free, the table's rules and routes are left out. Tables are taken in
// ascending order; the others stay where they are. It is a pure function:
// the same inputs give the same moves, so that a reconcile that follows
// another plans nothing.
func AvoidForeign(desired HostConfig, actual State) (HostConfig, []Move) {
	if len(actual.Foreign) == 0 && len(actual.ForeignRoutes) == 0 {
		return desired, nil
	}
	adopt := adoptions(desired, actual)
	type unit struct {
		table  int
		rules  []int // indexes into desired.Rules
		routes []int // indexes into desired.Routes
		why    *Hold
	}
	units := map[int]*unit{}
	get := func(t int) *unit {
		if units[t] == nil {
			units[t] = &unit{table: t}
		}
		return units[t]
	}
	for i, r := range desired.Rules {
		get(r.Table).rules = append(get(r.Table).rules, i)
	}
	for i, r := range desired.Routes {
		get(r.Table).routes = append(get(r.Table).routes, i)
	}
	// A table moves when a foreign entry holds it or its rules' priority.
	// The legacy entries a moving table would have adopted stay foreign and
	// hold what they hold too, which may move another: until none does.
	movingT := map[int]bool{}
	var occ occupied
	for {
		occ = occupiedBy(actual, adopt.without(movingT))
		more := false
		for t, u := range units {
			if movingT[t] {
				continue
			}
			if h, ok := occ.tableHold(t); ok {
				u.why = &h
			}
			for _, i := range u.rules {
				if h, ok := occ.ruleHold(desired.Rules[i]); ok && u.why == nil {
					u.why = &h
				}
			}
			if u.why != nil {
				movingT[t], more = true, true
			}
		}
		if !more {
			break
		}
	}
	if len(movingT) == 0 {
		return desired, nil
	}
	usedT, usedP := map[int]bool{}, map[int]bool{}
	var moving []*unit
	for _, t := range slices.Sorted(maps.Keys(units)) {
		u := units[t]
		if movingT[t] {
			moving = append(moving, u)
			continue
		}
		usedT[t] = true
		for _, i := range u.rules {
			usedP[desired.Rules[i].Priority] = true
		}
	}
	rng := desired.OwnedRange()
	width := int(min(rng.TableMax-rng.TableMin, rng.PriorityMax-rng.PriorityMin)) + 1
	out := desired
	out.Rules = slices.Clone(desired.Rules)
	out.Routes = slices.Clone(desired.Routes)
	drop := map[*unit]bool{}
	var moves []Move
	for _, u := range moving {
		m := Move{Table: u.table, Because: *u.why}
		for _, i := range u.rules {
			if len(m.Sources) == 0 {
				m.Priority = desired.Rules[i].Priority
			}
			m.Sources = append(m.Sources, desired.Rules[i].Src)
		}
		start := max(u.table-int(rng.TableMin), 0) % width
		for step := range width {
			off := (start + step) % width
			t, p := int(rng.TableMin)+off, int(rng.PriorityMin)+off
			_, heldT := occ.tables[t]
			_, heldP := occ.priorities[p]
			if heldT || usedT[t] || (len(u.rules) > 0 && (heldP || usedP[p])) {
				continue
			}
			m.NewTable = t
			usedT[t] = true
			if len(u.rules) > 0 {
				m.NewPriority = p
				usedP[p] = true
			}
			break
		}
		if m.Dropped() {
			drop[u] = true
		} else {
			for _, i := range u.rules {
				out.Rules[i].Table, out.Rules[i].Priority = m.NewTable, m.NewPriority
			}
			for _, i := range u.routes {
				out.Routes[i].Table = m.NewTable
			}
		}
		moves = append(moves, m)
	}
	if len(drop) > 0 {
		var rules []route.Rule
		var routes []route.Route
		dropT := map[int]bool{}
		for u := range drop {
			dropT[u.table] = true
		}
		for i, r := range out.Rules {
			if !dropT[desired.Rules[i].Table] {
				rules = append(rules, r)
			}
		}
		for i, r := range out.Routes {
			if !dropT[desired.Routes[i].Table] {
				routes = append(routes, r)
			}
		}
		out.Rules, out.Routes = rules, routes
	}
	route.SortRules(out.Rules)
	route.SortRoutes(out.Routes)
	slices.SortFunc(moves, func(a, b Move) int { return cmp.Compare(a.Table, b.Table) })
	return out, moves
}

// PlanRevert plans the kernel's return from now to before, for prev, the
// config that restores before (what the reverted config managed, at before's
// values): Plan(prev, now), except that what the apply being reverted
// adopted — legacy entries that were foreign in before and are mpfleet's in
// now — gets its old protocol back, last, instead of being deleted.
func PlanRevert(prev HostConfig, before, now State) (Ops, error) {
	ours, had := setOf(now.Rules, route.Rule.Canonical), setOf(before.Rules, route.Rule.Canonical)
	oursRt, hadRt := setOf(now.Routes, route.Route.Canonical), setOf(before.Routes, route.Route.Key)
	prev.Rules = slices.Clone(prev.Rules)
	prev.Routes = slices.Clone(prev.Routes)
	var release Ops
	for _, f := range before.Foreign {
		r := f.Canonical()
		if f.Plain() && f.Protocol == route.LegacyRuleProtocol && ours[r] && !had[r] {
			prev.Rules = append(prev.Rules, r)
			release = append(release, Op{Kind: SetRuleProtocol, Rule: ptr(r), Protocol: f.Protocol, OldProtocol: route.Protocol})
		}
	}
	for _, f := range before.ForeignRoutes {
		r := f.Canonical()
		if f.Plain() && f.Protocol == route.LegacyRouteProtocol && oursRt[r] && !hadRt[r.Key()] {
			prev.Routes = append(prev.Routes, r)
			release = append(release, Op{Kind: SetRouteProtocol, Route: ptr(r), Protocol: f.Protocol, OldProtocol: route.Protocol, Dev: now.Links[r.LinkIndex]})
		}
	}
	ops, err := Plan(prev, now)
	if err != nil {
		return nil, err
	}
	return append(ops, release...), nil
}

// setOf returns the set of the keys of xs.
func setOf[E any, K comparable](xs []E, key func(E) K) map[K]bool {
	set := make(map[K]bool, len(xs))
	for _, x := range xs {
		set[key(x)] = true
	}
	return set
}

// countOf returns how many of xs have each key.
func countOf[E any, K comparable](xs []E, key func(E) K) map[K]int {
	n := map[K]int{}
	for _, x := range xs {
		n[key(x)]++
	}
	return n
}

// indexes returns the set of the indexes m maps to.
func indexes[K comparable](m map[K]int) map[int]bool {
	set := make(map[int]bool, len(m))
	for _, i := range m {
		set[i] = true
	}
	return set
}

// except returns xs without those at the indexes in skip.
func except[E any](xs []E, skip map[int]bool) []E {
	var out []E
	for i, x := range xs {
		if !skip[i] {
			out = append(out, x)
		}
	}
	return out
}
