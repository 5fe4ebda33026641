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
	"github.com/mpfleet/mpfleet/internal/mptcp"
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

// fastCallLog is a callLog whose kernel also adds an endpoint the fast
// way, as netlinkKernel does, logging it as "fast " and the op.
type fastCallLog struct{ *callLog }

func (c fastCallLog) addEndpointNow(e mptcp.Endpoint) error {
	op := reconcile.Op{Kind: reconcile.AddEndpoint, Endpoint: &e, Dev: fakeLinks[e.IfIndex]}
	c.log("fast " + op.String())
	_, err := c.k.Do(context.Background(), op)
	return err
}

// TestAgentHotplugTemplate: without routing, a new address gets its
// endpoint from the template, with one request on the kernel's fast way,
// before the full reconcile reads the kernel; that reconcile then finds
// nothing to do, and the endpoint is recorded as mpfleet's.
func TestAgentHotplugTemplate(t *testing.T) {
	p := testPolicy()
	p.Routing = nil
	var calls *callLog
	h := newHarness(t, func(h *harness) {
		calls = &callLog{k: h.k}
		h.opts.Kernel = func(route.Range) (reconcile.Kernel, error) { return fastCallLog{calls}, nil }
	})
	h.ctrl.setDesired(managed(1, p))
	h.start()
	h.ctrl.waitReport(t, 0, "IN_SYNC at 1", inState(pb.SyncState_SYNC_STATE_IN_SYNC, 1))
	h.reconcileNow()
	n := calls.len()
	ifs := hostIfaces()
	ifs[2].Addresses = append(ifs[2].Addresses, "198.18.1.3/24")
	h.sys.setInterfaces(ifs, Change{Link: 3, Addr: true, Added: netip.MustParsePrefix("198.18.1.3/24")})
	// The fast path ran on this goroutine, in the change's notification.
	if diff := cmp.Diff([]string{"fast + endpoint 198.18.1.3 id 3 subflow dev eth1"}, calls.since(n)); diff != "" {
		t.Errorf("kernel calls when the address came (-want +got):\n%s", diff)
	}
	h.reconcileNow()
	for _, c := range calls.since(n + 1) {
		if c != "read" {
			t.Errorf("the full reconcile after the fast path still did %q", c)
		}
	}
	h.waitConverged(p)
	rec, err := loadRecords(h.opts.StateDir)
	if err != nil || !rec.owned[netip.MustParseAddr("198.18.1.3")] {
		t.Errorf("the endpoint is not recorded as mpfleet's: %v, %v", rec.owned, err)
	}
}

// TestAgentHotplugDryRun: in a dry run the fast path touches nothing.
func TestAgentHotplugDryRun(t *testing.T) {
	var calls *callLog
	h := newHarness(t, func(h *harness) {
		h.opts.DryRun = true
		calls = &callLog{k: h.k}
		h.opts.Kernel = func(route.Range) (reconcile.Kernel, error) { return fastCallLog{calls}, nil }
	})
	p := testPolicy()
	p.Routing = nil
	// The kernel holds the policy already: but for the dry run, the fast
	// path would have a base to build on.
	ops, err := planOn(p, policy.InterfacesFromFacts(&pb.HostFacts{Interfaces: hostIfaces()}), h.k.Snapshot())
	if err == nil {
		err = reconcile.Apply(context.Background(), h.k, ops)
	}
	if err != nil {
		t.Fatal(err)
	}
	h.ctrl.setDesired(managed(1, p))
	h.start()
	h.ctrl.waitReport(t, 0, "IN_SYNC", func(r *pb.AgentReport) bool { return r.GetSyncState() == pb.SyncState_SYNC_STATE_IN_SYNC })
	h.reconcileNow()
	ifs := hostIfaces()
	ifs[2].Addresses = append(ifs[2].Addresses, "198.18.1.3/24")
	h.sys.setInterfaces(ifs, Change{Link: 3, Addr: true, Added: netip.MustParsePrefix("198.18.1.3/24")})
	h.reconcileNow()
	for _, c := range calls.since(0) {
		if c != "read" {
			t.Errorf("a dry run changed the kernel: %q", c)
		}
	}
}

