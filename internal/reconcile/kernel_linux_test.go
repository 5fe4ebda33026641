package reconcile

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/mpfleet/mpfleet/internal/mptcp"
	"github.com/mpfleet/mpfleet/internal/route"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// routerStates are desired states for one four-link lab, each reachable from
// any other.
func routerStates(t *testing.T, l *lab) []HostConfig {
	sub, sig := mptcp.FlagSubflow, mptcp.FlagSignal
	var st []HostConfig
	// 0: MPTCP on, nothing else.
	st = append(st, HostConfig{Enabled: ptr(true)})
	// 1: two IPv4 subflow endpoints with their policy routing.
	st = append(st, withSources(HostConfig{
		Enabled: ptr(true), Limits: &mptcp.Limits{Subflows: 2, AddAddrAccepted: 2},
		Sysctls: map[string]string{"net.mptcp.add_addr_timeout": "60"},
	}, sub, l.source(t, 0, false, 0), l.source(t, 1, false, 1)))
	// 2: both families on four links, mixed flags.
	s2 := withSources(HostConfig{
		Enabled: ptr(true), Limits: &mptcp.Limits{Subflows: 4, AddAddrAccepted: 4},
		Sysctls: map[string]string{"net.mptcp.add_addr_timeout": "60", "net.mptcp.checksum_enabled": "1", "net.mptcp.scheduler": "default"},
	}, sub, l.source(t, 0, false, 0), l.source(t, 1, false, 1), l.source(t, 0, true, 10))
	s2 = withSources(s2, sig, l.source(t, 2, false, 2), l.source(t, 3, true, 13))
	st = append(st, s2)
	// 3: as 2 with flags changed in place and otherwise, and one gateway
	// and one table moved.
	s3 := withSources(HostConfig{
		Enabled: ptr(true), Limits: &mptcp.Limits{Subflows: 4, AddAddrAccepted: 4},
		Sysctls: map[string]string{"net.mptcp.add_addr_timeout": "30", "net.mptcp.checksum_enabled": "0", "net.mptcp.scheduler": "default"},
	}, sub|mptcp.FlagBackup, l.source(t, 0, false, 0))
	moved := l.source(t, 1, false, 1)
	moved.Gateway = otherGW(l.links[1].v4)
	s3 = withSources(s3, sub|mptcp.FlagFullmesh, moved)
	s3 = withSources(s3, sig, l.source(t, 0, true, 20))
	s3 = withSources(s3, sub, l.source(t, 2, false, 2), l.source(t, 3, true, 13))
	st = append(st, s3)
	// 4: the kernel's maximum of eight endpoints.
	s4 := HostConfig{Enabled: ptr(true), Limits: &mptcp.Limits{Subflows: 8, AddAddrAccepted: 8}}
	for i := range 4 {
		s4 = withSources(s4, sub, l.source(t, i, false, i), l.source(t, i, true, 10+i))
	}
	st = append(st, s4)
	// 5: eight endpoints that all differ from 4's (explicit IDs for half,
	// other flags, no interface), in other tables: the old ones must go
	// before the new ones come.
	s5 := HostConfig{Enabled: ptr(true), Limits: &mptcp.Limits{Subflows: 8, AddAddrAccepted: 0}}
	for i := range 4 {
		s5 = withSources(s5, sig, l.source(t, i, false, 40+i))
		s5.Endpoints[len(s5.Endpoints)-1].ID = uint8(20 + i)
	}
	for i := range 4 {
		s5 = withSources(s5, sub|mptcp.FlagBackup, l.source(t, i, true, 50+i))
	}
	// No interface on any endpoint: every endpoint of s4 differs in more
	// than flags and is replaced.
	for i := range s5.Endpoints {
		s5.Endpoints[i].IfIndex = 0
	}
	st = append(st, s5)
	// 6: MPTCP off, nothing managed left.
	st = append(st, HostConfig{Enabled: ptr(false), Limits: &mptcp.Limits{Subflows: 2}})
	return st
}

