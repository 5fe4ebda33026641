package e2e

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/mpfleet/mpfleet/internal/mptcp"
	"github.com/mpfleet/mpfleet/internal/mptcp/mptcpnl"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"github.com/mpfleet/mpfleet/test/lab"
)

// ip runs `ip ARGS` in the namespace of h: what an operator does by hand.
func (f *fleet) ip(t testing.TB, h lab.Host, args ...string) {
	t.Helper()
	if out, err := f.Lab.Exec(context.Background(), h, "ip", args...); err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// testDrift: someone runs `ip mptcp endpoint flush` on a host. The agent's
// periodic resync finds it, repairs it, the host is IN_SYNC again, and the
// audit log has an agent.drift_repaired event for the host.
func testDrift(t *testing.T, f *fleet, _ string) {
	revs := f.revisions(t)
	for _, h := range []lab.Host{lab.Client, lab.Server} {
		start := time.Now()
		f.ip(t, h, "mptcp", "endpoint", "flush")
		// No check that the endpoints are gone: a resync may already have
		// put them back. The drift_repaired event below says it did.
		f.waitKernel(t, h, declared[twoLinksFile][h])
		repaired := time.Since(start)
		ev := f.waitAudit(t, "agent.drift_repaired", h, start)
		f.waitSynced(t, revs)
		t.Logf("FIGURE drift %s: endpoints flushed by hand, back in the kernel after %v (resync interval %v); audit #%d %s %s: %q",
			h, repaired.Round(time.Millisecond), resyncInterval, ev.GetSequence(), ev.GetActor(), ev.GetAction(), ev.GetReason())
		if ev.GetResult() != pb.AuditResult_AUDIT_RESULT_SUCCESS {
			t.Errorf("audit event %d: result %s", ev.GetSequence(), ev.GetResult())
		}
		if want := "cert:" + f.HostID(h); ev.GetActor() != want {
			t.Errorf("audit event %d: actor %q, want %q (the agent's certificate)", ev.GetSequence(), ev.GetActor(), want)
		}
	}
	out := f.mustCtl("audit", "list", "--action", "agent.drift")
	t.Logf("mpfleetctl audit list --action agent.drift:\n%s", out)
	if v := f.mustCtl("audit", "verify"); !strings.HasPrefix(v, "OK") {
		t.Errorf("audit verify: %s", v)
	}
}

// percentile returns the p-th percentile (0-100) of sorted ds, nearest rank.
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	i := int(p/100*float64(len(ds))+0.5) - 1
	return ds[max(0, min(i, len(ds)-1))]
}

// testAddressToEndpoint: an address added to an interface the policy
// selects (the client's eth2) becomes an MPTCP endpoint, with its own
// policy routing, and stops being one when removed. The latency is measured
// from outside, 50 times: from the netlink AddrAdd returning to the
// endpoint being in the kernel's dump (polled every 0.5 ms).
func testAddressToEndpoint(t *testing.T, f *fleet, _ string) {
	const runs = 50
	nh := f.Lab.Netlink(lab.Client)
	link, err := nh.LinkByName("eth2")
	if err != nil {
		t.Fatal(err)
	}
	mc, err := mptcpnl.Dial(&mptcpnl.DialOptions{NetNS: int(f.Lab.NS(lab.Client))})
	if err != nil {
		t.Fatal(err)
	}
	defer mc.Close()
	extra := netip.MustParseAddr("198.18.2.10")
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: extra.AsSlice(), Mask: net.CIDRMask(24, 32)}}
	t.Cleanup(func() { _ = nh.AddrDel(link, addr) })
	has := func() (bool, error) {
		eps, err := mc.Endpoints()
		if err != nil {
			return false, err
		}
		return slices.ContainsFunc(eps, func(e mptcp.Endpoint) bool { return e.Addr == extra }), nil
	}
	wait := func(want bool) (time.Duration, error) {
		start := time.Now()
		for time.Since(start) < 5*time.Second {
			got, err := has()
			if err != nil {
				return 0, err
			}
			if got == want {
				return time.Since(start), nil
			}
			time.Sleep(500 * time.Microsecond)
		}
		return 0, fmt.Errorf("endpoint %s present %v 5 s after the address change", extra, !want)
	}
	var added, removed []time.Duration
	for i := range runs {
		if err := nh.AddrAdd(link, addr); err != nil {
			t.Fatal(err)
		}
		d, err := wait(true)
		if err != nil {
			t.Fatalf("run %d: %v", i+1, err)
		}
		added = append(added, d)
		if i == 0 {
			// The new address is routed like the others: its own rule and
			// table.
			s, err := readKernel(f.Lab, lab.Client)
			if err != nil {
				t.Fatal(err)
			}
			e := wantEndpoint{extra, mptcp.FlagFullmesh, lab.Link2}
			eventually(t, 5*time.Second, func() error {
				if s, err = readKernel(f.Lab, lab.Client); err != nil {
					return err
				}
				return checkRouted(s, lab.Client, e)
			})
		}
		if err := nh.AddrDel(link, addr); err != nil {
			t.Fatal(err)
		}
		d, err = wait(false)
		if err != nil {
			t.Fatalf("run %d: %v", i+1, err)
		}
		removed = append(removed, d)
	}
	slices.Sort(added)
	slices.Sort(removed)
	t.Logf("FIGURE address->endpoint over %d runs: p50 %v p99 %v max %v; address removed->endpoint gone: p50 %v p99 %v max %v",
		runs, percentile(added, 50), percentile(added, 99), added[len(added)-1],
		percentile(removed, 50), percentile(removed, 99), removed[len(removed)-1])
	if p := percentile(added, 50); p > 500*time.Millisecond {
		t.Errorf("address to endpoint: median %v, want milliseconds (it is event-driven, not the %v resync)", p, resyncInterval)
	}
	f.waitKernel(t, lab.Client, declared[twoLinksFile][lab.Client])
	f.waitSynced(t, f.revisions(t))
}

