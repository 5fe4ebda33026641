package kerneltest

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/mpfleet/mpfleet/internal/mptcp"
	"github.com/mpfleet/mpfleet/internal/reconcile"
	"github.com/mpfleet/mpfleet/internal/route"
)

// legacy returns s's rule and routes as an agent before route.Protocol made
// them: foreign, the rule without a protocol, the routes proto static.
func legacy(s route.Source) ([]route.ForeignRule, []route.ForeignRoute) {
	rules := []route.ForeignRule{{Rule: s.Rule(), Protocol: route.LegacyRuleProtocol}}
	var routes []route.ForeignRoute
	for _, r := range s.Routes() {
		routes = append(routes, route.ForeignRoute{Route: r, Protocol: route.LegacyRouteProtocol, Type: route.TypeUnicast})
	}
	return rules, routes
}

// protoSuffix ends the InRange lines of mpfleet's own entries.
var protoSuffix = fmt.Sprintf(" proto %d", route.Protocol)

// testForeignEntries: the Kernel treats foreign entries as the kernel does:
// deletes never reach them, an add where one holds the destination fails,
// only a legacy one changes its protocol, and the undo gives it back.
func testForeignEntries(t *testing.T, open Opener) {
	ns := open(t, 2)
	k := ns.Kernel()
	ls := ns.Links()
	ctx := context.Background()
	s1 := ls[0].Source(false, 0)
	l1r, l1t := legacy(s1)
	// `ip rule add from 198.18.9.2 lookup 100 priority 7150` and a boot
	// route in table 7150.
	hand := route.ForeignRule{Rule: route.Rule{Priority: 7150, Src: netip.MustParsePrefix("198.18.9.2/32"), Table: 100}.Canonical()}
	bootRoute := route.ForeignRoute{Route: route.Route{Table: 7150, Dst: netip.MustParsePrefix("0.0.0.0/0"), Gateway: Gateway(ls[0].V4), LinkIndex: ls[0].Index}, Protocol: route.ProtoBoot, Type: route.TypeUnicast}
	ns.Load(t, reconcile.State{Foreign: append(l1r, hand), ForeignRoutes: append(l1t, bootRoute)})
	do := func(op reconcile.Op) (reconcile.Op, error) { return k.Do(ctx, op) }
	checkRefused(t, ns, []refusal{
		{"delete a legacy rule", reconcile.Op{Kind: reconcile.DelRule, Rule: ptr(s1.Rule())}, os.ErrNotExist},
		{"delete a legacy route", reconcile.Op{Kind: reconcile.DelRoute, Route: &s1.Routes()[1]}, os.ErrNotExist},
		{"delete a hand-made route", reconcile.Op{Kind: reconcile.DelRoute, Route: &bootRoute.Route}, os.ErrNotExist},
		{"add over a hand-made route", reconcile.Op{Kind: reconcile.AddRoute, Route: ptr(bootRoute.Route)}, os.ErrExist},
		{"add over a legacy route", reconcile.Op{Kind: reconcile.AddRoute, Route: &s1.Routes()[0]}, os.ErrExist},
		{"adopt a hand-made route", reconcile.Op{Kind: reconcile.SetRouteProtocol, Route: &bootRoute.Route, Protocol: route.Protocol, OldProtocol: route.ProtoBoot}, route.ErrInvalid},
		{"adopt as something else", reconcile.Op{Kind: reconcile.SetRuleProtocol, Rule: ptr(s1.Rule()), Protocol: route.ProtoKernel, OldProtocol: route.LegacyRuleProtocol}, route.ErrInvalid},
		{"adopt a route that differs", reconcile.Op{Kind: reconcile.SetRouteProtocol, Route: ptr(bootRoute.Route), Protocol: route.Protocol, OldProtocol: route.LegacyRouteProtocol}, os.ErrNotExist},
	})
	before := ns.Snapshot(t)
	var undos []reconcile.Op
	for _, op := range []reconcile.Op{
		{Kind: reconcile.SetRouteProtocol, Route: &s1.Routes()[0], Protocol: route.Protocol, OldProtocol: route.LegacyRouteProtocol},
		{Kind: reconcile.SetRouteProtocol, Route: &s1.Routes()[1], Protocol: route.Protocol, OldProtocol: route.LegacyRouteProtocol},
		{Kind: reconcile.SetRuleProtocol, Rule: ptr(s1.Rule()), Protocol: route.Protocol, OldProtocol: route.LegacyRuleProtocol},
	} {
		undo, err := do(op)
		if err != nil {
			t.Fatalf("%v: %v", op, err)
		}
		undos = append(undos, undo)
	}
	st := readState(t, k, reconcile.HostConfig{})
	if got, want := route.Render(st.Rules, st.Routes), route.Render([]route.Rule{s1.Rule()}, s1.Routes()); got != want {
		t.Errorf("adopted:\n%s\nwant:\n%s", got, want)
	}
	if len(st.Foreign) != 1 || len(st.ForeignRoutes) != 1 {
		t.Errorf("foreign after adoption: %v %v, want the hand-made ones", st.Foreign, st.ForeignRoutes)
	}
	for i := len(undos) - 1; i >= 0; i-- {
		if _, err := do(undos[i]); err != nil {
			t.Fatalf("undo %v: %v", undos[i], err)
		}
	}
	if after := ns.Snapshot(t); after != before {
		t.Errorf("undone adoption:\n%s\nwant:\n%s", after, before)
	}
}

