package kerneltest

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/mpfleet/mpfleet/internal/mptcp"
	"github.com/mpfleet/mpfleet/internal/reconcile"
	"github.com/mpfleet/mpfleet/internal/route"
)

// routerStates are desired states for a namespace of four links, each
// reachable from any other.
func routerStates(ls []Link) []reconcile.HostConfig {
	sub, sig := mptcp.FlagSubflow, mptcp.FlagSignal
	var st []reconcile.HostConfig
	// 0: MPTCP on, nothing else.
	st = append(st, reconcile.HostConfig{Enabled: ptr(true)})
	// 1: two IPv4 subflow endpoints with their policy routing.
	st = append(st, WithSources(reconcile.HostConfig{
		Enabled: ptr(true), Limits: &mptcp.Limits{Subflows: 2, AddAddrAccepted: 2},
		Sysctls: map[string]string{"net.mptcp.add_addr_timeout": "60"},
	}, sub, ls[0].Source(false, 0), ls[1].Source(false, 1)))
	// 2: both families on four links, mixed flags.
	s2 := WithSources(reconcile.HostConfig{
		Enabled: ptr(true), Limits: &mptcp.Limits{Subflows: 4, AddAddrAccepted: 4},
		Sysctls: map[string]string{"net.mptcp.add_addr_timeout": "60", "net.mptcp.checksum_enabled": "1", "net.mptcp.scheduler": "default"},
	}, sub, ls[0].Source(false, 0), ls[1].Source(false, 1), ls[0].Source(true, 10))
	s2 = WithSources(s2, sig, ls[2].Source(false, 2), ls[3].Source(true, 13))
	st = append(st, s2)
	// 3: as 2 with flags changed in place and otherwise, and one gateway
	// and one table moved.
	s3 := WithSources(reconcile.HostConfig{
		Enabled: ptr(true), Limits: &mptcp.Limits{Subflows: 4, AddAddrAccepted: 4},
		Sysctls: map[string]string{"net.mptcp.add_addr_timeout": "30", "net.mptcp.checksum_enabled": "0", "net.mptcp.scheduler": "default"},
	}, sub|mptcp.FlagBackup, ls[0].Source(false, 0))
	moved := ls[1].Source(false, 1)
	moved.Gateway = OtherGateway(ls[1].V4)
	s3 = WithSources(s3, sub|mptcp.FlagFullmesh, moved)
	s3 = WithSources(s3, sig, ls[0].Source(true, 20))
	s3 = WithSources(s3, sub, ls[2].Source(false, 2), ls[3].Source(true, 13))
	st = append(st, s3)
	// 4: the kernel's maximum of eight endpoints.
	s4 := reconcile.HostConfig{Enabled: ptr(true), Limits: &mptcp.Limits{Subflows: 8, AddAddrAccepted: 8}}
	for i := range 4 {
		s4 = WithSources(s4, sub, ls[i].Source(false, i), ls[i].Source(true, 10+i))
	}
	st = append(st, s4)
	// 5: eight endpoints that all differ from 4's (explicit IDs for half,
	// other flags, no interface), in other tables: the old ones must go
	// before the new ones come.
	s5 := reconcile.HostConfig{Enabled: ptr(true), Limits: &mptcp.Limits{Subflows: 8, AddAddrAccepted: 0}}
	for i := range 4 {
		s5 = WithSources(s5, sig, ls[i].Source(false, 40+i))
		s5.Endpoints[len(s5.Endpoints)-1].ID = uint8(20 + i)
	}
	for i := range 4 {
		s5 = WithSources(s5, sub|mptcp.FlagBackup, ls[i].Source(true, 50+i))
	}
	// No interface on any endpoint: every endpoint of s4 differs in more
	// than flags and is replaced.
	for i := range s5.Endpoints {
		s5.Endpoints[i].IfIndex = 0
	}
	st = append(st, s5)
	// 6: MPTCP off, nothing managed left.
	st = append(st, reconcile.HostConfig{Enabled: ptr(false), Limits: &mptcp.Limits{Subflows: 2}})
	return st
}

