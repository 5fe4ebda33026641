package reconcile_test

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/mpfleet/mpfleet/internal/reconcile"
	"github.com/mpfleet/mpfleet/internal/reconcile/fakekernel"
	"github.com/mpfleet/mpfleet/internal/reconcile/kerneltest"
	"github.com/mpfleet/mpfleet/internal/route"
)

// cmpOpts compare the netip types by value.
var cmpOpts = cmp.Options{
	cmp.Comparer(func(a, b netip.Addr) bool { return a == b }),
	cmp.Comparer(func(a, b netip.Prefix) bool { return a == b }),
}

// addr4 and addr6 are the i-th lab address of each family: 198.18.i.2/24
// and 2001:db8:i::2/64, with gateway .1 / ::1.
func addr4(i int) netip.Prefix { return netip.MustParsePrefix(fmt.Sprintf("198.18.%d.2/24", i)) }
func addr6(i int) netip.Prefix { return netip.MustParsePrefix(fmt.Sprintf("2001:db8:%x::2/64", i)) }

// gw is the gateway of p's subnet (.1, ::1), otherGW a second one (.254,
// ::fe).
var gw, otherGW = kerneltest.Gateway, kerneltest.OtherGateway

// source is the policy routing of address p on link, in table/priority
// 7100+n.
func source(p netip.Prefix, link, n int) route.Source {
	return route.Source{Addr: p, LinkIndex: link, Gateway: gw(p), Table: 7100 + n, Priority: 7100 + n}
}

// withSources, wantState and text are kerneltest's helpers (see there).
var (
	withSources = kerneltest.WithSources
	wantState   = kerneltest.WantState
	text        = kerneltest.Text
)

func mustLoad(t testing.TB, k *fakekernel.Kernel, s reconcile.State) {
	t.Helper()
	if err := k.Load(s); err != nil {
		t.Fatalf("load fake: %v", err)
	}
}

func ptr[T any](v T) *T { return &v }