// testFailedApply: a policy the controller accepts but the kernel refuses
// half-way — close_timeout changes (applied first) and scheduler
// "nonexistent" (refused) — is rolled back: the kernel is as it was, the
// host FAILED with the kernel's reason, an agent.apply_failed audit event.
// Applying the good policy again brings the host back IN_SYNC.
func testFailedApply(t *testing.T, f *fleet, _ string) {
	before, err := readKernel(f.Lab, lab.Client)
	if err != nil {
		t.Fatal(err)
	}
	src, err := os.ReadFile(filepath.Join(repoRoot(), twoLinksFile))
	if err != nil {
		t.Fatal(err)
	}
	// Only the clients' group changes: its document is the second.
	docs := strings.SplitN(string(src), "\n---\n", 2)
	bad := strings.Replace(docs[1], "scheduler: default", `scheduler: nonexistent`, 1)
	bad = strings.Replace(bad, "closeTimeout: 30", "closeTimeout: 45", 1)
	if bad == docs[1] {
		t.Fatal("could not make the bad policy")
	}
	file := filepath.Join(t.TempDir(), "bad-scheduler.yaml")
	if err := os.WriteFile(file, []byte(docs[0]+"\n---\n"+bad), 0o644); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	revs := f.apply(t, file, "e2e: a scheduler the kernel lacks")
	var host *pb.Host
	eventually(t, 20*time.Second, func() error {
		hs, err := f.hosts()
		if err != nil {
			return err
		}
		host = hs[lab.Client]
		if host.GetSyncState() != pb.SyncState_SYNC_STATE_FAILED || host.GetDesiredRevision() != revs[groupOf[lab.Client]] {
			return fmt.Errorf("client %s at desired revision %d", host.GetSyncState(), host.GetDesiredRevision())
		}
		return nil
	})
	t.Logf("client FAILED: %s", host.GetLastError())
	if !strings.Contains(host.GetLastError(), "scheduler") {
		t.Errorf("last error %q does not name the scheduler", host.GetLastError())
	}
	if host.GetAppliedRevision() >= revs[groupOf[lab.Client]] {
		t.Errorf("applied revision %d, want the previous one (below %d)", host.GetAppliedRevision(), revs[groupOf[lab.Client]])
	}
	ev := f.waitAudit(t, "agent.apply_failed", lab.Client, start)
	t.Logf("audit #%d %s %s %s: %q", ev.GetSequence(), ev.GetActor(), ev.GetAction(), ev.GetResult(), ev.GetError())
	after, err := readKernel(f.Lab, lab.Client)
	if err != nil {
		t.Fatal(err)
	}
	if after.String() != before.String() {
		t.Errorf("kernel changed by the failed apply:\n%s", lineDiff(before.String(), after.String()))
	}
	if after.Sysctls["close_timeout"] != "30" {
		t.Errorf("close_timeout %s after the failed apply, want 30 (rolled back)", after.Sysctls["close_timeout"])
	}
	f.useFile(t, twoLinksFile)
}

// testAgentRestartOffline: with the controller down, the kernel state is
// wiped by hand and the agent restarted: it re-applies its last good
// configuration from its state dir without the controller, and reports
// agent.restored when the controller is back.
func testAgentRestartOffline(t *testing.T, f *fleet, _ string) {
	revs := f.revisions(t)
	f.stopController(false)
	defer func() {
		if !f.ControllerRunning() {
			f.startController()
		}
	}()
	f.stopAgent(lab.Client)
	f.ip(t, lab.Client, "mptcp", "endpoint", "flush")
	f.ip(t, lab.Client, "mptcp", "limits", "set", "subflow", "0", "add_addr_accepted", "0")
	s, err := readKernel(f.Lab, lab.Client)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range s.Rules {
		f.ip(t, lab.Client, "rule", "del", "priority", fmt.Sprint(r.Priority))
	}
	if err := f.Lab.Do(lab.Client, func() error { return mptcp.WriteSysctl("close_timeout", "60") }); err != nil {
		t.Fatal(err)
	}
	if s, err = readKernel(f.Lab, lab.Client); err != nil {
		t.Fatal(err)
	}
	if declared[twoLinksFile][lab.Client].check(s, lab.Client) == nil {
		t.Fatal("the kernel still holds the policy after wiping it")
	}
	t.Logf("client kernel wiped by hand:\n%s", s)
	start := time.Now()
	f.startAgent(lab.Client)
	f.waitKernel(t, lab.Client, declared[twoLinksFile][lab.Client])
	t.Logf("FIGURE restore: agent restarted with the controller down; kernel state back %v after the start", time.Since(start).Round(time.Millisecond))
	f.startController()
	f.waitSynced(t, revs)
	ev := f.waitAudit(t, "agent.restored", lab.Client, start)
	t.Logf("audit #%d %s %s: %q", ev.GetSequence(), ev.GetActor(), ev.GetAction(), ev.GetReason())
}

// lineDiff shows the lines of a and b that differ, "-" for a's, "+" for b's.
func lineDiff(a, b string) string {
	al, bl := strings.Split(a, "\n"), strings.Split(b, "\n")
	var out []string
	for _, l := range al {
		if !slices.Contains(bl, l) {
			out = append(out, "- "+l)
		}
	}
	for _, l := range bl {
		if !slices.Contains(al, l) {
			out = append(out, "+ "+l)
		}
	}
	return strings.Join(out, "\n")
}