func TestIntegrationRouterStates(t *testing.T) {
	l := newLab(t, 4)
	ctx := context.Background()

	// Someone else's rule and table, which must survive every state.
	foreign := netlink.NewRule()
	foreign.Priority, foreign.Table = 100, 100
	foreign.Src = &net.IPNet{IP: net.ParseIP("198.18.10.2").To4(), Mask: net.CIDRMask(32, 32)}
	if err := l.h.RuleAdd(foreign); err != nil {
		t.Fatal(err)
	}
	_, dflt, _ := net.ParseCIDR("0.0.0.0/0")
	if err := l.h.RouteAdd(&netlink.Route{Table: 100, Dst: dflt, LinkIndex: l.links[0].index, Gw: net.ParseIP("198.18.10.1")}); err != nil {
		t.Fatal(err)
	}
	foreignText := func() string {
		rules, _ := l.h.RuleListFiltered(netlink.FAMILY_V4, &netlink.Rule{Priority: 100}, netlink.RT_FILTER_PRIORITY)
		routes, _ := l.h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: 100}, netlink.RT_FILTER_TABLE)
		var b strings.Builder
		for _, r := range rules {
			b.WriteString(r.String() + "\n")
		}
		for _, r := range routes {
			b.WriteString(r.String() + "\n")
		}
		return b.String()
	}
	wantForeign := foreignText()
	if !strings.Contains(wantForeign, "table 100") {
		t.Fatalf("foreign setup missing: %q", wantForeign)
	}

	states := routerStates(t, l)
	check := func(label string, i int) {
		t.Helper()
		desired := states[i]
		ops, err := l.reconcile(t, l.k, desired)
		if err != nil {
			t.Fatalf("%s: state %d: apply:\n%v\n%v", label, i, ops, err)
		}
		got, err := l.k.Read(ctx, desired)
		if err != nil {
			t.Fatal(err)
		}
		if g, w := text(got, false), text(wantState(desired, got), false); g != w {
			t.Fatalf("%s: state %d: kernel holds\n%s\nwant\n%s\nafter plan\n%v", label, i, g, w, ops)
		}
		again, err := Plan(desired, got)
		if err != nil || len(again) != 0 {
			t.Fatalf("%s: state %d: second plan = %v, %v; want no ops", label, i, again, err)
		}
		if f := foreignText(); f != wantForeign {
			t.Fatalf("%s: state %d: foreign rule/table changed:\n%s\nwant\n%s", label, i, f, wantForeign)
		}
	}
	for i := range states {
		check("in order", i)
	}
	r := rand.New(rand.NewPCG(1, 1))
	for round := range 2 {
		for _, i := range r.Perm(len(states)) {
			check("random order round "+string(rune('1'+round)), i)
		}
	}
}

func TestIntegrationDryRunNamesInterfaces(t *testing.T) {
	l := newLab(t, 1)
	desired := withSources(HostConfig{}, mptcp.FlagSubflow, l.source(t, 0, false, 0))
	actual, err := l.k.Read(context.Background(), desired)
	if err != nil {
		t.Fatal(err)
	}
	ops, err := Plan(desired, actual)
	if err != nil {
		t.Fatal(err)
	}
	want := `+ route 198.18.10.0/24 dev veth1 table 7100 src 198.18.10.2 scope link
+ route default via 198.18.10.1 dev veth1 table 7100
+ rule 7100: from 198.18.10.2 lookup 7100
+ endpoint 198.18.10.2 id 1 subflow dev veth1
`
	if got := ops.String(); got != want {
		t.Fatalf("dry run:\n%s\nwant:\n%s", got, want)
	}
}

// messyLab puts a hand-made state into the lab and returns a desired state
// whose plan uses every kind of op.
func messyLab(t *testing.T, l *lab) HostConfig {
	t.Helper()
	old := withSources(HostConfig{
		Enabled: ptr(false), Limits: &mptcp.Limits{Subflows: 2},
		Sysctls: map[string]string{"net.mptcp.add_addr_timeout": "120"},
	}, mptcp.FlagSubflow, l.source(t, 0, false, 0), l.source(t, 1, false, 1))
	old = withSources(old, mptcp.FlagSignal, l.source(t, 2, false, 2), l.source(t, 3, false, 3))
	if ops, err := l.reconcile(t, l.k, old); err != nil {
		t.Fatalf("set up the old state:\n%v\n%v", ops, err)
	}
	moved := l.source(t, 1, false, 1)
	moved.Gateway = otherGW(l.links[1].v4)
	desired := withSources(HostConfig{
		Enabled: ptr(true), Limits: &mptcp.Limits{Subflows: 4, AddAddrAccepted: 4},
		Sysctls: map[string]string{"net.mptcp.add_addr_timeout": "60"},
	}, mptcp.FlagSubflow|mptcp.FlagBackup, l.source(t, 0, false, 0))
	desired = withSources(desired, mptcp.FlagSubflow, moved, l.source(t, 3, true, 13))
	desired = withSources(desired, mptcp.FlagSubflow, l.source(t, 2, false, 2))
	return desired
}

