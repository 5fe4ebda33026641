package agent

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/mpfleet/mpfleet/internal/mptcp"
	"github.com/mpfleet/mpfleet/internal/route"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// routing lists the namespace's rules and routes of every table as
// "proto/kind/text" strings, sorted.
func (l *lab) routing(t testing.TB) (ours, others []string) {
	t.Helper()
	rules, err := l.h.RuleListFiltered(netlink.FAMILY_ALL, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rules {
		s := "rule " + r.String()
		if route.Proto(r.Protocol) == route.Protocol {
			ours = append(ours, s)
		} else {
			others = append(others, s)
		}
	}
	routes, err := l.h.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range routes {
		if r.Protocol == unix.RTPROT_KERNEL {
			// The kernel's own routes (local, link-local, multicast) come
			// and go with addresses and DAD, by themselves: --cleanup never
			// touches them, and they are not what this test is about.
			continue
		}
		s := "route " + r.String()
		if route.Proto(r.Protocol) == route.Protocol {
			ours = append(ours, s)
		} else {
			others = append(others, s)
		}
	}
	slices.Sort(ours)
	slices.Sort(others)
	return ours, others
}

// TestIntegrationCleanup: the agent applies a policy to a real namespace
// (sysctls, limits, endpoints, rules and routes) beside a foreign rule and
// route; stopped, with a foreign endpoint added, --cleanup removes all of
// mpfleet's (a rule of its protocol left in another table included) and
// nothing else, and restores the sysctls and limits to what they were
// before. While the agent runs, cleanup is refused.
func TestIntegrationCleanup(t *testing.T) {
	l := newLab(t, 2)
	l0 := l.links[0]
	// Known values before mpfleet.
	if err := l.ns.Do(func() error { return mptcp.WriteSysctl("net.mptcp.add_addr_timeout", "77") }); err != nil {
		t.Fatal(err)
	}
	origLimits := mptcp.Limits{Subflows: 1, AddAddrAccepted: 1}
	if err := l.mp.SetLimits(origLimits); err != nil {
		t.Fatal(err)
	}
	// A foreign rule and route (proto boot), outside the policy's range but
	// inside every range --cleanup looks at.
	foreignRule := netlink.NewRule()
	foreignRule.Priority, foreignRule.Table, foreignRule.Protocol = 100, 100, uint8(route.ProtoBoot)
	foreignRule.Src = &net.IPNet{IP: net.ParseIP("198.18.10.9").To4(), Mask: net.CIDRMask(32, 32)}
	if err := l.h.RuleAdd(foreignRule); err != nil {
		t.Fatal(err)
	}
	if err := l.h.RouteAdd(&netlink.Route{Table: 100, LinkIndex: l0.index, Gw: l0.gw4.AsSlice(), Protocol: netlink.RouteProtocol(route.ProtoBoot)}); err != nil {
		t.Fatal(err)
	}
	_, others := l.routing(t)

	ctrl := newController(t, false)
	ctrl.setDesired(managed(1, labPolicy()))
	dir := t.TempDir()
	stop := runAgent(t, l, ctrl, dir)
	ctrl.waitReport(t, 0, "IN_SYNC at 1", inState(pb.SyncState_SYNC_STATE_IN_SYNC, 1))
	if v := l.sysctl(t, "add_addr_timeout"); v != "60" {
		t.Fatalf("add_addr_timeout %q under the policy", v)
	}
	if lim, err := l.mp.Limits(); err != nil || lim == origLimits {
		t.Fatalf("limits under the policy %+v (%v)", lim, err)
	}
	ours, _ := l.routing(t)
	if len(ours) == 0 {
		t.Fatal("the policy made no rules or routes")
	}
	eps, err := l.mp.Endpoints()
	if err != nil || len(eps) != 4 {
		t.Fatalf("endpoints under the policy %v (%v)", eps, err)
	}

	// Refused while the agent runs, and nothing touched.
	kernels := NetlinkKernels(int(l.ns.Handle))
	var out bytes.Buffer
	err = Cleanup(context.Background(), CleanupOptions{StateDir: dir, Kernel: kernels, Out: &out})
	if !errors.Is(err, ErrStateDirInUse) {
		t.Fatalf("Cleanup while the agent runs = %v, want ErrStateDirInUse", err)
	}
	if now, _ := l.routing(t); !slices.Equal(now, ours) {
		t.Fatalf("a refused cleanup changed the routing: %v, was %v", now, ours)
	}
	if now, _ := l.mp.Endpoints(); !slices.Equal(now, eps) {
		t.Fatalf("a refused cleanup changed the endpoints: %v, was %v", now, eps)
	}
	stop()

	// Made by others once the agent stopped: an endpoint, and a rule of
	// mpfleet's protocol in a table of a range it no longer uses (as an
	// agent stopped in the middle of moving its range leaves).
	foreignEP := mptcp.Endpoint{ID: 50, Addr: netip.MustParseAddr("198.18.10.7"), Flags: mptcp.FlagSignal}
	if err := l.mp.AddEndpoint(foreignEP); err != nil {
		t.Fatal(err)
	}
	leftover := netlink.NewRule()
	leftover.Priority, leftover.Table, leftover.Protocol = 1000, 300, uint8(route.Protocol)
	leftover.Src = &net.IPNet{IP: l0.v4.Addr().AsSlice(), Mask: net.CIDRMask(32, 32)}
	if err := l.h.RuleAdd(leftover); err != nil {
		t.Fatal(err)
	}

	out.Reset()
	if err := Cleanup(context.Background(), CleanupOptions{StateDir: dir, Kernel: kernels, Out: &out}); err != nil {
		t.Fatalf("Cleanup: %v\n%s", err, out.String())
	}
	t.Logf("cleanup:\n%s", out.String())
	ours, now := l.routing(t)
	if len(ours) != 0 {
		t.Errorf("rules and routes of mpfleet's protocol after the cleanup: %v", ours)
	}
	if !slices.Equal(now, others) {
		t.Errorf("other rules and routes after the cleanup:\n%v\nwant as before the agent:\n%v", now, others)
	}
	if eps, err := l.mp.Endpoints(); err != nil || len(eps) != 1 || eps[0].Addr != foreignEP.Addr {
		t.Errorf("endpoints after the cleanup %v (%v), want only the foreign one", eps, err)
	}
	if v := l.sysctl(t, "add_addr_timeout"); v != "77" {
		t.Errorf("add_addr_timeout after the cleanup %q, want 77 as before the agent", v)
	}
	if lim, err := l.mp.Limits(); err != nil || lim != origLimits {
		t.Errorf("limits after the cleanup %+v (%v), want %+v", lim, err, origLimits)
	}
	if ents, err := os.ReadDir(dir); err != nil || len(ents) != 0 {
		t.Errorf("state dir after the cleanup: %v (%v)", ents, err)
	}
}

// runAgent runs an in-process agent on l's namespace with state dir dir,
// and returns the function that stops it (called at the test's end too).
func runAgent(t *testing.T, l *lab, ctrl *fakeController, dir string) (stop func()) {
	t.Helper()
	sys, err := OpenNetlinkSystem(int(l.ns.Handle))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sys.Close() })
	a, err := New(Options{
		HostID: "lab-1", Controller: ctrl.addr, StateDir: dir,
		ResyncInterval: time.Hour, ReportInterval: time.Hour, ConfirmTimeout: 5 * time.Second,
		BackoffMin: 10 * time.Millisecond, BackoffMax: 100 * time.Millisecond,
		Kernel: NetlinkKernels(int(l.ns.Handle)), System: sys, Logger: testLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := a.Run(ctx); err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	stop = func() { cancel(); <-done }
	t.Cleanup(stop)
	return stop
}
