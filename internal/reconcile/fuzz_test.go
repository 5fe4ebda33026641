package reconcile_test

import (
	"context"
	"errors"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/mpfleet/mpfleet/internal/mptcp"
	"github.com/mpfleet/mpfleet/internal/reconcile"
	"github.com/mpfleet/mpfleet/internal/reconcile/fakekernel"
	"github.com/mpfleet/mpfleet/internal/route"
)

// gen draws choices from fuzz bytes (zeros once they run out).
type gen struct {
	b []byte
	i int
}

func (g *gen) intn(n int) int {
	if g.i >= len(g.b) {
		return 0
	}
	v := int(g.b[g.i])
	g.i++
	return v % n
}

func (g *gen) chance(n int) bool { return g.intn(n) == 0 }

// pool is the addresses a random host may use: one per link, link i+2, in
// both families.
var pool = func() []netip.Prefix {
	var p []netip.Prefix
	for i := 1; i <= 6; i++ {
		p = append(p, addr4(i), addr6(i))
	}
	return p
}()

func poolLink(i int) int { return i/2 + 2 }

var flagChoices = []mptcp.Flags{
	mptcp.FlagSubflow,
	mptcp.FlagSignal,
	mptcp.FlagSubflow | mptcp.FlagBackup,
	mptcp.FlagSubflow | mptcp.FlagFullmesh,
	mptcp.FlagSubflow | mptcp.FlagBackup | mptcp.FlagFullmesh,
	mptcp.FlagSignal | mptcp.FlagBackup,
	mptcp.FlagSignal | mptcp.FlagSubflow,
	mptcp.FlagSubflow | mptcp.FlagLaminar,
	mptcp.FlagSignal | mptcp.FlagFullmesh, // invalid
}

var sysctlChoices = map[string][]string{
	"net.mptcp.add_addr_timeout": {"120", "60", "30"},
	"net.mptcp.checksum_enabled": {"0", "1"},
	"net.mptcp.stale_loss_cnt":   {"4", "2", "6"},
	"net.mptcp.scheduler":        {"default"},
}

// endpoints draws up to max endpoints of distinct pool addresses. With ids
// > 0 each may carry a distinct ID up to ids; with all, each does (as in the
// kernel).
func (g *gen) endpoints(max int, ids int, all bool) []mptcp.Endpoint {
	n := g.intn(max + 1)
	perm := make([]int, len(pool))
	for i := range perm {
		perm[i] = i
	}
	for i := len(perm) - 1; i > 0; i-- {
		j := g.intn(i + 1)
		perm[i], perm[j] = perm[j], perm[i]
	}
	used := map[uint8]bool{}
	var eps []mptcp.Endpoint
	for _, pi := range perm[:min(n, len(pool))] {
		e := mptcp.Endpoint{Addr: pool[pi].Addr(), Flags: flagChoices[g.intn(len(flagChoices)-1)]}
		if g.chance(40) {
			e.Flags = flagChoices[len(flagChoices)-1]
		}
		if !g.chance(3) {
			e.IfIndex = poolLink(pi)
		}
		if e.Flags == mptcp.FlagSignal && g.chance(3) {
			e.Port = uint16(10000 + g.intn(3))
		}
		if ids > 0 {
			id := uint8(1 + g.intn(ids))
			for all && used[id] {
				id = id%uint8(ids) + 1
			}
			if !used[id] {
				used[id] = true
				e.ID = id
			}
		}
		eps = append(eps, e)
	}
	return eps
}

// routing draws policy routing for some pool addresses: each its own table
// (so there is at most one default route per table), sometimes without a
// gateway or with another one.
func (g *gen) routing() ([]route.Rule, []route.Route) {
	var rules []route.Rule
	var routes []route.Route
	for i, p := range pool {
		if !g.chance(2) {
			continue
		}
		s := route.Source{Addr: p, LinkIndex: poolLink(i), Gateway: gw(p), Table: 7100 + i + 20*g.intn(2), Priority: 7100 + g.intn(4)}
		switch g.intn(4) {
		case 0:
			s.Gateway = netip.Addr{}
		case 1:
			s.LinkIndex = poolLink(g.intn(len(pool)))
		}
		rules = append(rules, s.Rule())
		routes = append(routes, s.Routes()...)
	}
	return rules, routes
}