func TestIntegrationFailureHalfwayRestoresKernel(t *testing.T) {
	l := newLab(t, 4)
	ctx := context.Background()
	desired := messyLab(t, l)
	actual, err := l.k.Read(ctx, desired)
	if err != nil {
		t.Fatal(err)
	}
	ops, err := Plan(desired, actual)
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[Kind]bool{}
	for _, op := range ops {
		kinds[op.Kind] = true
	}
	if len(kinds) != 9 {
		t.Fatalf("plan should use all 9 kinds of op, uses %v:\n%v", kinds, ops)
	}
	before := l.snapshot(t)
	injected := errors.New("injected")
	for step := 1; step <= len(ops); step++ {
		fk := &failingKernel{Kernel: l.k, at: step, err: injected}
		err := Apply(ctx, fk, ops)
		var ae *ApplyError
		if !errors.As(err, &ae) || !errors.Is(err, injected) || ae.Index != step-1 || ae.RollbackErr != nil {
			t.Fatalf("step %d: Apply = %v, want the injected failure at that step, rolled back", step, err)
		}
		if after := l.snapshot(t); after != before {
			t.Fatalf("failure at step %d (%v): kernel not restored:\n%s\nwant:\n%s", step, ops[step-1], after, before)
		}
	}
}

func TestIntegrationNinthEndpointRollsBack(t *testing.T) {
	l := newLab(t, 4)
	ctx := context.Background()
	s4 := HostConfig{Enabled: ptr(true), Limits: &mptcp.Limits{Subflows: 8, AddAddrAccepted: 8},
		Sysctls: map[string]string{"net.mptcp.add_addr_timeout": "60"}}
	for i := range 4 {
		s4 = withSources(s4, mptcp.FlagSubflow, l.source(t, i, false, i), l.source(t, i, true, 10+i))
	}
	actual, err := l.k.Read(ctx, s4)
	if err != nil {
		t.Fatal(err)
	}
	ops, err := Plan(s4, actual)
	if err != nil {
		t.Fatal(err)
	}
	// Someone adds an endpoint between plan and apply: the plan's eighth
	// endpoint is the namespace's ninth, which the kernel refuses (ERANGE)
	// after sysctls, limits, 16 routes, 8 rules and 7 endpoints went in.
	extra := mptcp.Endpoint{ID: 99, Addr: l.links[0].v4.Addr().Next(), Flags: mptcp.FlagSignal}
	if err := l.k.mp.AddEndpoint(extra); err != nil {
		t.Fatal(err)
	}
	before := l.snapshot(t)
	err = Apply(ctx, l.k, ops)
	var ae *ApplyError
	if !errors.As(err, &ae) || !errors.Is(err, mptcp.ErrTooManyEndpoints) || ae.RollbackErr != nil {
		t.Fatalf("Apply = %v, want the kernel's too-many-endpoints error, rolled back", err)
	}
	if ae.Op.Kind != AddEndpoint || ae.Index != len(ops)-1 || ae.Undone != len(ops)-1 {
		t.Errorf("failed at op %d (%v) after undoing %d, want the last op of %d", ae.Index, ae.Op, ae.Undone, len(ops))
	}
	t.Logf("%v", err)
	if after := l.snapshot(t); after != before {
		t.Fatalf("kernel not restored:\n%s\nwant:\n%s", after, before)
	}
	// Nine desired endpoints are refused before anything is touched.
	nine := s4
	nine.Endpoints = append(nine.Endpoints, extra)
	if _, err := Plan(nine, actual); !errors.Is(err, ErrInvalid) || !errors.Is(err, mptcp.ErrTooManyEndpoints) {
		t.Fatalf("Plan of nine endpoints = %v, want ErrInvalid and mptcp.ErrTooManyEndpoints", err)
	}
}

func TestIntegrationOutsideRangeUntouched(t *testing.T) {
	l := newLab(t, 1)
	// A desired rule outside the range is refused at plan time; the kernel's
	// own route layer refuses it too.
	bad := l.source(t, 0, false, 0)
	bad.Priority = 1000
	if _, err := Plan(HostConfig{Rules: []route.Rule{bad.Rule()}}, State{}); !errors.Is(err, route.ErrOutOfRange) {
		t.Fatalf("Plan = %v, want route.ErrOutOfRange", err)
	}
	if _, err := l.k.Do(context.Background(), Op{Kind: AddRule, Rule: ptr(bad.Rule())}); !errors.Is(err, route.ErrOutOfRange) {
		t.Fatalf("Do = %v, want route.ErrOutOfRange", err)
	}
}

