package reconcile

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/mpfleet/mpfleet/internal/mptcp"
	"github.com/mpfleet/mpfleet/internal/route"
)

var errInjected = errors.New("injected failure")

func TestFakeKernelEnforcesKernelRules(t *testing.T) {
	ctx := context.Background()
	k := NewFakeKernel(route.Range{})
	do := func(op Op) error { _, err := k.Do(ctx, op); return err }
	for i := 1; i <= mptcp.MaxEndpoints; i++ {
		if err := do(Op{Kind: AddEndpoint, Endpoint: ptr(mptcp.Endpoint{Addr: addr4(i).Addr(), Flags: mptcp.FlagSubflow})}); err != nil {
			t.Fatalf("endpoint %d: %v", i, err)
		}
	}
	s1 := source(addr4(1), 2, 0)
	tests := []struct {
		name string
		op   Op
		want error
	}{
		{"ninth endpoint", Op{Kind: AddEndpoint, Endpoint: ptr(mptcp.Endpoint{Addr: addr4(9).Addr(), Flags: mptcp.FlagSubflow})}, mptcp.ErrTooManyEndpoints},
		{"duplicate address", Op{Kind: AddEndpoint, Endpoint: ptr(mptcp.Endpoint{Addr: addr4(1).Addr()})}, os.ErrExist},
		{"missing endpoint", Op{Kind: DelEndpoint, Endpoint: ptr(mptcp.Endpoint{ID: 42})}, os.ErrNotExist},
		{"flags not in place", Op{Kind: SetEndpointFlags, Endpoint: ptr(mptcp.Endpoint{ID: 1}), Flags: mptcp.FlagSignal}, mptcp.ErrInvalid},
		{"limits above 8", Op{Kind: SetLimits, Limits: &mptcp.Limits{AddAddrAccepted: 9}}, mptcp.ErrInvalid},
		{"unknown sysctl", Op{Kind: SetSysctl, Sysctl: "net.mptcp.nope", Value: "1"}, os.ErrNotExist},
		{"rule out of range", Op{Kind: AddRule, Rule: ptr(route.Rule{Priority: 100, Src: addr4(1), Table: 7100})}, route.ErrOutOfRange},
		{"missing rule", Op{Kind: DelRule, Rule: ptr(s1.Rule())}, os.ErrNotExist},
		{"route in main", Op{Kind: AddRoute, Route: ptr(route.Route{Table: 254, Dst: addr4(1), LinkIndex: 2})}, route.ErrOutOfRange},
		{"missing route", Op{Kind: DelRoute, Route: &s1.Routes()[0]}, os.ErrNotExist},
	}
	for _, tt := range tests {
		before := k.Snapshot()
		if err := do(tt.op); !errors.Is(err, tt.want) {
			t.Errorf("%s: %v, want %v", tt.name, err, tt.want)
		}
		if d := cmp.Diff(before, k.Snapshot(), cmpOpts); d != "" {
			t.Errorf("%s: a failed op changed the fake (-before +after):\n%s", tt.name, d)
		}
	}
	if err := do(Op{Kind: AddRule, Rule: ptr(s1.Rule())}); err != nil {
		t.Fatal(err)
	}
	if err := do(Op{Kind: AddRule, Rule: ptr(s1.Rule())}); !errors.Is(err, os.ErrExist) {
		t.Errorf("duplicate rule: %v, want os.ErrExist", err)
	}
	for _, r := range s1.Routes() {
		if err := do(Op{Kind: AddRoute, Route: &r}); err != nil {
			t.Fatal(err)
		}
	}
	other := s1
	other.Gateway = gw(addr4(7))
	if err := do(Op{Kind: AddRoute, Route: &other.Routes()[1]}); !errors.Is(err, os.ErrExist) {
		t.Errorf("second default route in a table: %v, want os.ErrExist", err)
	}
}

// messyHost is a hand-made state that every kind of op has to change: stale
// and outdated endpoints, a stale rule and table, old limits and sysctls.
func messyHost() (State, HostConfig) {
	old1 := source(addr4(1), 2, 0)
	old5 := source(addr4(5), 5, 5)
	actual := State{
		Enabled: ptr(false),
		Limits:  &mptcp.Limits{Subflows: 2},
		Sysctls: map[string]string{"net.mptcp.add_addr_timeout": "120", "net.mptcp.checksum_enabled": "0"},
		Endpoints: []mptcp.Endpoint{
			ep("198.18.1.2", 1, mptcp.FlagSubflow, 2),
			ep("198.18.2.2", 2, mptcp.FlagSubflow, 3),
			ep("198.18.5.2", 5, mptcp.FlagSignal, 5),
		},
		Rules:  []route.Rule{old1.Rule(), old5.Rule()},
		Routes: append(old1.Routes(), old5.Routes()...),
	}
	new1 := old1
	new1.Gateway = gw(addr4(7))
	desired := withSources(HostConfig{
		Enabled: ptr(true),
		Limits:  &mptcp.Limits{Subflows: 4, AddAddrAccepted: 4},
		Sysctls: map[string]string{"net.mptcp.add_addr_timeout": "60", "net.mptcp.checksum_enabled": "0", "net.mptcp.scheduler": "default"},
	}, mptcp.FlagSubflow, new1, source(addr6(3), 4, 3))
	desired = withSources(desired, mptcp.FlagSignal, source(addr4(2), 3, 2))
	desired.Endpoints[0].Flags |= mptcp.FlagBackup
	return actual, desired
}

