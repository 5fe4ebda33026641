package e2e

import (
	"strings"
	"testing"
	"time"

	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"github.com/mpfleet/mpfleet/test/lab"
)

// TestE2EFleet runs the scenarios that share one lab, in order: each
// leaves the fleet as it found it (lab-two-links.yaml applied, both hosts
// IN_SYNC, every link up). The throughput scenarios run first and alone:
// nothing else of this package runs in parallel with them.
func TestE2EFleet(t *testing.T) {
	f := newFleet(t)
	revs := f.apply(t, twoLinksFile, "e2e: two links")
	took := f.waitSynced(t, revs)
	t.Logf("both hosts IN_SYNC %v after the apply", took.Round(time.Millisecond))
	addr := f.serve(t)

	scenarios := []struct {
		name string
		fn   func(t *testing.T, f *fleet, addr string)
	}{
		{"PolicyApplied", testPolicyApplied},
		{"Aggregation", testAggregation},
		{"Failover", testFailover},
		{"Recovery", testRecovery},
		{"Drift", testDrift},
		{"AddressToEndpoint", testAddressToEndpoint},
		{"Health", testHealth},
		{"FailedApply", testFailedApply},
		{"ForgedHello", testForgedHello},
		{"GRPCurl", testGRPCurl},
		// These restart the controller: last.
		{"ControllerRestart", testControllerRestart},
		{"AgentRestartOffline", testAgentRestartOffline},
	}
	for _, s := range scenarios {
		if !t.Run(s.name, func(t *testing.T) { s.fn(t, f, addr) }) {
			// Later scenarios assume the fleet as the last one left it.
			t.Logf("%s failed; the fleet may not be as the next scenarios expect", s.name)
		}
	}
}

// testPolicyApplied: a policy applied through mpfleetctl is in each host's
// kernel as declared — endpoints and flags, limits, sysctls, rules and
// routes — and `mpfleetctl get hosts` shows both IN_SYNC at its revision.
func testPolicyApplied(t *testing.T, f *fleet, _ string) {
	revs := f.revisions(t)
	if err := f.synced(revs); err != nil {
		t.Fatal(err)
	}
	for _, h := range []lab.Host{lab.Client, lab.Server} {
		s, err := readKernel(f.Lab, h)
		if err != nil {
			t.Fatal(err)
		}
		if err := declared[twoLinksFile][h].check(s, h); err != nil {
			t.Error(err)
		}
		t.Logf("%s kernel:\n%s", h, s)
	}
	out := f.mustCtl("get", "hosts")
	t.Logf("mpfleetctl get hosts:\n%s", out)
	for _, h := range []lab.Host{lab.Client, lab.Server} {
		if !strings.Contains(out, f.HostID(h)) {
			t.Errorf("get hosts does not list %s", f.HostID(h))
		}
	}
	desc := f.mustCtl("describe", "host", f.HostID(lab.Client))
	for _, want := range []string{"198.18.2.2", "fullmesh"} {
		if !strings.Contains(strings.ToLower(desc), want) {
			t.Errorf("describe host %s does not show %q:\n%s", f.HostID(lab.Client), want, desc)
		}
	}
	hs, err := f.hosts()
	if err != nil {
		t.Fatal(err)
	}
	if st := hs[lab.Client].GetSyncState(); st != pb.SyncState_SYNC_STATE_IN_SYNC {
		t.Errorf("client %s", st)
	}
}