// foreign draws foreign entries: some of desired's rules and routes as an
// older agent made them (which Plan adopts, unless actual has them too), and
// hand-made ones anywhere in the range.
func (g *gen) foreign(desired reconcile.HostConfig, actual reconcile.State) ([]route.ForeignRule, []route.ForeignRoute) {
	var rules []route.ForeignRule
	var routes []route.ForeignRoute
	held := map[route.Key]bool{}
	for _, r := range actual.Routes {
		held[r.Key()] = true
	}
	for _, r := range desired.Rules {
		if g.chance(4) {
			rules = append(rules, route.ForeignRule{Rule: r.Canonical(), Protocol: route.LegacyRuleProtocol})
		}
	}
	for _, r := range desired.Routes {
		if g.chance(4) && !held[r.Key()] {
			routes = append(routes, route.ForeignRoute{Route: r.Canonical(), Protocol: route.LegacyRouteProtocol, Type: route.TypeUnicast})
		}
	}
	if g.chance(3) {
		src := netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, 200, byte(g.intn(256))}), 32)
		rules = append(rules, route.ForeignRule{Rule: route.Rule{Priority: 7100 + g.intn(40), Src: src, Table: 100}.Canonical()})
	}
	if g.chance(3) {
		routes = append(routes, route.ForeignRoute{Route: route.Route{Table: 7100 + g.intn(40), Dst: netip.MustParsePrefix("198.18.200.0/24")},
			Protocol: route.ProtoBoot, Type: route.TypeUnreachable})
	}
	return rules, routes
}

func (g *gen) sysctls() map[string]string {
	m := map[string]string{}
	for _, name := range []string{"net.mptcp.add_addr_timeout", "net.mptcp.checksum_enabled", "net.mptcp.stale_loss_cnt", "net.mptcp.scheduler"} {
		if g.chance(2) {
			vs := sysctlChoices[name]
			m[name] = vs[g.intn(len(vs))]
		}
	}
	return m
}

func (g *gen) limits(allowInvalid bool) *mptcp.Limits {
	if g.chance(3) {
		return nil
	}
	n := 9
	if allowInvalid && g.chance(20) {
		n = 10
	}
	return &mptcp.Limits{Subflows: uint32(g.intn(n)), AddAddrAccepted: uint32(g.intn(n))}
}

func (g *gen) enabled() *bool {
	switch g.intn(3) {
	case 0:
		return nil
	case 1:
		return ptr(true)
	}
	return ptr(false)
}