func TestApplyFailureAtEachStepRestoresState(t *testing.T) {
	ctx := context.Background()
	actual, desired := messyHost()
	k := NewFakeKernel(route.Range{})
	mustLoad(t, k, actual)
	read, err := k.Read(ctx, desired)
	if err != nil {
		t.Fatal(err)
	}
	ops, err := Plan(desired, read)
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[Kind]bool{}
	for _, op := range ops {
		kinds[op.Kind] = true
	}
	if len(kinds) != 9 {
		t.Fatalf("the plan should use all 9 kinds of op, uses %v:\n%v", kinds, ops)
	}
	for step := 1; step <= len(ops); step++ {
		k := NewFakeKernel(route.Range{})
		mustLoad(t, k, actual)
		before := k.Snapshot()
		k.FailAt(step, errInjected)
		err := Apply(ctx, k, ops)
		var ae *ApplyError
		if !errors.As(err, &ae) || !errors.Is(err, errInjected) {
			t.Fatalf("step %d: Apply = %v, want an *ApplyError wrapping the injected failure", step, err)
		}
		if ae.Index != step-1 || ae.Undone != step-1 || ae.RollbackErr != nil {
			t.Errorf("step %d: %+v, want index %d, %d undone, no rollback error", step, ae, step-1, step-1)
		}
		if !strings.Contains(err.Error(), ops[step-1].String()) {
			t.Errorf("step %d: error %q does not name the op %q", step, err, ops[step-1])
		}
		if d := cmp.Diff(before, k.Snapshot(), cmpOpts); d != "" {
			t.Errorf("step %d (%v) failed, state not restored (-before +after):\n%s", step, ops[step-1], d)
		}
	}
	// Without a failure it converges, and planning again finds nothing.
	if err := Apply(ctx, k, ops); err != nil {
		t.Fatal(err)
	}
	after, err := k.Read(ctx, desired)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := text(after, false), text(wantState(desired, after), false); got != want {
		t.Errorf("state after apply:\n%s\nwant:\n%s", got, want)
	}
	if again, err := Plan(desired, after); err != nil || len(again) != 0 {
		t.Errorf("second plan = %v, %v; want no ops", again, err)
	}
}

func TestApplyReportsFailedRollback(t *testing.T) {
	ctx := context.Background()
	actual, desired := messyHost()
	k := NewFakeKernel(route.Range{})
	mustLoad(t, k, actual)
	read, _ := k.Read(ctx, desired)
	ops, err := Plan(desired, read)
	if err != nil {
		t.Fatal(err)
	}
	// Step 3 fails; its rollback undoes step 2 (call 4), then step 1 (call 5), which fails too.
	k.FailOn(func(n int, _ Op) error {
		if n == 3 || n == 5 {
			return errInjected
		}
		return nil
	})
	err = Apply(ctx, k, ops)
	var ae *ApplyError
	if !errors.As(err, &ae) || ae.RollbackErr == nil || ae.Undone != 1 || !errors.Is(ae.RollbackErr, errInjected) {
		t.Fatalf("Apply = %v (%+v); want a reported rollback failure after one undo", err, ae)
	}
	if !strings.Contains(err.Error(), "rollback FAILED") {
		t.Errorf("error %q does not say the rollback failed", err)
	}
}

func TestApplyCanceledRollsBack(t *testing.T) {
	actual, desired := messyHost()
	k := NewFakeKernel(route.Range{})
	mustLoad(t, k, actual)
	before := k.Snapshot()
	read, _ := k.Read(context.Background(), desired)
	ops, err := Plan(desired, read)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	k.FailOn(func(n int, _ Op) error {
		if n == 2 {
			cancel() // the op goes through; the next is not started
		}
		return nil
	})
	err = Apply(ctx, k, ops)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Apply = %v, want context.Canceled", err)
	}
	if d := cmp.Diff(before, k.Snapshot(), cmpOpts); d != "" {
		t.Errorf("canceled apply not rolled back (-before +after):\n%s", d)
	}
}

