package reconcile_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/mpfleet/mpfleet/internal/mptcp"
	"github.com/mpfleet/mpfleet/internal/reconcile"
	"github.com/mpfleet/mpfleet/internal/reconcile/fakekernel"
	"github.com/mpfleet/mpfleet/internal/route"
)

var errInjected = errors.New("injected failure")

// messyHost is a hand-made state that every kind of op has to change: stale
// and outdated endpoints, a stale rule and table, old limits and sysctls.
func messyHost() (reconcile.State, reconcile.HostConfig) {
	old1 := source(addr4(1), 2, 0)
	old5 := source(addr4(5), 5, 5)
	actual := reconcile.State{
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
	desired := withSources(reconcile.HostConfig{
		Enabled: ptr(true),
		Limits:  &mptcp.Limits{Subflows: 4, AddAddrAccepted: 4},
		Sysctls: map[string]string{"net.mptcp.add_addr_timeout": "60", "net.mptcp.checksum_enabled": "0", "net.mptcp.scheduler": "default"},
	}, mptcp.FlagSubflow, new1, source(addr6(3), 4, 3))
	desired = withSources(desired, mptcp.FlagSignal, source(addr4(2), 3, 2))
	desired.Endpoints[0].Flags |= mptcp.FlagBackup
	return actual, desired
}

func TestApplyReportsFailedRollback(t *testing.T) {
	ctx := context.Background()
	actual, desired := messyHost()
	k := fakekernel.New(route.Range{})
	mustLoad(t, k, actual)
	read, _ := k.Read(ctx, desired)
	ops, err := reconcile.Plan(desired, read)
	if err != nil {
		t.Fatal(err)
	}
	// Step 3 fails; its rollback undoes step 2 (call 4), then step 1 (call 5), which fails too.
	k.FailOn(func(n int, _ reconcile.Op) error {
		if n == 3 || n == 5 {
			return errInjected
		}
		return nil
	})
	err = reconcile.Apply(ctx, k, ops)
	var ae *reconcile.ApplyError
	if !errors.As(err, &ae) || ae.RollbackErr == nil || ae.Undone != 1 || !errors.Is(ae.RollbackErr, errInjected) {
		t.Fatalf("Apply = %v (%+v); want a reported rollback failure after one undo", err, ae)
	}
	if !strings.Contains(err.Error(), "rollback FAILED") {
		t.Errorf("error %q does not say the rollback failed", err)
	}
}

func TestApplyCanceledRollsBack(t *testing.T) {
	actual, desired := messyHost()
	k := fakekernel.New(route.Range{})
	mustLoad(t, k, actual)
	before := k.Snapshot()
	read, _ := k.Read(context.Background(), desired)
	ops, err := reconcile.Plan(desired, read)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	k.FailOn(func(n int, _ reconcile.Op) error {
		if n == 2 {
			cancel() // the op goes through; the next is not started
		}
		return nil
	})
	err = reconcile.Apply(ctx, k, ops)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Apply = %v, want context.Canceled", err)
	}
	if d := cmp.Diff(before, k.Snapshot(), cmpOpts); d != "" {
		t.Errorf("canceled apply not rolled back (-before +after):\n%s", d)
	}
}
