package agent

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/mpfleet/mpfleet/internal/reconcile"
	"github.com/mpfleet/mpfleet/internal/route"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
)

// cmpAddrs compares the netip types by value.
var cmpAddrs = cmp.Options{
	cmp.Comparer(func(a, b netip.Addr) bool { return a == b }),
	cmp.Comparer(func(a, b netip.Prefix) bool { return a == b }),
}

// kernelText renders the fake kernel's routing: mpfleet's rules and routes
// and the foreign ones.
func (h *harness) kernelText() string {
	s := h.k.Snapshot()
	return route.Render(s.Rules, s.Routes) + reconcile.State{Foreign: s.Foreign, ForeignRoutes: s.ForeignRoutes}.String()
}

// TestAgentForeignRouting: a rule and a route someone made by hand inside
// mpfleet's range are never deleted; the host is DEGRADED with a
// CODE_ROUTING_CONFLICT problem for each, naming it, what it holds and the
// fix; the address whose priority the rule holds moves to a free table and
// priority. Once they are removed, the host is IN_SYNC with the address back
// where the policy puts it.
func TestAgentForeignRouting(t *testing.T) {
	h := newHarness(t)
	p := testPolicy()
	rendered := h.rendered(p)
	taken := rendered.Rules[0] // 198.18.0.2's rule
	handRule := route.ForeignRule{Rule: route.Rule{Priority: taken.Priority, Src: netip.MustParsePrefix("198.18.77.2/32"), Table: 100}.Canonical()}
	handRoute := route.ForeignRoute{Route: route.Route{Table: 7199, Dst: netip.MustParsePrefix("198.18.77.0/24")}, Protocol: route.ProtoBoot, Type: route.TypeUnreachable}
	mustLoad(t, h.k, reconcile.State{Foreign: []route.ForeignRule{handRule}, ForeignRoutes: []route.ForeignRoute{handRoute}})
	h.ctrl.setDesired(managed(1, p))
	h.start()

	r := h.ctrl.waitReport(t, 0, "DEGRADED at 1", inState(pb.SyncState_SYNC_STATE_DEGRADED, 1))
	if diff := cmp.Diff([]string{"ROUTING_CONFLICT ", "ROUTING_CONFLICT "}, problemCodes(r)); diff != "" {
		t.Fatalf("problems (-want +got):\n%s\n%v", diff, r.GetProblems())
	}
	for i, want := range []string{
		fmt.Sprintf("rule %d: from 198.18.77.2 lookup 100 proto unspec holds priority %d", taken.Priority, taken.Priority),
		"route unreachable 198.18.77.0/24 table 7199 proto boot holds table 7199",
	} {
		msg := r.GetProblems()[i].GetMessage()
		if !strings.Contains(msg, want) || !strings.Contains(msg, "routing.table_min/max and priority_min/max") {
			t.Errorf("problem %d: %q does not say %q and the fix", i, msg, want)
		}
	}
	if msg := r.GetProblems()[0].GetMessage(); !strings.Contains(msg, "198.18.0.2 uses table") {
		t.Errorf("problem %q does not say where 198.18.0.2 went", msg)
	}
	if !strings.Contains(r.GetLastError(), "holds priority") {
		t.Errorf("last error %q", r.GetLastError())
	}
	h.ctrl.waitEvent(t, 0, pb.AgentEvent_KIND_APPLIED)

	// Nothing foreign deleted or changed; 198.18.0.2 is routed elsewhere.
	st := h.k.Snapshot()
	if diff := cmp.Diff([]route.ForeignRule{handRule}, st.Foreign, cmpAddrs); diff != "" {
		t.Errorf("foreign rules (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]route.ForeignRoute{handRoute}, st.ForeignRoutes, cmpAddrs); diff != "" {
		t.Errorf("foreign routes (-want +got):\n%s", diff)
	}
	var moved route.Rule
	for _, x := range st.Rules {
		if x.Src == taken.Src {
			moved = x
		}
	}
	if moved.Priority == taken.Priority || moved.Table == taken.Table || moved.Table == 7199 || !route.DefaultRange.OwnsRule(moved) {
		t.Errorf("198.18.0.2's rule is %v; want it moved off priority %d into a free table", moved, taken.Priority)
	}
	if got := r.GetHealth().GetPaths()[0].GetTable(); got != uint32(moved.Table) {
		t.Errorf("eth0's path reports table %d, the kernel has %d", got, moved.Table)
	}
	if len(st.Rules) != 2 || len(st.Routes) != 4 {
		t.Errorf("kernel:\n%s", h.kernelText())
	}

	// The owner removes them: the address goes back, the host is IN_SYNC.
	_, n, _ := h.ctrl.counts()
	h.k.ClearForeign()
	h.sys.change(Change{Link: 2})
	h.ctrl.waitReport(t, n, "IN_SYNC at 1", inState(pb.SyncState_SYNC_STATE_IN_SYNC, 1))
	h.waitConverged(p)
}

// TestAgentAdoptsLegacyRouting: an agent that upgrades finds the rules and
// routes its predecessor made without mpfleet's protocol; it adopts them
// (re-makes them with it, deleting nothing) and the host is IN_SYNC, not
// DEGRADED.
func TestAgentAdoptsLegacyRouting(t *testing.T) {
	h := newHarness(t)
	p := testPolicy()
	rendered := h.rendered(p)
	var old reconcile.State
	for _, x := range rendered.Rules {
		old.Foreign = append(old.Foreign, route.ForeignRule{Rule: x, Protocol: route.LegacyRuleProtocol})
	}
	for _, x := range rendered.Routes {
		old.ForeignRoutes = append(old.ForeignRoutes, route.ForeignRoute{Route: x, Protocol: route.LegacyRouteProtocol, Type: route.TypeUnicast})
	}
	old.Endpoints = rendered.Endpoints
	for i := range old.Endpoints {
		old.Endpoints[i].ID = uint8(i + 1)
	}
	mustLoad(t, h.k, old)
	h.ctrl.setDesired(managed(1, p))
	h.start()
	r := h.ctrl.waitReport(t, 0, "IN_SYNC at 1", inState(pb.SyncState_SYNC_STATE_IN_SYNC, 1))
	if len(r.GetProblems()) != 0 {
		t.Errorf("problems %v", r.GetProblems())
	}
	ev := h.ctrl.waitEvent(t, 0, pb.AgentEvent_KIND_APPLIED)
	var kinds []string
	for _, op := range ev.GetOperations() {
		kinds = append(kinds, op.GetKind())
	}
	slices.Sort(kinds)
	kinds = slices.Compact(kinds)
	if diff := cmp.Diff([]string{"set-limits", "set-route-protocol", "set-rule-protocol", "set-sysctl"}, kinds); diff != "" {
		t.Errorf("operations (-want +got):\n%s", diff)
	}
	st := h.k.Snapshot()
	if len(st.Foreign)+len(st.ForeignRoutes) != 0 || route.Render(st.Rules, st.Routes) != route.Render(rendered.Rules, rendered.Routes) {
		t.Errorf("kernel after adoption:\n%s", h.kernelText())
	}
}