// hotBoxAgent is an agent whose fast path builds on policy p on the fake
// host, over the fake kernel k holding what p renders there, with calls
// logged; no loop runs.
func hotBoxAgent(t *testing.T, p *pb.MultipathPolicy) (*Agent, *callLog, *fakekernel.Kernel) {
	t.Helper()
	k := fakekernel.New(route.Range{})
	k.SetLinks(fakeLinks)
	calls := &callLog{k: k}
	a := &Agent{opts: Options{Kernel: func(route.Range) (reconcile.Kernel, error) { return calls, nil }}, log: testLogger(t)}
	l := &loop{a: a, log: a.log, flapped: map[int]bool{}}
	ifaces := policy.InterfacesFromFacts(&pb.HostFacts{Interfaces: hostIfaces()})
	r, err := policy.Render(p, ifaces)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	st, err := k.Read(ctx, r.Config)
	if err == nil {
		var ops reconcile.Ops
		if ops, err = planOn(p, ifaces, st); err == nil {
			err = reconcile.Apply(ctx, k, ops)
		}
	}
	if err == nil {
		st, err = k.Read(ctx, r.Config)
	}
	if err != nil {
		t.Fatal(err)
	}
	l.startHotplug(ctx, managed(1, p), ifaces, calls, st)
	a.hot.mu.Lock()
	ok := a.hot.base != nil && a.hot.base.tmpl != nil
	a.hot.mu.Unlock()
	if !ok {
		t.Fatal("no base with a template")
	}
	return a, calls, k
}

// TestHotplugBoxOrder: addresses that came while there was no base are
// taken, in order, before a later one; a change the fast path cannot
// account for ends the base, and nothing waits for one after it.
func TestHotplugBoxOrder(t *testing.T) {
	p := testPolicy()
	p.Routing = nil
	a, calls, _ := hotBoxAgent(t, p)
	b := a.hot.base
	add := func(link int, s string) Change {
		return Change{Link: link, Addr: true, Added: netip.MustParsePrefix(s)}
	}
	a.hot.base = nil // as while a reconcile runs
	a.offerAddress(add(3, "198.18.1.9/24"))
	a.offerAddress(add(2, "198.18.0.9/24"))
	if len(calls.since(0)) != 0 || len(a.hot.added) != 2 {
		t.Fatalf("with no base: calls %q, %d waiting", calls.since(0), len(a.hot.added))
	}
	a.hot.base = b // the reconcile left one
	a.offerAddress(add(3, "198.18.1.5/24"))
	want := []string{
		"+ endpoint 198.18.1.9 id 3 subflow dev eth1",
		"+ endpoint 198.18.0.9 id 4 subflow dev eth0",
		"+ endpoint 198.18.1.5 id 5 subflow dev eth1",
	}
	if diff := cmp.Diff(want, calls.since(0)); diff != "" {
		t.Errorf("kernel calls (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(want, opStrings(a.hot.applied)); diff != "" {
		t.Errorf("applied, for the loop (-want +got):\n%s", diff)
	}

	// An address removed: the base ends, and what comes next waits for
	// the next reconcile to begin rather than for a base.
	a.offerAddress(Change{Link: 3, Addr: true})
	a.offerAddress(add(3, "198.18.1.6/24"))
	if a.hot.base != nil || !a.hot.blocked || len(a.hot.added) != 0 || len(calls.since(3)) != 0 {
		t.Errorf("after a removal: base %v, blocked %v, %d waiting, calls %q", a.hot.base != nil, a.hot.blocked, len(a.hot.added), calls.since(3))
	}
	// A base made meanwhile is not taken up: the change came after the
	// reconcile began.
	l := &loop{a: a, log: a.log, flapped: map[int]bool{}}
	l.startHotplug(context.Background(), b.d, b.ifaces, b.k, b.state)
	if a.hot.base != nil {
		t.Error("a base was made after a change it does not account for")
	}
	l.stopHotplug()
	if a.hot.blocked || a.hot.applied != nil || !slices.Equal(opStrings(l.lastPlan), want) {
		t.Errorf("after the reconcile began: blocked %v, applied %v, last plan %v", a.hot.blocked, a.hot.applied, l.lastPlan)
	}
}

// TestHotplugBoxKernelRefuses: an endpoint the kernel refuses ends the
// base; nothing else is tried.
func TestHotplugBoxKernelRefuses(t *testing.T) {
	p := testPolicy()
	p.Routing = nil
	a, calls, k := hotBoxAgent(t, p)
	// Meanwhile the kernel gave ID 3 away.
	if _, err := k.Do(context.Background(), reconcile.Op{Kind: reconcile.AddEndpoint, Endpoint: &mptcp.Endpoint{ID: 3, Addr: netip.MustParseAddr("198.18.9.9"), Flags: mptcp.FlagSignal}}); err != nil {
		t.Fatal(err)
	}
	a.offerAddress(Change{Link: 3, Addr: true, Added: netip.MustParsePrefix("198.18.1.9/24")})
	a.offerAddress(Change{Link: 3, Addr: true, Added: netip.MustParsePrefix("198.18.1.10/24")})
	if diff := cmp.Diff([]string{"+ endpoint 198.18.1.9 id 3 subflow dev eth1"}, calls.since(0)); diff != "" {
		t.Errorf("kernel calls (-want +got):\n%s", diff)
	}
	if a.hot.base != nil || len(a.hot.applied) != 0 {
		t.Errorf("after the kernel refused: base %v, applied %v", a.hot.base != nil, a.hot.applied)
	}
}