// testForeignSurvives: a rule and a route someone added by hand inside the
// range survive every reconcile, are reported, and are kept apart from;
// everything mpfleet adds carries its protocol.
func testForeignSurvives(t *testing.T, open Opener) {
	ns := open(t, 2)
	k := ns.Kernel()
	ls := ns.Links()
	// `ip rule add from 198.18.99.2 lookup 100 priority 7101` and
	// `ip route add unreachable 198.18.99.0/24 table 7150 proto boot`.
	ns.Load(t, reconcile.State{
		Foreign:       []route.ForeignRule{{Rule: route.Rule{Priority: 7101, Src: netip.MustParsePrefix("198.18.99.2/32"), Table: 100}.Canonical()}},
		ForeignRoutes: []route.ForeignRoute{{Route: route.Route{Table: 7150, Dst: netip.MustParsePrefix("198.18.99.0/24")}, Protocol: route.ProtoBoot, Type: route.TypeUnreachable}},
	})
	foreign := ns.InRange(t)
	if len(foreign) != 2 {
		t.Fatalf("hand-made entries: %q", foreign)
	}

	s0, s1 := ls[0].Source(false, 0), ls[1].Source(true, 1)
	desired := WithSources(reconcile.HostConfig{Enabled: ptr(true)}, mptcp.FlagSubflow, s0, s1)
	actual := readState(t, k, desired)
	var got []string
	for _, c := range reconcile.Conflicts(desired, actual) {
		got = append(got, c.String()+" @ "+c.Where(route.DefaultRange))
	}
	want := []string{
		"rule 7101: from 198.18.99.2 lookup 100 proto unspec @ priority 7101",
		"route unreachable 198.18.99.0/24 table 7150 proto boot @ table 7150",
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("conflicts read from the kernel (-want +got):\n%s", d)
	}
	if _, err := reconcile.Plan(desired, actual); !errors.Is(err, reconcile.ErrConflict) {
		t.Errorf("Plan into priority 7101 = %v, want ErrConflict", err)
	}
	// s1 cannot have priority 7101: it goes to 7102.
	cfg, moves := reconcile.AvoidForeign(desired, actual)
	if len(moves) != 1 || moves[0].NewTable != 7102 || moves[0].NewPriority != 7102 {
		t.Fatalf("moves %+v, want s1 to 7102", moves)
	}
	mustReconcile(t, k, cfg)
	raw := ns.InRange(t)
	var own []string
	for _, line := range raw {
		if !slices.Contains(foreign, line) {
			own = append(own, line)
		}
	}
	if len(own) != 6 || len(raw) != 8 {
		t.Fatalf("the range holds\n%s\nwant the 2 hand-made entries and 2 rules and 4 routes of mpfleet's", strings.Join(raw, "\n"))
	}
	for _, line := range own {
		if !strings.HasSuffix(line, protoSuffix) {
			t.Errorf("%s: does not carry mpfleet's protocol", line)
		}
	}
	after := checkConverged(t, k, cfg)
	if again, _ := reconcile.AvoidForeign(desired, after); !cmp.Equal(again, cfg, cmpOpts) {
		t.Errorf("AvoidForeign moved elsewhere the second time")
	}

	// Nothing managed: mpfleet's own go, the hand-made ones stay.
	mustReconcile(t, k, reconcile.HostConfig{})
	if got := ns.InRange(t); !slices.Equal(got, foreign) {
		t.Errorf("the range holds\n%s\nwant only the hand-made\n%s", strings.Join(got, "\n"), strings.Join(foreign, "\n"))
	}
}