// rawRange renders every rule whose priority or table is in the default range
// and every route in its tables, with their protocols, from a raw dump.
func (l *lab) rawRange(t *testing.T) []string {
	t.Helper()
	r := route.DefaultRange
	rules, err := l.h.RuleList(netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, nr := range rules {
		if r.HasPriority(nr.Priority) || r.HasTable(nr.Table) {
			out = append(out, fmt.Sprintf("rule %d from %v lookup %d proto %d", nr.Priority, nr.Src, nr.Table, nr.Protocol))
		}
	}
	routes, err := l.h.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
	if err != nil {
		t.Fatal(err)
	}
	for _, nr := range routes {
		if r.HasTable(nr.Table) {
			out = append(out, fmt.Sprintf("route %v table %d dev %d gw %v type %d proto %d", nr.Dst, nr.Table, nr.LinkIndex, nr.Gw, nr.Type, int(nr.Protocol)))
		}
	}
	slices.Sort(out)
	return out
}

// TestIntegrationForeignSurvives: a rule and a route someone added by hand
// inside the range survive every reconcile, are reported, and are kept apart
// from; everything mpfleet adds carries its protocol.
func TestIntegrationForeignSurvives(t *testing.T) {
	l := newLab(t, 2)
	ctx := context.Background()
	// `ip rule add from 198.18.99.2 lookup 100 priority 7101` and
	// `ip route add unreachable 198.18.99.0/24 table 7150`.
	fr := netlink.NewRule()
	fr.Priority, fr.Table = 7101, 100
	fr.Src = &net.IPNet{IP: net.ParseIP("198.18.99.2").To4(), Mask: net.CIDRMask(32, 32)}
	if err := l.h.RuleAdd(fr); err != nil {
		t.Fatal(err)
	}
	_, dst, _ := net.ParseCIDR("198.18.99.0/24")
	if err := l.h.RouteAdd(&netlink.Route{Table: 7150, Dst: dst, Type: unix.RTN_UNREACHABLE, Protocol: unix.RTPROT_BOOT}); err != nil {
		t.Fatal(err)
	}
	foreign := l.rawRange(t)
	if len(foreign) != 2 {
		t.Fatalf("hand-made entries: %q", foreign)
	}

	s0, s1 := l.source(t, 0, false, 0), l.source(t, 1, true, 1)
	desired := withSources(HostConfig{Enabled: ptr(true)}, mptcp.FlagSubflow, s0, s1)
	actual, err := l.k.Read(ctx, desired)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, c := range Conflicts(desired, actual) {
		got = append(got, c.String()+" @ "+c.Where(route.DefaultRange))
	}
	want := []string{
		"rule 7101: from 198.18.99.2 lookup 100 proto unspec @ priority 7101",
		"route unreachable 198.18.99.0/24 table 7150 proto boot @ table 7150",
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("conflicts read from the kernel (-want +got):\n%s", d)
	}
	if _, err := Plan(desired, actual); !errors.Is(err, ErrConflict) {
		t.Errorf("Plan into priority 7101 = %v, want ErrConflict", err)
	}
	// s1 cannot have priority 7101: it goes to 7102.
	cfg, moves := AvoidForeign(desired, actual)
	if len(moves) != 1 || moves[0].NewTable != 7102 || moves[0].NewPriority != 7102 {
		t.Fatalf("moves %+v, want s1 to 7102", moves)
	}
	ops, err := l.reconcile(t, l.k, cfg)
	if err != nil {
		t.Fatalf("apply:\n%v\n%v", ops, err)
	}
	raw := l.rawRange(t)
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
		if !strings.HasSuffix(line, fmt.Sprintf(" proto %d", route.Protocol)) {
			t.Errorf("%s: does not carry mpfleet's protocol", line)
		}
	}
	after, err := l.k.Read(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if again, err := Plan(cfg, after); err != nil || len(again) != 0 {
		t.Errorf("second plan = %v, %v; want none", again, err)
	}
	if again, _ := AvoidForeign(desired, after); !cmp.Equal(again, cfg, cmpOpts) {
		t.Errorf("AvoidForeign moved elsewhere the second time")
	}

	// Nothing managed: mpfleet's own go, the hand-made ones stay.
	if ops, err := l.reconcile(t, l.k, HostConfig{}); err != nil {
		t.Fatalf("apply:\n%v\n%v", ops, err)
	}
	if got := l.rawRange(t); !slices.Equal(got, foreign) {
		t.Errorf("the range holds\n%s\nwant only the hand-made\n%s", strings.Join(got, "\n"), strings.Join(foreign, "\n"))
	}
}

// TestIntegrationAdoptsLegacy: the rules and routes an agent made before
// route.Protocol are adopted by the plan for the same config; a failure at
// any step of it leaves the kernel as it was.
func TestIntegrationAdoptsLegacy(t *testing.T) {
	l := newLab(t, 2)
	ctx := context.Background()
	s0, s1 := l.source(t, 0, false, 0), l.source(t, 1, true, 1)
	for _, s := range []route.Source{s0, s1} {
		for _, r := range s.Routes() {
			nr := &netlink.Route{LinkIndex: r.LinkIndex, Table: r.Table, Dst: &net.IPNet{IP: r.Dst.Addr().AsSlice(), Mask: net.CIDRMask(r.Dst.Bits(), r.Dst.Addr().BitLen())},
				Scope: netlink.Scope(r.Scope), Protocol: unix.RTPROT_STATIC}
			if r.Gateway.IsValid() {
				nr.Gw = r.Gateway.AsSlice()
			}
			if r.Src.IsValid() {
				nr.Src = r.Src.AsSlice()
			}
			if err := l.h.RouteAdd(nr); err != nil {
				t.Fatal(err)
			}
		}
		x := s.Rule()
		nr := netlink.NewRule()
		nr.Priority, nr.Table = x.Priority, x.Table
		nr.Src = &net.IPNet{IP: x.Src.Addr().AsSlice(), Mask: net.CIDRMask(x.Src.Bits(), x.Src.Addr().BitLen())}
		if err := l.h.RuleAdd(nr); err != nil {
			t.Fatal(err)
		}
	}
	desired := withSources(HostConfig{}, 0, s0, s1)
	desired.Endpoints = nil
	actual, err := l.k.Read(ctx, desired)
	if err != nil {
		t.Fatal(err)
	}
	if len(actual.Foreign) != 2 || len(actual.ForeignRoutes) != 4 || len(Conflicts(desired, actual)) != 0 {
		t.Fatalf("legacy entries read as %v %v; conflicts %v", actual.Foreign, actual.ForeignRoutes, Conflicts(desired, actual))
	}
	if cfg, moves := AvoidForeign(desired, actual); len(moves) != 0 || !cmp.Equal(cfg, desired, cmpOpts) {
		t.Fatalf("AvoidForeign moved %v", moves)
	}
	ops, err := Plan(desired, actual)
	if err != nil {
		t.Fatal(err)
	}
	if len(ops) != 6 {
		t.Fatalf("plan:\n%v\nwant 4 routes and 2 rules adopted", ops)
	}
	for _, op := range ops {
		if op.Kind != SetRuleProtocol && op.Kind != SetRouteProtocol {
			t.Fatalf("plan:\n%v\nwant only adoptions", ops)
		}
	}
	before, beforeRaw := l.snapshot(t), l.rawRange(t)
	injected := errors.New("injected")
	for step := 1; step <= len(ops); step++ {
		err := Apply(ctx, &failingKernel{Kernel: l.k, at: step, err: injected}, ops)
		var ae *ApplyError
		if !errors.As(err, &ae) || ae.RollbackErr != nil {
			t.Fatalf("step %d: %v", step, err)
		}
		if after, raw := l.snapshot(t), l.rawRange(t); after != before || !slices.Equal(raw, beforeRaw) {
			t.Fatalf("failure at step %d: kernel not restored:\n%s\n%s\nwant:\n%s\n%s", step, after, strings.Join(raw, "\n"), before, strings.Join(beforeRaw, "\n"))
		}
	}
	if err := Apply(ctx, l.k, ops); err != nil {
		t.Fatal(err)
	}
	raw := l.rawRange(t)
	if len(raw) != 6 {
		t.Fatalf("after adoption the range holds\n%s", strings.Join(raw, "\n"))
	}
	for _, line := range raw {
		if !strings.HasSuffix(line, fmt.Sprintf(" proto %d", route.Protocol)) {
			t.Errorf("%s: not adopted", line)
		}
	}
	after, err := l.k.Read(ctx, desired)
	if err != nil {
		t.Fatal(err)
	}
	if len(after.Foreign)+len(after.ForeignRoutes) != 0 {
		t.Errorf("foreign after adoption: %v %v", after.Foreign, after.ForeignRoutes)
	}
	if again, err := Plan(desired, after); err != nil || len(again) != 0 {
		t.Errorf("second plan = %v, %v; want none", again, err)
	}
}
