package reconcile

import (
	"context"
	"errors"
	"math/rand/v2"
	"net"
	"strings"
	"testing"

	"github.com/mpfleet/mpfleet/internal/mptcp"
	"github.com/mpfleet/mpfleet/internal/route"
	"github.com/vishvananda/netlink"
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
