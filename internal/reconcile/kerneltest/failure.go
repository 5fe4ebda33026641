package kerneltest

import (
	"context"
	"errors"
	"os"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/mpfleet/mpfleet/internal/mptcp"
	"github.com/mpfleet/mpfleet/internal/reconcile"
	"github.com/mpfleet/mpfleet/internal/route"
)

// testKernelRules: the Kernel refuses what the kernel refuses, with the
// error classes of mptcp, route and os, and a refused op changes nothing.
func testKernelRules(t *testing.T, open Opener) {
	ns := open(t, 4)
	k := ns.Kernel()
	ls := ns.Links()
	ctx := context.Background()
	do := func(op reconcile.Op) error { _, err := k.Do(ctx, op); return err }
	var eps []mptcp.Endpoint
	for _, l := range ls {
		eps = append(eps, mptcp.Endpoint{Addr: l.V4.Addr(), Flags: mptcp.FlagSubflow}, mptcp.Endpoint{Addr: l.V6.Addr(), Flags: mptcp.FlagSubflow})
	}
	// All but the last endpoint: a duplicate is refused as such.
	for _, e := range eps[:len(eps)-1] {
		if err := do(reconcile.Op{Kind: reconcile.AddEndpoint, Endpoint: ptr(e)}); err != nil {
			t.Fatalf("endpoint %v: %v", e.Addr, err)
		}
	}
	s1 := ls[0].Source(false, 0)
	checkRefused(t, ns, []refusal{
		{"duplicate address", reconcile.Op{Kind: reconcile.AddEndpoint, Endpoint: ptr(mptcp.Endpoint{Addr: ls[0].V4.Addr()})}, os.ErrExist},
		{"duplicate id", reconcile.Op{Kind: reconcile.AddEndpoint, Endpoint: ptr(mptcp.Endpoint{ID: 1, Addr: eps[len(eps)-1].Addr})}, os.ErrExist},
		{"invalid endpoint", reconcile.Op{Kind: reconcile.AddEndpoint, Endpoint: ptr(mptcp.Endpoint{Addr: eps[len(eps)-1].Addr, Flags: mptcp.FlagSignal | mptcp.FlagFullmesh})}, mptcp.ErrInvalid},
		{"missing endpoint", reconcile.Op{Kind: reconcile.DelEndpoint, Endpoint: ptr(mptcp.Endpoint{ID: 42})}, os.ErrNotExist},
		{"flags not in place", reconcile.Op{Kind: reconcile.SetEndpointFlags, Endpoint: ptr(mptcp.Endpoint{ID: 1}), Flags: mptcp.FlagSignal}, mptcp.ErrInvalid},
		{"flags of a missing endpoint", reconcile.Op{Kind: reconcile.SetEndpointFlags, Endpoint: ptr(mptcp.Endpoint{ID: 42}), Flags: mptcp.FlagBackup}, os.ErrNotExist},
		{"limits above 8", reconcile.Op{Kind: reconcile.SetLimits, Limits: &mptcp.Limits{AddAddrAccepted: 9}}, mptcp.ErrInvalid},
		{"unknown sysctl", reconcile.Op{Kind: reconcile.SetSysctl, Sysctl: "net.mptcp.nope", Value: "1"}, os.ErrNotExist},
		{"rule out of range", reconcile.Op{Kind: reconcile.AddRule, Rule: ptr(route.Rule{Priority: 100, Src: s1.Addr, Table: 7100})}, route.ErrOutOfRange},
		{"missing rule", reconcile.Op{Kind: reconcile.DelRule, Rule: ptr(s1.Rule())}, os.ErrNotExist},
		{"route in main", reconcile.Op{Kind: reconcile.AddRoute, Route: ptr(route.Route{Table: 254, Dst: s1.Addr.Masked(), LinkIndex: ls[0].Index})}, route.ErrOutOfRange},
		{"missing route", reconcile.Op{Kind: reconcile.DelRoute, Route: &s1.Routes()[0]}, os.ErrNotExist},
	})
	if err := do(reconcile.Op{Kind: reconcile.AddEndpoint, Endpoint: ptr(eps[len(eps)-1])}); err != nil {
		t.Fatalf("eighth endpoint: %v", err)
	}
	checkRefused(t, ns, []refusal{
		{"ninth endpoint", reconcile.Op{Kind: reconcile.AddEndpoint, Endpoint: ptr(mptcp.Endpoint{Addr: ls[0].V4.Addr().Next(), Flags: mptcp.FlagSubflow})}, mptcp.ErrTooManyEndpoints},
	})
	if err := do(reconcile.Op{Kind: reconcile.AddRule, Rule: ptr(s1.Rule())}); err != nil {
		t.Fatal(err)
	}
	for _, r := range s1.Routes() {
		if err := do(reconcile.Op{Kind: reconcile.AddRoute, Route: &r}); err != nil {
			t.Fatal(err)
		}
	}
	other := s1
	other.Gateway = OtherGateway(ls[0].V4)
	checkRefused(t, ns, []refusal{
		{"duplicate rule", reconcile.Op{Kind: reconcile.AddRule, Rule: ptr(s1.Rule())}, os.ErrExist},
		{"second default route in a table", reconcile.Op{Kind: reconcile.AddRoute, Route: &other.Routes()[1]}, os.ErrExist},
		{"delete a route that differs", reconcile.Op{Kind: reconcile.DelRoute, Route: &other.Routes()[1]}, os.ErrNotExist},
	})
}