// testRouterStates applies a table of desired states in order, then twice
// in random order: each converges (the kernel holds it, a second plan is
// empty) from any other, and nothing outside the range changes.
func testRouterStates(t *testing.T, open Opener) {
	ns := open(t, 4)
	k := ns.Kernel()
	ctx := context.Background()
	outside := ns.Outside(t)
	states := routerStates(ns.Links())
	check := func(label string, i int) {
		t.Helper()
		desired := states[i]
		ops, err := Reconcile(t, k, desired)
		if err != nil {
			t.Fatalf("%s: state %d: apply:\n%v\n%v", label, i, ops, err)
		}
		got, err := k.Read(ctx, desired)
		if err != nil {
			t.Fatal(err)
		}
		if g, w := Text(got, false), Text(WantState(desired, got), false); g != w {
			t.Fatalf("%s: state %d: kernel holds\n%s\nwant\n%s\nafter plan\n%v", label, i, g, w, ops)
		}
		again, err := reconcile.Plan(desired, got)
		if err != nil || len(again) != 0 {
			t.Fatalf("%s: state %d: second plan = %v, %v; want no ops", label, i, again, err)
		}
		if o := ns.Outside(t); o != outside {
			t.Fatalf("%s: state %d: outside the range changed:\n%s\nwant\n%s", label, i, o, outside)
		}
	}
	for i := range states {
		check("in order", i)
	}
	r := rand.New(rand.NewPCG(1, 1))
	for round := range 2 {
		for _, i := range r.Perm(len(states)) {
			check(fmt.Sprintf("random order round %d", round+1), i)
		}
	}
}

// testDryRunNamesInterfaces: a plan names interfaces as the kernel does.
func testDryRunNamesInterfaces(t *testing.T, open Opener) {
	ns := open(t, 1)
	l := ns.Links()[0]
	desired := WithSources(reconcile.HostConfig{}, mptcp.FlagSubflow, l.Source(false, 0))
	actual, err := ns.Kernel().Read(context.Background(), desired)
	if err != nil {
		t.Fatal(err)
	}
	ops, err := reconcile.Plan(desired, actual)
	if err != nil {
		t.Fatal(err)
	}
	a, net := l.V4.Addr(), l.V4.Masked()
	want := fmt.Sprintf(`+ route %v dev %s table 7100 src %v scope link
+ route default via %v dev %s table 7100
+ rule 7100: from %v lookup 7100
+ endpoint %v id 1 subflow dev %s
`, net, l.Name, a, Gateway(l.V4), l.Name, a, a, l.Name)
	if got := ops.String(); got != want {
		t.Fatalf("dry run:\n%s\nwant:\n%s", got, want)
	}
}

// testOutsideRangeRefused: a rule outside the range is refused by Plan and,
// should one get there, by the Kernel.
func testOutsideRangeRefused(t *testing.T, open Opener) {
	ns := open(t, 1)
	bad := ns.Links()[0].Source(false, 0)
	bad.Priority = 1000
	if _, err := reconcile.Plan(reconcile.HostConfig{Rules: []route.Rule{bad.Rule()}}, reconcile.State{}); !errors.Is(err, route.ErrOutOfRange) {
		t.Fatalf("Plan = %v, want route.ErrOutOfRange", err)
	}
	before := ns.Snapshot(t)
	if _, err := ns.Kernel().Do(context.Background(), reconcile.Op{Kind: reconcile.AddRule, Rule: ptr(bad.Rule())}); !errors.Is(err, route.ErrOutOfRange) {
		t.Fatalf("Do = %v, want route.ErrOutOfRange", err)
	}
	if after := ns.Snapshot(t); after != before {
		t.Fatalf("a refused op changed the namespace:\n%s\nwant:\n%s", after, before)
	}
}