func TestApplyReplacesAFullSetOfEndpoints(t *testing.T) {
	ctx := context.Background()
	k := NewFakeKernel(route.Range{})
	var full, other HostConfig
	for i := 1; i <= mptcp.MaxEndpoints; i++ {
		full = withSources(full, mptcp.FlagSubflow, source(addr4(i), 2, i))
		other = withSources(other, mptcp.FlagSignal, source(addr6(i), 3, 10+i))
	}
	for _, desired := range []HostConfig{full, other, full} {
		read, _ := k.Read(ctx, HostConfig{})
		ops, err := Plan(desired, read)
		if err != nil {
			t.Fatal(err)
		}
		// The fake refuses a ninth endpoint: stale ones must go first.
		if err := Apply(ctx, k, ops); err != nil {
			t.Fatalf("apply:\n%v\n%v", ops, err)
		}
		after, _ := k.Read(ctx, HostConfig{})
		if got, want := text(after, false), text(wantState(desired, after), false); got != want {
			t.Fatalf("state:\n%s\nwant:\n%s", got, want)
		}
	}
}

// TestFakeKernelForeign: the fake holds foreign entries as the kernel does:
// deletes never reach them, an add where one holds the destination fails,
// only a legacy one changes its protocol, and the undo gives it back.
func TestFakeKernelForeign(t *testing.T) {
	ctx := context.Background()
	s1 := source(addr4(1), 2, 0)
	l1r, l1t := legacy(s1)
	hand := handRule(7150, "198.18.9.2/32", 100)
	bootRoute := route.ForeignRoute{Route: route.Route{Table: 7150, Dst: netip.MustParsePrefix("0.0.0.0/0"), Gateway: gw(addr4(1)), LinkIndex: 2}, Protocol: route.ProtoBoot, Type: route.TypeUnicast}
	k := NewFakeKernel(route.Range{})
	mustLoad(t, k, State{Foreign: append(l1r, hand), ForeignRoutes: append(l1t, bootRoute)})
	do := func(op Op) (Op, error) { return k.Do(ctx, op) }
	tests := []struct {
		name string
		op   Op
		want error
	}{
		{"delete a legacy rule", Op{Kind: DelRule, Rule: ptr(s1.Rule())}, os.ErrNotExist},
		{"delete a legacy route", Op{Kind: DelRoute, Route: &s1.Routes()[1]}, os.ErrNotExist},
		{"delete a hand-made route", Op{Kind: DelRoute, Route: &bootRoute.Route}, os.ErrNotExist},
		{"add over a hand-made route", Op{Kind: AddRoute, Route: ptr(bootRoute.Route)}, os.ErrExist},
		{"add over a legacy route", Op{Kind: AddRoute, Route: &s1.Routes()[0]}, os.ErrExist},
		{"adopt a hand-made route", Op{Kind: SetRouteProtocol, Route: &bootRoute.Route, Protocol: route.Protocol, OldProtocol: route.ProtoBoot}, route.ErrInvalid},
		{"adopt as something else", Op{Kind: SetRuleProtocol, Rule: ptr(s1.Rule()), Protocol: route.ProtoKernel, OldProtocol: route.LegacyRuleProtocol}, route.ErrInvalid},
		{"adopt a route that differs", Op{Kind: SetRouteProtocol, Route: ptr(bootRoute.Route), Protocol: route.Protocol, OldProtocol: route.LegacyRouteProtocol}, os.ErrNotExist},
	}
	for _, tt := range tests {
		before := k.Snapshot()
		if _, err := do(tt.op); !errors.Is(err, tt.want) {
			t.Errorf("%s: %v, want %v", tt.name, err, tt.want)
		}
		if d := cmp.Diff(before, k.Snapshot(), cmpOpts); d != "" {
			t.Errorf("%s: a failed op changed the fake (-before +after):\n%s", tt.name, d)
		}
	}
	before := k.Snapshot()
	var undos []Op
	for _, op := range []Op{
		{Kind: SetRouteProtocol, Route: &s1.Routes()[0], Protocol: route.Protocol, OldProtocol: route.LegacyRouteProtocol},
		{Kind: SetRouteProtocol, Route: &s1.Routes()[1], Protocol: route.Protocol, OldProtocol: route.LegacyRouteProtocol},
		{Kind: SetRuleProtocol, Rule: ptr(s1.Rule()), Protocol: route.Protocol, OldProtocol: route.LegacyRuleProtocol},
	} {
		undo, err := do(op)
		if err != nil {
			t.Fatalf("%v: %v", op, err)
		}
		undos = append(undos, undo)
	}
	st := k.Snapshot()
	if got := route.Render(st.Rules, st.Routes); got != route.Render([]route.Rule{s1.Rule()}, s1.Routes()) {
		t.Errorf("adopted:\n%s", got)
	}
	if len(st.Foreign) != 1 || len(st.ForeignRoutes) != 1 {
		t.Errorf("foreign after adoption: %v %v, want the hand-made ones", st.Foreign, st.ForeignRoutes)
	}
	for i := len(undos) - 1; i >= 0; i-- {
		if _, err := do(undos[i]); err != nil {
			t.Fatalf("undo %v: %v", undos[i], err)
		}
	}
	if d := cmp.Diff(before, k.Snapshot(), cmpOpts); d != "" {
		t.Errorf("undone adoption (-before +after):\n%s", d)
	}
}
