package agent

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/mpfleet/mpfleet/internal/policy"
	"github.com/mpfleet/mpfleet/internal/reconcile"
	"github.com/mpfleet/mpfleet/internal/reconcile/fakekernel"
	"github.com/mpfleet/mpfleet/internal/route"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
)

// callLog is a reconcile.Kernel that logs every call to the one it wraps,
// in order: "read" for a Read, the op's String for a Do.
type callLog struct {
	k     reconcile.Kernel
	mu    sync.Mutex
	calls []string
}

func (c *callLog) Read(ctx context.Context, desired reconcile.HostConfig) (reconcile.State, error) {
	c.log("read")
	return c.k.Read(ctx, desired)
}

func (c *callLog) Do(ctx context.Context, op reconcile.Op) (reconcile.Op, error) {
	c.log(op.String())
	return c.k.Do(ctx, op)
}

func (c *callLog) log(s string) {
	c.mu.Lock()
	c.calls = append(c.calls, s)
	c.mu.Unlock()
}

func (c *callLog) since(n int) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.calls[min(n, len(c.calls)):])
}

func (c *callLog) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.calls)
}

// hotplugHarness is a harness whose kernel calls are logged, the policy
// (testPolicy: eth* endpoints, routed) applied and the agent quiet.
func hotplugHarness(t *testing.T) (*harness, *callLog) {
	t.Helper()
	var calls *callLog
	h := newHarness(t, func(h *harness) {
		calls = &callLog{k: h.k}
		h.opts.Kernel = func(route.Range) (reconcile.Kernel, error) { return calls, nil }
	})
	h.ctrl.setDesired(managed(1, testPolicy()))
	h.start()
	h.ctrl.waitReport(t, 0, "IN_SYNC at 1", inState(pb.SyncState_SYNC_STATE_IN_SYNC, 1))
	h.reconcileNow()
	return h, calls
}

// TestAgentHotplug: an address added to a managed interface gets its
// routing and its endpoint at once, before the full reconcile reads the
// kernel, which then finds nothing to do.
func TestAgentHotplug(t *testing.T) {
	h, calls := hotplugHarness(t)
	n := calls.len()
	ifs := hostIfaces()
	ifs[2].Addresses = append(ifs[2].Addresses, "198.18.1.3/24")
	h.sys.setInterfaces(ifs, Change{Link: 3, Addr: true, Added: netip.MustParsePrefix("198.18.1.3/24")})
	h.reconcileNow()
	got := calls.since(n)
	first := slices.Index(got, "read")
	if first < 0 {
		t.Fatalf("no full reconcile after the address came: %q", got)
	}
	want := []string{
		"+ route 198.18.1.0/24 dev eth1 table 7135 src 198.18.1.3 scope link",
		"+ route default via 198.18.1.1 dev eth1 table 7135",
		"+ rule 7135: from 198.18.1.3 lookup 7135",
		"+ endpoint 198.18.1.3 id 3 subflow dev eth1",
	}
	if diff := cmp.Diff(want, got[:first]); diff != "" {
		t.Errorf("kernel calls before the full reconcile (-want +got):\n%s", diff)
	}
	for _, c := range got[first:] {
		if c != "read" {
			t.Errorf("the full reconcile after the fast path still did %q; calls %q", c, got)
		}
	}
	h.waitConverged(testPolicy())
}

// TestAgentHotplugLeavesToReconcile: an address the policy does not select
// is not touched; one that would change more than its own additions (push
// another endpoint out), or comes after a change the fast path cannot
// account for, is left to the full reconcile.
func TestAgentHotplugLeavesToReconcile(t *testing.T) {
	h, calls := hotplugHarness(t)
	p := testPolicy()

	// On an interface the policy does not manage: nothing at all.
	n := calls.len()
	ifs := hostIfaces()
	ifs[0].Addresses = append(ifs[0].Addresses, "198.18.9.9/32")
	h.sys.setInterfaces(ifs, Change{Link: 1, Addr: true, Added: netip.MustParsePrefix("198.18.9.9/32")})
	h.reconcileNow()
	for _, c := range calls.since(n) {
		if c != "read" {
			t.Errorf("an address on lo changed the kernel: %q", c)
		}
	}

	// After a removal not yet reconciled: the full reconcile adds it (it
	// reads the kernel before the endpoint exists).
	n = calls.len()
	ifs = hostIfaces()
	ifs[2].Addresses = []string{"198.18.1.3/24"}
	h.sys.setInterfaces(ifs, Change{Link: 3, Addr: true}, Change{Link: 3, Addr: true, Added: netip.MustParsePrefix("198.18.1.3/24")})
	h.reconcileNow()
	got := calls.since(n)
	ep := slices.IndexFunc(got, func(c string) bool { return strings.HasPrefix(c, "+ endpoint 198.18.1.3 ") })
	if ep < 0 || !slices.Contains(got[:ep], "read") {
		t.Errorf("the endpoint was not left to the full reconcile after a removal: %q", got)
	}
	h.waitConverged(p)

	// The endpoint maximum reached: a new address that sorts first pushes
	// the last one out, so it is all left to the full reconcile.
	ifs = hostIfaces()
	for i := range 6 {
		ifs[2].Addresses = append(ifs[2].Addresses, fmt.Sprintf("198.18.1.%d/24", 10+i))
	}
	h.sys.setInterfaces(ifs, Change{Link: 3, Addr: true})
	h.waitConverged(p)
	h.reconcileNow()
	n = calls.len()
	ifs[1].Addresses = append(ifs[1].Addresses, "198.18.0.1/24")
	h.sys.setInterfaces(ifs, Change{Link: 2, Addr: true, Added: netip.MustParsePrefix("198.18.0.1/24")})
	h.reconcileNow()
	got = calls.since(n)
	if len(got) == 0 || got[0] != "read" {
		t.Errorf("an address that pushes another out was not left to the full reconcile: %q", got)
	}
	if !slices.Contains(got, "- endpoint 198.18.1.15 id 8 subflow dev eth1") {
		t.Errorf("the full reconcile did not make room: %q", got)
	}
	h.waitConverged(p)
}