// testAdoptsLegacy: the rules and routes an agent made before route.Protocol
// are adopted by the plan for the same config; a failure at any step of it
// leaves the namespace as it was.
func testAdoptsLegacy(t *testing.T, open Opener) {
	ns := open(t, 2)
	k := ns.Kernel()
	ls := ns.Links()
	ctx := context.Background()
	s0, s1 := ls[0].Source(false, 0), ls[1].Source(true, 1)
	var st reconcile.State
	for _, s := range []route.Source{s0, s1} {
		rules, routes := legacy(s)
		st.Foreign, st.ForeignRoutes = append(st.Foreign, rules...), append(st.ForeignRoutes, routes...)
	}
	ns.Load(t, st)
	desired := WithSources(reconcile.HostConfig{}, 0, s0, s1)
	desired.Endpoints = nil
	actual, ops := readPlan(t, k, desired)
	if len(actual.Foreign) != 2 || len(actual.ForeignRoutes) != 4 || len(reconcile.Conflicts(desired, actual)) != 0 {
		t.Fatalf("legacy entries read as %v %v; conflicts %v", actual.Foreign, actual.ForeignRoutes, reconcile.Conflicts(desired, actual))
	}
	if cfg, moves := reconcile.AvoidForeign(desired, actual); len(moves) != 0 || !cmp.Equal(cfg, desired, cmpOpts) {
		t.Fatalf("AvoidForeign moved %v", moves)
	}
	if len(ops) != 6 {
		t.Fatalf("plan:\n%v\nwant 4 routes and 2 rules adopted", ops)
	}
	for _, op := range ops {
		if op.Kind != reconcile.SetRuleProtocol && op.Kind != reconcile.SetRouteProtocol {
			t.Fatalf("plan:\n%v\nwant only adoptions", ops)
		}
	}
	before, beforeRaw := ns.Snapshot(t), ns.InRange(t)
	injected := errors.New("injected")
	for step := 1; step <= len(ops); step++ {
		err := reconcile.Apply(ctx, &failingKernel{Kernel: k, at: step, err: injected}, ops)
		var ae *reconcile.ApplyError
		if !errors.As(err, &ae) || ae.RollbackErr != nil {
			t.Fatalf("step %d: %v", step, err)
		}
		if after, raw := ns.Snapshot(t), ns.InRange(t); after != before || !slices.Equal(raw, beforeRaw) {
			t.Fatalf("failure at step %d: namespace not restored:\n%s\n%s\nwant:\n%s\n%s", step, after, strings.Join(raw, "\n"), before, strings.Join(beforeRaw, "\n"))
		}
	}
	if err := reconcile.Apply(ctx, k, ops); err != nil {
		t.Fatal(err)
	}
	raw := ns.InRange(t)
	if len(raw) != 6 {
		t.Fatalf("after adoption the range holds\n%s", strings.Join(raw, "\n"))
	}
	for _, line := range raw {
		if !strings.HasSuffix(line, protoSuffix) {
			t.Errorf("%s: not adopted", line)
		}
	}
	if after := checkConverged(t, k, desired); len(after.Foreign)+len(after.ForeignRoutes) != 0 {
		t.Errorf("foreign after adoption: %v %v", after.Foreign, after.ForeignRoutes)
	}
}
