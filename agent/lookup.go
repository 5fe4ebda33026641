package agent

// A model of the kernel's policy-routing lookup over the rules and routes
// inside mpfleet's range, for management-path protection: where does the
// lookup for the controller connection go now, and where would it go once
// a plan is applied.

import (
	"cmp"
	"net/netip"
	"slices"
	"strconv"

	"github.com/mpfleet/mpfleet/internal/reconcile"
	"github.com/mpfleet/mpfleet/internal/route"
)

// fibRule is a rule as the lookup sees it: `from Src lookup Table` at
// Priority (an invalid Src is "from all" of Family).
type fibRule struct {
	route.Rule
	desc string // as `ip rule` prints it, for messages
}

// fibRoute is a route as the lookup sees it.
type fibRoute struct {
	route.Route
	Type   route.Type // unicast (0 is taken as unicast), blackhole, throw...
	Metric int
	desc   string // as `ip route` prints it, for messages
}

// blocks reports whether the route ends the lookup without a way out:
// blackhole, unreachable, prohibit.
func (r fibRoute) blocks() bool {
	return r.Type == route.TypeBlackhole || r.Type == route.TypeUnreachable || r.Type == route.TypeProhibit
}

// fib is the rules and routes inside mpfleet's range: mpfleet's own and
// the foreign ones.
type fib struct {
	rules  []fibRule
	routes []fibRoute
	links  map[int]string
}

// fibOf is what s holds. Foreign rules that match on more than the source
// (fwmark, iif, to, not...) or do anything but look a table up are left
// out: the lookup cannot tell whether they apply, and the plan never
// changes them.
func fibOf(s reconcile.State) fib {
	f := fib{links: s.Links}
	for _, r := range s.Rules {
		f.addRule(r)
	}
	for _, r := range s.Foreign {
		if r.Detail == "" && r.Table > 0 {
			f.rules = append(f.rules, fibRule{Rule: r.Rule, desc: "rule " + r.String()})
		}
	}
	for _, r := range s.Routes {
		f.addRoute(r)
	}
	for _, r := range s.ForeignRoutes {
		f.routes = append(f.routes, fibRoute{Route: r.Route, Type: r.Type, Metric: r.Metric, desc: "route " + r.String()})
	}
	return f
}

func (f *fib) addRule(r route.Rule) {
	r = r.Canonical()
	f.rules = append(f.rules, fibRule{Rule: r, desc: "rule " + r.String()})
}

func (f *fib) addRoute(r route.Route) {
	r = r.Canonical()
	f.routes = append(f.routes, fibRoute{Route: r, Type: route.TypeUnicast, desc: "route " + r.Format(f.links[r.LinkIndex])})
}

// with returns f after ops: the rules and routes they add and delete (an
// adoption changes nothing the lookup sees).
func (f fib) with(ops reconcile.Ops) fib {
	out := fib{rules: slices.Clone(f.rules), routes: slices.Clone(f.routes), links: f.links}
	for _, op := range ops {
		switch {
		case op.Kind == reconcile.AddRule && op.Rule != nil:
			out.addRule(*op.Rule)
		case op.Kind == reconcile.DelRule && op.Rule != nil:
			r := op.Rule.Canonical()
			if i := slices.IndexFunc(out.rules, func(x fibRule) bool {
				return x.Priority == r.Priority && x.Table == r.Table && x.Src == r.Src
			}); i >= 0 {
				out.rules = slices.Delete(out.rules, i, i+1)
			}
		case op.Kind == reconcile.AddRoute && op.Route != nil:
			out.addRoute(*op.Route)
		case op.Kind == reconcile.DelRoute && op.Route != nil:
			k := op.Route.Key()
			if i := slices.IndexFunc(out.routes, func(x fibRoute) bool { return x.Key() == k }); i >= 0 {
				out.routes = slices.Delete(out.routes, i, i+1)
			}
		}
	}
	return out
}

// fibMatch is the rule that decided a lookup and the route it found.
type fibMatch struct {
	rule  fibRule
	route fibRoute
}

// same reports whether m and o are the same decision.
func (m fibMatch) same(o fibMatch) bool {
	return m.rule.Rule == o.rule.Rule && m.route.Route == o.route.Route && m.route.Type == o.route.Type
}

// lookup follows the kernel's output route lookup from src to dst through
// f: rules by priority; a rule whose source holds src looks its table up;
// the longest prefix there that holds dst (the lowest metric among equals)
// decides, unless it is a throw route or the table holds none, and then the
// next rule is tried. ok is false when no rule in f decides: the lookup goes
// on with the rules outside the range (the main table's).
func (f fib) lookup(src, dst netip.Addr) (m fibMatch, ok bool) {
	src, dst = src.Unmap(), dst.Unmap()
	rules := slices.Clone(f.rules)
	slices.SortStableFunc(rules, func(a, b fibRule) int { return cmp.Compare(a.Priority, b.Priority) })
	for _, r := range rules {
		if !ruleMatches(r.Rule, src) {
			continue
		}
		best := -1
		for i, x := range f.routes {
			if x.Table != r.Table || !x.Dst.IsValid() || !x.Dst.Contains(dst) {
				continue
			}
			if best < 0 || x.Dst.Bits() > f.routes[best].Dst.Bits() ||
				(x.Dst.Bits() == f.routes[best].Dst.Bits() && x.Metric < f.routes[best].Metric) {
				best = i
			}
		}
		if best < 0 || f.routes[best].Type == route.TypeThrow {
			continue
		}
		return fibMatch{rule: r, route: f.routes[best]}, true
	}
	return fibMatch{}, false
}

// ruleMatches reports whether r's source selector holds src.
func ruleMatches(r route.Rule, src netip.Addr) bool {
	if !r.Src.IsValid() {
		return r.Family == route.FamilyUnspec || r.Family == route.FamilyOf(src)
	}
	return r.Src.Contains(src)
}

// tableName names a table as `ip route` does: main, local, default or its
// number.
func tableName(t int) string {
	switch t {
	case route.TableMain:
		return "main"
	case route.TableLocal:
		return "local"
	case route.TableDefault:
		return "default"
	}
	return strconv.Itoa(t)
}