// messyState puts a hand-made state into the namespace through its Kernel
// and returns a desired state whose plan uses every kind of op but the
// adoptions: stale and outdated endpoints, a stale rule and table, a moved
// gateway, old limits and sysctls.
func messyState(t *testing.T, ns Namespace) reconcile.HostConfig {
	t.Helper()
	ls := ns.Links()
	old := WithSources(reconcile.HostConfig{
		Enabled: ptr(false), Limits: &mptcp.Limits{Subflows: 2},
		Sysctls: map[string]string{"net.mptcp.add_addr_timeout": "120"},
	}, mptcp.FlagSubflow, ls[0].Source(false, 0), ls[1].Source(false, 1))
	old = WithSources(old, mptcp.FlagSignal, ls[2].Source(false, 2), ls[3].Source(false, 3))
	mustReconcile(t, ns.Kernel(), old)
	moved := ls[1].Source(false, 1)
	moved.Gateway = OtherGateway(ls[1].V4)
	desired := WithSources(reconcile.HostConfig{
		Enabled: ptr(true), Limits: &mptcp.Limits{Subflows: 4, AddAddrAccepted: 4},
		Sysctls: map[string]string{"net.mptcp.add_addr_timeout": "60"},
	}, mptcp.FlagSubflow|mptcp.FlagBackup, ls[0].Source(false, 0))
	desired = WithSources(desired, mptcp.FlagSubflow, moved, ls[3].Source(true, 13))
	desired = WithSources(desired, mptcp.FlagSubflow, ls[2].Source(false, 2))
	return desired
}

// testFailureAtEachStepRestores: a plan using every kind of op fails at each
// step in turn; each time the rollback leaves the namespace exactly as it
// was. Without a failure it converges.
func testFailureAtEachStepRestores(t *testing.T, open Opener) {
	ns := open(t, 4)
	k := ns.Kernel()
	ctx := context.Background()
	desired := messyState(t, ns)
	_, ops := readPlan(t, k, desired)
	kinds := map[reconcile.Kind]bool{}
	for _, op := range ops {
		kinds[op.Kind] = true
	}
	if len(kinds) != 9 {
		t.Fatalf("plan should use all 9 kinds of op, uses %v:\n%v", kinds, ops)
	}
	before := ns.Snapshot(t)
	injected := errors.New("injected")
	for step := 1; step <= len(ops); step++ {
		err := reconcile.Apply(ctx, &failingKernel{Kernel: k, at: step, err: injected}, ops)
		var ae *reconcile.ApplyError
		if !errors.As(err, &ae) || !errors.Is(err, injected) || ae.Index != step-1 || ae.Undone != step-1 || ae.RollbackErr != nil {
			t.Fatalf("step %d: Apply = %v, want the injected failure at that step, rolled back", step, err)
		}
		if after := ns.Snapshot(t); after != before {
			t.Fatalf("failure at step %d (%v): namespace not restored:\n%s\nwant:\n%s", step, ops[step-1], after, before)
		}
	}
	if err := reconcile.Apply(ctx, k, ops); err != nil {
		t.Fatal(err)
	}
	after := checkConverged(t, k, desired)
	if got, want := Text(after, false), Text(WantState(desired, after), false); got != want {
		t.Errorf("state after apply:\n%s\nwant:\n%s", got, want)
	}
}

// testNinthEndpointRollsBack: someone adds an endpoint between plan and
// apply, so the plan's eighth endpoint is the namespace's ninth, which the
// kernel refuses after everything else went in; the apply rolls back.
func testNinthEndpointRollsBack(t *testing.T, open Opener) {
	ns := open(t, 4)
	k := ns.Kernel()
	ls := ns.Links()
	ctx := context.Background()
	s4 := reconcile.HostConfig{Enabled: ptr(true), Limits: &mptcp.Limits{Subflows: 8, AddAddrAccepted: 8},
		Sysctls: map[string]string{"net.mptcp.add_addr_timeout": "60"}}
	for i := range 4 {
		s4 = WithSources(s4, mptcp.FlagSubflow, ls[i].Source(false, i), ls[i].Source(true, 10+i))
	}
	actual, ops := readPlan(t, k, s4)
	extra := mptcp.Endpoint{ID: 99, Addr: ls[0].V4.Addr().Next(), Flags: mptcp.FlagSignal}
	ns.Load(t, reconcile.State{Endpoints: []mptcp.Endpoint{extra}})
	before := ns.Snapshot(t)
	err := reconcile.Apply(ctx, k, ops)
	var ae *reconcile.ApplyError
	if !errors.As(err, &ae) || !errors.Is(err, mptcp.ErrTooManyEndpoints) || ae.RollbackErr != nil {
		t.Fatalf("Apply = %v, want the kernel's too-many-endpoints error, rolled back", err)
	}
	if ae.Op.Kind != reconcile.AddEndpoint || ae.Index != len(ops)-1 || ae.Undone != len(ops)-1 {
		t.Errorf("failed at op %d (%v) after undoing %d, want the last op of %d", ae.Index, ae.Op, ae.Undone, len(ops))
	}
	if after := ns.Snapshot(t); after != before {
		t.Fatalf("namespace not restored:\n%s\nwant:\n%s", after, before)
	}
	// Nine desired endpoints are refused before anything is touched.
	nine := s4
	nine.Endpoints = append(nine.Endpoints, extra)
	if _, err := reconcile.Plan(nine, actual); !errors.Is(err, reconcile.ErrInvalid) || !errors.Is(err, mptcp.ErrTooManyEndpoints) {
		t.Fatalf("Plan of nine endpoints = %v, want ErrInvalid and mptcp.ErrTooManyEndpoints", err)
	}
	if again, _ := k.Read(ctx, s4); !cmp.Equal(again.Endpoints, []mptcp.Endpoint{extra}, cmpOpts) {
		t.Errorf("endpoints after the rollback: %v, want only %v", again.Endpoints, extra)
	}
}
