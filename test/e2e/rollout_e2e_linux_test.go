package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"github.com/mpfleet/mpfleet/test/fleettest"
	"github.com/mpfleet/mpfleet/test/lab"
)

// The rollout fleet: six hosts (lab h1..h6), each with eth1 and eth2 as
// MPTCP paths, routed by host_index gateways and probed against the
// server's probe listener every second.
const (
	fleetSize      = 6
	fleetRole      = fleettest.FleetRole
	fleetGroup     = "groups/fleet"
	rolloutBake    = 3 * time.Second
	rolloutTimeout = 30 * time.Second
)

// fleetManifest is the fleet group's manifest: subflows and eth1's
// gateway (its host index) vary between revisions; -1 is an address nobody
// answers for, so eth1's probe fails.
func fleetManifest(t *testing.T, subflows, eth1Index int) string {
	t.Helper()
	y := fmt.Sprintf(`kind: Group
name: fleet
description: rollout fleet
selector:
  matchLabels:
    role: %s
rolloutStrategy:
  canaryCount: 1
  batchSize: 2
  bakeTime: %s
  stepTimeout: %s
policy:
  enabled: true
  limits:
    subflows: %d
    addAddrAccepted: 2
  endpoints:
    - interface: eth[12]
      family: ipv4
      flags: [subflow]
  routing:
    enabled: true
    gateways:
      - interface: eth1
        hostIndex: %d
      - interface: eth2
        hostIndex: 1
  probes:
    - address: %s:%s
      interval: 1s
      timeout: 300ms
`, fleetRole, rolloutBake, rolloutTimeout, subflows, eth1Index, lab.Addr(lab.Server, lab.Link1), probePort)
	p := filepath.Join(t.TempDir(), fmt.Sprintf("fleet-%d-%d.yaml", subflows, eth1Index))
	if err := os.WriteFile(p, []byte(y), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// fleetHostsState returns the fleet hosts as the controller shows them.
func (f *fleet) fleetHostsState(t *testing.T) map[lab.Host]*pb.Host {
	t.Helper()
	resp, err := pb.NewHostServiceClient(f.apiConn(t)).ListHosts(context.Background(), &pb.ListHostsRequest{LabelSelector: "role=" + fleetRole, PageSize: 100})
	if err != nil {
		t.Fatal(err)
	}
	out := map[lab.Host]*pb.Host{}
	for _, h := range f.Lab.FleetHosts() {
		for _, x := range resp.GetHosts() {
			if x.GetName() == f.HostName(h) {
				out[h] = x
			}
		}
	}
	return out
}

// waitFleet waits until every fleet host is IN_SYNC at rev with every path
// OK.
func (f *fleet) waitFleet(t *testing.T, rev int64) {
	t.Helper()
	eventually(t, 60*time.Second, func() error {
		if err := f.Exited(); err != nil {
			return stop(err)
		}
		hs := f.fleetHostsState(t)
		for _, h := range f.Lab.FleetHosts() {
			x := hs[h]
			if x == nil || x.GetSyncState() != pb.SyncState_SYNC_STATE_IN_SYNC || x.GetAppliedRevision() != rev ||
				!slices.Equal(paths(x), []string{"eth1=OK", "eth2=OK"}) {
				return fmt.Errorf("%s: %s at %d, paths %v, problems %v", h, x.GetSyncState(), x.GetAppliedRevision(), paths(x), problems(x))
			}
		}
		return nil
	})
}

// rolloutOf returns the group's newest rollout.
func (f *fleet) rolloutOf(t *testing.T) *pb.Rollout {
	t.Helper()
	resp, err := pb.NewRolloutServiceClient(f.apiConn(t)).ListRollouts(context.Background(), &pb.ListRolloutsRequest{Group: fleetGroup, PageSize: 1})
	if err != nil || len(resp.GetRollouts()) == 0 {
		t.Fatalf("no rollout of %s: %v", fleetGroup, err)
	}
	return resp.GetRollouts()[0]
}

// watchRollout follows a rollout until done accepts it.
func (f *fleet) watchRollout(t *testing.T, name string, timeout time.Duration, done func(*pb.Rollout) bool) *pb.Rollout {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	stream, err := pb.NewRolloutServiceClient(f.apiConn(t)).WatchRollout(ctx, &pb.WatchRolloutRequest{Name: name})
	if err != nil {
		t.Fatal(err)
	}
	var last *pb.Rollout
	for {
		r, err := stream.Recv()
		if err != nil {
			t.Fatalf("watching %s: %v; last %s: %s", name, err, last.GetState(), last.GetMessage())
		}
		if last = r; done(r) {
			return r
		}
	}
}

func ended(r *pb.Rollout) bool {
	switch r.GetState() {
	case pb.Rollout_STATE_SUCCEEDED, pb.Rollout_STATE_FAILED, pb.Rollout_STATE_CANCELLED, pb.Rollout_STATE_ROLLED_BACK:
		return true
	}
	return false
}

// appliedBy returns the hosts the audit log says applied revision rev of
// the fleet group.
func (f *fleet) appliedBy(t *testing.T, rev int64) []string {
	t.Helper()
	resp, err := pb.NewAuditServiceClient(f.apiConn(t)).ListAuditEvents(context.Background(),
		&pb.ListAuditEventsRequest{PageSize: 1000, Action: "agent.applied", Resource: fleetGroup})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	what := fmt.Sprintf("revision %d applied", rev)
	for _, ev := range resp.GetEvents() {
		if strings.Contains(ev.GetReason(), what) {
			out = append(out, ev.GetHost())
		}
	}
	return out
}

// TestE2ERollout: staged rollouts over six real agents in the lab.
func TestE2ERollout(t *testing.T) {
	f := newBareFleet(t, fleetHosts(fleetSize), agentFlags(lab.Server, "--probe-listen", "0.0.0.0:"+probePort))
	f.startController()
	f.startAgent(lab.Server) // the probe target; no group selects it
	for _, h := range f.Lab.FleetHosts() {
		f.startAgent(h)
	}
	rev := f.apply(t, fleetManifest(t, 2, 1), "e2e: the fleet's first revision")[fleetGroup]
	f.waitFleet(t, rev)

	t.Run("Good", func(t *testing.T) {
		start := time.Now()
		out, err := f.ctl("apply", "-f", fleetManifest(t, 3, 1), "--reason", "e2e: three subflows", "--wait")
		if err != nil {
			t.Fatalf("apply --wait: %v\n%s", err, out)
		}
		took := time.Since(start)
		t.Logf("mpfleetctl apply --wait:\n%s", out)
		r := f.rolloutOf(t)
		if r.GetState() != pb.Rollout_STATE_SUCCEEDED || r.GetTargetRevision() != rev+1 {
			t.Fatalf("rollout %s to %d: %s", r.GetState(), r.GetTargetRevision(), r.GetMessage())
		}
		rev = r.GetTargetRevision()
		if n := len(r.GetSteps()); n != 4 {
			t.Errorf("%d steps over 6 hosts, want canary 1 + batches 2, 2, 1", n)
		}
		var over []time.Duration
		for i, st := range r.GetSteps() {
			if i > 0 && st.GetStartTime().AsTime().Before(r.GetSteps()[i-1].GetEndTime().AsTime()) {
				t.Errorf("step %d started before step %d ended", i, i-1)
			}
			over = append(over, st.GetEndTime().AsTime().Sub(st.GetStartTime().AsTime())-rolloutBake)
		}
		f.waitFleet(t, rev)
		t.Logf("FIGURE rollout over %d hosts, 4 steps, bake %v: %v from apply to SUCCEEDED; step time beyond the bake: median %v (%v)",
			fleetSize, rolloutBake, took.Round(time.Millisecond), median(over).Round(time.Millisecond), over)
	})

	t.Run("Harmful", func(t *testing.T) {
		start := time.Now()
		out, err := f.ctl("apply", "-f", fleetManifest(t, 3, -1), "--reason", "e2e: eth1 via .254", "--wait")
		if err == nil {
			t.Fatalf("apply --wait of a harmful change exited 0:\n%s", out)
		}
		r := f.rolloutOf(t)
		if r.GetState() != pb.Rollout_STATE_ROLLED_BACK {
			t.Fatalf("rollout %s: %s", r.GetState(), r.GetMessage())
		}
		f.waitFleet(t, rev) // every host IN_SYNC on the old revision
		took := time.Since(start)
		canary := r.GetSteps()[0].GetHosts()
		if len(r.GetSteps()[0].GetFailures()) != 1 || !strings.Contains(r.GetSteps()[0].GetFailures()[0].GetReason(), "eth1") {
			t.Errorf("canary failures %v", r.GetSteps()[0].GetFailures())
		}
		if got := f.appliedBy(t, r.GetTargetRevision()); !slices.Equal(got, canary) {
			t.Errorf("revision %d applied by %v, want only the canary %v", r.GetTargetRevision(), got, canary)
		}
		audit := f.mustCtl("audit", "list", "--resource", r.GetName())
		t.Logf("audit of %s:\n%s", r.GetName(), audit)
		for _, want := range []string{"rollouts.create", "rollouts.host_moved", "rollouts.host_failed", "rollouts.halted", "rollouts.rolled_back"} {
			if !strings.Contains(audit, want) {
				t.Errorf("the audit log has no %s for the rollout", want)
			}
		}
		t.Logf("FIGURE harmful change: %v from apply to the canary rolled back and every host IN_SYNC with both paths OK", took.Round(time.Millisecond))
	})

	t.Run("PauseResume", func(t *testing.T) {
		// Pause once the canary moved: the canary's step may finish, no
		// batch starts.
		f.apply(t, fleetManifest(t, 4, 1), "e2e: four subflows")
		r := f.rolloutOf(t)
		f.watchRollout(t, r.GetName(), time.Minute, func(r *pb.Rollout) bool { return len(r.GetMovedHosts()) == 1 })
		f.mustCtl("rollout", "pause", r.GetName(), "--reason", "e2e: look first")
		r = f.watchRollout(t, r.GetName(), time.Minute, func(r *pb.Rollout) bool {
			return r.GetState() == pb.Rollout_STATE_PAUSED && r.GetCurrentStep() >= 1
		})
		// Nothing moves while paused: two bake times, where an unpaused
		// rollout would have moved the next batch and finished it.
		time.Sleep(2 * rolloutBake)
		if r2 := f.rolloutOf(t); r2.GetState() != pb.Rollout_STATE_PAUSED || len(r2.GetMovedHosts()) != 1 {
			t.Fatalf("paused rollout %s moved %v", r2.GetState(), r2.GetMovedHosts())
		}
		if got := f.appliedBy(t, r.GetTargetRevision()); len(got) != 1 {
			t.Fatalf("hosts that applied revision %d under the pause: %v", r.GetTargetRevision(), got)
		}
		f.mustCtl("rollout", "resume", r.GetName())
		r = f.watchRollout(t, r.GetName(), time.Minute, ended)
		if r.GetState() != pb.Rollout_STATE_SUCCEEDED {
			t.Fatalf("after resume: %s: %s", r.GetState(), r.GetMessage())
		}
		rev = r.GetTargetRevision()
		f.waitFleet(t, rev)
	})

	t.Run("Cancel", func(t *testing.T) {
		f.apply(t, fleetManifest(t, 5, 1), "e2e: five subflows")
		r := f.rolloutOf(t)
		f.watchRollout(t, r.GetName(), time.Minute, func(r *pb.Rollout) bool { return len(r.GetMovedHosts()) > 0 })
		f.mustCtl("rollout", "cancel", r.GetName(), "--reason", "e2e: not now")
		r = f.watchRollout(t, r.GetName(), time.Minute, ended)
		if r.GetState() != pb.Rollout_STATE_CANCELLED {
			t.Fatalf("state %s: %s", r.GetState(), r.GetMessage())
		}
		f.waitFleet(t, rev) // the canary is back
	})

	t.Run("ControllerKilled", func(t *testing.T) {
		f.apply(t, fleetManifest(t, 6, 1), "e2e: six subflows")
		r := f.rolloutOf(t)
		r = f.watchRollout(t, r.GetName(), time.Minute, func(r *pb.Rollout) bool { return r.GetCurrentStep() >= 1 && len(r.GetMovedHosts()) >= 2 })
		// The kill comes once the moved hosts' applies are audited: an
		// agent event in flight when a controller dies is lost (events are
		// not acknowledged), and this scenario is about the rollout's
		// resumption, which must not apply the revision twice anywhere.
		eventually(t, 30*time.Second, func() error {
			moved := f.rolloutOf(t).GetMovedHosts()
			if got := f.appliedBy(t, r.GetTargetRevision()); len(got) < len(moved) {
				return fmt.Errorf("revision %d applied by %v of the moved %v", r.GetTargetRevision(), got, moved)
			}
			return nil
		})
		f.stopController(true) // SIGKILL, mid-rollout
		f.startController()
		r = f.watchRollout(t, r.GetName(), 2*time.Minute, ended)
		if r.GetState() != pb.Rollout_STATE_SUCCEEDED {
			t.Fatalf("after the restart: %s: %s", r.GetState(), r.GetMessage())
		}
		f.waitFleet(t, r.GetTargetRevision())
		got := f.appliedBy(t, r.GetTargetRevision())
		slices.Sort(got)
		var want []string
		for _, h := range f.Lab.FleetHosts() {
			want = append(want, f.HostName(h))
		}
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Errorf("revision %d applied by %v, want each fleet host once: %v", r.GetTargetRevision(), got, want)
		}
	})
}