// TestHotplugOps: what the fast path applies for new addresses, computed
// from the full plan.
func TestHotplugOps(t *testing.T) {
	ifaces := policy.InterfacesFromFacts(&pb.HostFacts{Interfaces: hostIfaces()})
	k := fakekernel.New(route.Range{})
	k.SetLinks(fakeLinks)
	r, err := policy.Render(testPolicy(), ifaces)
	if err != nil {
		t.Fatal(err)
	}
	st, err := k.Read(context.Background(), r.Config)
	if err != nil {
		t.Fatal(err)
	}
	ops, err := reconcile.Plan(r.Config, st)
	if err == nil {
		err = reconcile.Apply(context.Background(), k, ops)
	}
	if err == nil {
		st, err = k.Read(context.Background(), r.Config)
	}
	if err != nil {
		t.Fatal(err)
	}
	pending := func(p *pb.MultipathPolicy, ifaces []policy.Interface, st reconcile.State) map[opID]int {
		t.Helper()
		ops, err := planOn(p, ifaces, st)
		if err != nil {
			t.Fatal(err)
		}
		return opCounts(ops)
	}
	add := func(link int, addrs ...string) ([]policy.Interface, []netip.Addr) {
		var added []addedAddr
		for _, a := range addrs {
			added = append(added, addedAddr{link, netip.MustParsePrefix(a)})
		}
		return withAddresses(ifaces, added, nil)
	}
	ops4 := func(ops reconcile.Ops) []string {
		var out []string
		for _, op := range ops {
			out = append(out, op.String())
		}
		return out
	}

	after, news := add(3, "198.18.1.3/24", "198.18.1.2/24")
	if !slices.Equal(news, []netip.Addr{netip.MustParseAddr("198.18.1.3")}) {
		t.Errorf("new addresses %v, want [198.18.1.3]", news)
	}
	got, err := hotplugOps(testPolicy(), pending(testPolicy(), ifaces, st), after, st, news)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"+ route 198.18.1.0/24 dev eth1 table 7135 src 198.18.1.3 scope link",
		"+ route default via 198.18.1.1 dev eth1 table 7135",
		"+ rule 7135: from 198.18.1.3 lookup 7135",
		"+ endpoint 198.18.1.3 id 3 subflow dev eth1",
	}
	if diff := cmp.Diff(want, ops4(got)); diff != "" {
		t.Errorf("routed policy (-want +got):\n%s", diff)
	}

	unrouted := testPolicy()
	unrouted.Routing = nil
	got, err = hotplugOps(unrouted, pending(unrouted, ifaces, st), after, st, news)
	if err != nil {
		t.Fatal(err)
	}
	// The routing of the others would go too, but that was to do anyway.
	if diff := cmp.Diff([]string{"+ endpoint 198.18.1.3 id 3 subflow dev eth1"}, ops4(got)); diff != "" {
		t.Errorf("unrouted policy (-want +got):\n%s", diff)
	}

	after, news = add(1, "198.18.9.9/32")
	if got, err := hotplugOps(testPolicy(), pending(testPolicy(), ifaces, st), after, st, news); err != nil || len(got) != 0 {
		t.Errorf("an address on an unmanaged interface: %q, %v; want nothing", ops4(got), err)
	}

	if ifs, _ := add(3, "198.18.1.2/25"); ifs != nil {
		t.Error("an address whose prefix length changed was not left to the full reconcile")
	}
	if ifs, _ := add(9, "198.18.1.9/24"); ifs != nil {
		t.Error("an address on an unknown link was not left to the full reconcile")
	}
	if ifs, _ := withAddresses(ifaces, []addedAddr{{3, netip.MustParsePrefix("198.18.1.9/24")}}, map[int]bool{3: true}); ifs != nil {
		t.Error("an address on a link that flapped was not left to the full reconcile")
	}

	// The endpoint maximum reached: a new address that sorts first pushes
	// another out, a deletion.
	full := policy.InterfacesFromFacts(&pb.HostFacts{Interfaces: hostIfaces()})
	for i := range 6 {
		full[2].Addrs = append(full[2].Addrs, netip.MustParsePrefix(fmt.Sprintf("198.18.1.%d/24", 10+i)))
	}
	r, err = policy.Render(testPolicy(), full)
	if err != nil {
		t.Fatal(err)
	}
	st, _ = k.Read(context.Background(), r.Config)
	ops, err = reconcile.Plan(r.Config, st)
	if err == nil {
		err = reconcile.Apply(context.Background(), k, ops)
	}
	if err == nil {
		st, err = k.Read(context.Background(), r.Config)
	}
	if err != nil || len(st.Endpoints) != 8 {
		t.Fatalf("%d endpoints, %v; want 8", len(st.Endpoints), err)
	}
	after, news = withAddresses(full, []addedAddr{{2, netip.MustParsePrefix("198.18.0.1/24")}}, nil)
	if got, err := hotplugOps(testPolicy(), pending(testPolicy(), full, st), after, st, news); !errors.Is(err, errHotplugSkip) {
		t.Errorf("an address that pushes another out: %q, %v; want errHotplugSkip", ops4(got), err)
	}
}