// checkPlan is the planner's contract on one random (actual, desired) pair:
// the plan is valid or the config rejected with ErrInvalid; the plan applies
// to the fake without breaking a kernel rule, never adds an endpoint before
// its routes and rules, converges (the state read back is the desired one,
// a second plan is empty), keeps the IDs of endpoints that stay, and a
// failure injected at a random step leaves the fake exactly as it was.
// Foreign entries are kept apart from (AvoidForeign, then Plan), survive, and
// are adopted only when legacy and wanted.
func checkPlan(t *testing.T, data []byte) {
	ctx := context.Background()
	g := &gen{b: data}
	actual := reconcile.State{Enabled: g.enabled(), Limits: g.limits(false), Sysctls: g.sysctls(), Endpoints: g.endpoints(mptcp.MaxEndpoints, 12, true)}
	for i := range actual.Endpoints {
		if actual.Endpoints[i].Flags&mptcp.FlagFullmesh != 0 && actual.Endpoints[i].Flags&mptcp.FlagSignal != 0 {
			actual.Endpoints[i].Flags &^= mptcp.FlagFullmesh
		}
	}
	actual.Rules, actual.Routes = g.routing()
	desired := reconcile.HostConfig{Enabled: g.enabled(), Limits: g.limits(true), Sysctls: g.sysctls()}
	ids := 0
	if g.chance(3) {
		ids = 10
	}
	desired.Endpoints = g.endpoints(mptcp.MaxEndpoints+1, ids, false)
	desired.Rules, desired.Routes = g.routing()
	actual.Foreign, actual.ForeignRoutes = g.foreign(desired, actual)

	k := fakekernel.New(route.Range{})
	if err := k.Load(actual); err != nil {
		t.Fatalf("load %+v: %v", actual, err)
	}
	before := k.Snapshot()
	read, err := k.Read(ctx, desired)
	if err != nil {
		t.Fatal(err)
	}
	verr := desired.Validate()
	if verr == nil {
		desired, _ = reconcile.AvoidForeign(desired, read)
	}
	ops, err := reconcile.Plan(desired, read)
	if verr != nil {
		if err == nil || !errors.Is(err, reconcile.ErrInvalid) {
			t.Fatalf("invalid desired (%v) planned: %v, %v", verr, ops, err)
		}
		return
	}
	if err != nil {
		t.Fatalf("Plan: %v", err)
	}
	conflicts := reconcile.Conflicts(desired, read)

	lastRouting, firstEndpointAdd := -1, len(ops)
	for i, op := range ops {
		switch op.Kind {
		case reconcile.AddRoute, reconcile.AddRule:
			lastRouting = i
		case reconcile.AddEndpoint:
			firstEndpointAdd = min(firstEndpointAdd, i)
		case reconcile.DelEndpoint:
			if firstEndpointAdd < i {
				t.Fatalf("endpoint deleted after one was added:\n%v", ops)
			}
		}
	}
	if lastRouting > firstEndpointAdd {
		t.Fatalf("an endpoint is added before the routing:\n%v", ops)
	}

	if len(ops) > 0 {
		step := 1
		if len(data) > 0 {
			step += int(data[len(data)-1]) % len(ops)
		}
		k.FailAt(step, errInjected)
		if err := reconcile.Apply(ctx, k, ops); !errors.Is(err, errInjected) {
			t.Fatalf("Apply with failure at %d = %v", step, err)
		}
		if d := cmp.Diff(before, k.Snapshot(), cmpOpts); d != "" {
			t.Fatalf("failure at step %d (%v) not rolled back (-before +after):\n%s\nplan:\n%v", step, ops[step-1], d, ops)
		}
		k.FailOn(nil)
	}

	if err := reconcile.Apply(ctx, k, ops); err != nil {
		t.Fatalf("Apply:\n%v\n%v", ops, err)
	}
	after, err := k.Read(ctx, desired)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := text(after, false), text(wantState(desired, after), false); got != want {
		t.Fatalf("state after apply:\n%s\nwant:\n%s\nplan:\n%v", got, want, ops)
	}
	if again, err := reconcile.Plan(desired, after); err != nil || len(again) != 0 {
		t.Fatalf("second plan = %v, %v; want none", again, err)
	}
	// The foreign entries not adopted are all still there, untouched, and
	// there is nothing left to adopt.
	if d := cmp.Diff(conflicts, reconcile.Conflicts(desired, after), cmpOpts); d != "" {
		t.Fatalf("foreign entries changed (-before +after):\n%s\nplan:\n%v", d, ops)
	}
	if n := len(after.Foreign) + len(after.ForeignRoutes); n != len(conflicts) {
		t.Fatalf("%d foreign entries after the apply, want the %d conflicts", n, len(conflicts))
	}
	// IDs: explicit ones as asked; an endpoint that stays (same address,
	// port, interface and non-mutable flags, its ID not claimed) keeps its ID.
	oldByAddr := map[netip.Addr]mptcp.Endpoint{}
	for _, e := range before.Endpoints {
		oldByAddr[e.Addr] = e
	}
	claimed := map[uint8]bool{}
	for _, d := range desired.Endpoints {
		claimed[d.ID] = d.ID != 0
	}
	newByAddr := map[netip.Addr]mptcp.Endpoint{}
	for _, e := range after.Endpoints {
		newByAddr[e.Addr] = e
	}
	for _, d := range desired.Endpoints {
		got := newByAddr[d.Addr]
		if d.ID != 0 && got.ID != d.ID {
			t.Fatalf("endpoint %v got id %d, want the explicit %d", d.Addr, got.ID, d.ID)
		}
		if o, ok := oldByAddr[d.Addr]; ok && d.ID == 0 && !claimed[o.ID] && got.ID != o.ID {
			t.Fatalf("endpoint %v changed id %d -> %d", d.Addr, o.ID, got.ID)
		}
	}
}

func FuzzPlan(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20})
	f.Add([]byte("\x01\x02\x08\x08\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x00\x00\x00\x00\x00\x00\x00\x00\xff\xfe\xfd"))
	r := rand.New(rand.NewPCG(1, 2))
	for range 20 {
		b := make([]byte, 160)
		for i := range b {
			b[i] = byte(r.UintN(256))
		}
		f.Add(b)
	}
	f.Fuzz(checkPlan)
}

// TestPlanRandom runs the fuzz property on many seeded random inputs in every
// ordinary test run.
func TestPlanRandom(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 11))
	for i := range 3000 {
		b := make([]byte, 40+r.IntN(200))
		for j := range b {
			b[j] = byte(r.UintN(256))
		}
		t.Run("", func(t *testing.T) {
			if t.Failed() {
				return
			}
			checkPlan(t, b)
		})
		_ = i
	}
}
