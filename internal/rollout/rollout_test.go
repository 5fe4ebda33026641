package rollout

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

func TestPlan(t *testing.T) {
	ids := func(n int) []string {
		var out []string
		for i := range n {
			out = append(out, fmt.Sprintf("h%02d", i))
		}
		return out
	}
	sizes := func(steps [][]string) []int {
		var out []int
		for _, s := range steps {
			out = append(out, len(s))
		}
		return out
	}
	tests := []struct {
		name string
		s    *pb.RolloutStrategy
		n    int
		want []int
	}{
		{"zero hosts", nil, 0, nil},
		{"one host, defaults", nil, 1, []int{1}},
		{"defaults: canary 1, batches of 25%", nil, 10, []int{1, 3, 3, 3}},
		{"canary 1, batch 2", &pb.RolloutStrategy{CanaryCount: 1, BatchSize: 2}, 6, []int{1, 2, 2, 1}},
		{"canary 10% rounds up", &pb.RolloutStrategy{CanaryPercent: 10, BatchPercent: 50}, 6, []int{1, 3, 2}},
		{"canary 34% of 3 is 2 (ceil)", &pb.RolloutStrategy{CanaryPercent: 34, BatchSize: 5}, 3, []int{2, 1}},
		{"count beats percent", &pb.RolloutStrategy{CanaryCount: 2, CanaryPercent: 90, BatchSize: 1, BatchPercent: 90}, 4, []int{2, 1, 1}},
		{"canary bigger than the group", &pb.RolloutStrategy{CanaryCount: 9}, 3, []int{3}},
		{"100% at once", &pb.RolloutStrategy{CanaryPercent: 100}, 5, []int{5}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Plan(tt.s, ids(tt.n))
			if diff := cmp.Diff(tt.want, sizes(got)); diff != "" {
				t.Errorf("step sizes (-want +got):\n%s", diff)
			}
			if flat := slices.Concat(got...); !slices.IsSorted(flat) || len(flat) != tt.n {
				t.Errorf("steps %v: not every host once, in id order", got)
			}
		})
	}
	// Stable: the same hosts in any order give the same steps.
	a := Plan(&pb.RolloutStrategy{BatchSize: 2}, []string{"c", "a", "b", "e", "d"})
	b := Plan(&pb.RolloutStrategy{BatchSize: 2}, []string{"e", "d", "c", "b", "a"})
	if diff := cmp.Diff(a, b); diff != "" || a[0][0] != "a" {
		t.Errorf("not stable: %v vs %v", a, b)
	}
}

// sim is a fleet of fake hosts that do what their targets say, each at its
// own speed, and a fake clock.
type sim struct {
	t       *testing.T
	now     time.Time
	r       *pb.Rollout
	hosts   map[string]Host
	targets map[string]int64 // current target of each host
	// behave returns the host's state once it applied rev.
	behave func(id string, rev int64, h Host) Host
	events []Event
	moves  []string // "id→rev" in order
}

func newSim(t *testing.T, n int, s *pb.RolloutStrategy) *sim {
	x := &sim{t: t, now: time.Unix(1_800_000_000, 0), hosts: map[string]Host{}, targets: map[string]int64{}}
	for i := range n {
		id := fmt.Sprintf("h%d", i+1)
		x.hosts[id] = Host{ID: id, Connected: true, State: pb.SyncState_SYNC_STATE_IN_SYNC, Applied: 1,
			OKPaths: []string{"eth1/198.18.1.2", "eth2/198.18.2.2"}, CountersTime: x.now}
		x.targets[id] = 1
	}
	x.behave = func(_ string, rev int64, h Host) Host {
		h.Applied, h.State = rev, pb.SyncState_SYNC_STATE_IN_SYNC
		return h
	}
	x.r = &pb.Rollout{Name: "rollouts/r1", Group: "groups/web", FromRevision: 1, TargetRevision: 2, Strategy: s,
		State: pb.Rollout_STATE_PENDING, CreateTime: timestamppb.New(x.now)}
	return x
}

// advance runs one Advance and applies its targets at once (the hosts apply
// on the next tick).
func (x *sim) advance() Result {
	res := Advance(x.r, x.hosts, x.now)
	x.take(res)
	return res
}

func (x *sim) take(res Result) {
	x.r = res.Rollout
	x.events = append(x.events, res.Events...)
	ids := make([]string, 0, len(res.Targets))
	for id := range res.Targets {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		x.targets[id] = res.Targets[id]
		x.moves = append(x.moves, fmt.Sprintf("%s→%d", id, res.Targets[id]))
	}
	if res.Done {
		for id := range x.hosts {
			x.targets[id] = res.DefaultRevision
		}
		for id := range x.targets {
			x.targets[id] = res.DefaultRevision
		}
		for _, name := range x.r.GetMovedHosts() {
			x.targets[hostID(name)] = x.r.GetTargetRevision()
		}
	}
}

// tick moves the clock, lets every host apply its target, and advances.
func (x *sim) tick(d time.Duration) Result {
	x.now = x.now.Add(d)
	for id, h := range x.hosts {
		if h.Connected && h.Applied != x.targets[id] {
			x.hosts[id] = x.behave(id, x.targets[id], h)
		}
		h = x.hosts[id]
		h.CountersTime = x.now
		x.hosts[id] = h
	}
	return x.advance()
}

// runUntil ticks every second until the rollout is no longer active.
func (x *sim) runUntil(max time.Duration) {
	x.t.Helper()
	x.advance()
	for end := x.now.Add(max); Active(x.r.GetState()); {
		if x.now.After(end) {
			x.t.Fatalf("still %s after %v: %s", x.r.GetState(), max, x.r.GetMessage())
		}
		x.tick(time.Second)
	}
}

func (x *sim) actions() []string {
	var out []string
	for _, e := range x.events {
		out = append(out, e.Action)
	}
	return out
}

func strategy(canary, batch int32, bake, timeout time.Duration, maxFail int32) *pb.RolloutStrategy {
	return &pb.RolloutStrategy{CanaryCount: canary, BatchSize: batch, BakeTime: durationpb.New(bake),
		StepTimeout: durationpb.New(timeout), MaxFailures: maxFail}
}

func TestGoodRollout(t *testing.T) {
	x := newSim(t, 6, strategy(1, 2, 3*time.Second, time.Minute, 0))
	x.runUntil(time.Minute)
	if x.r.GetState() != pb.Rollout_STATE_SUCCEEDED {
		t.Fatalf("state %s: %s", x.r.GetState(), x.r.GetMessage())
	}
	if len(x.r.GetSteps()) != 4 {
		t.Fatalf("%d steps, want canary + 3 batches", len(x.r.GetSteps()))
	}
	for i, st := range x.r.GetSteps() {
		if len(st.GetSucceededHosts()) != len(st.GetHosts()) || st.GetEndTime() == nil {
			t.Errorf("step %d: %v", i, st)
		}
		if i > 0 && st.GetStartTime().AsTime().Before(x.r.GetSteps()[i-1].GetEndTime().AsTime()) {
			t.Errorf("step %d started before step %d ended", i, i-1)
		}
		if i > 0 && st.GetStartTime().AsTime().Sub(x.r.GetSteps()[i-1].GetStartTime().AsTime()) < 3*time.Second {
			t.Errorf("step %d started before the bake time of step %d passed", i, i-1)
		}
	}
	for id, rev := range x.targets {
		if rev != 2 {
			t.Errorf("%s targets %d", id, rev)
		}
	}
	if want := []string{"h1→2", "h2→2", "h3→2", "h4→2", "h5→2", "h6→2"}; !slices.Equal(x.moves, want) {
		t.Errorf("moves %v, want %v (each host once, in order)", x.moves, want)
	}
	if got := x.actions(); got[len(got)-1] != "rollouts.succeeded" || !slices.Contains(got, "rollouts.host_succeeded") {
		t.Errorf("events %v", got)
	}
}

// TestHarmfulRollout: the canary turns unhealthy during the bake (a probe
// fails at the new revision); the rollout halts, rolls the canary back, and
// no other host ever gets the target.
func TestHarmfulRollout(t *testing.T) {
	x := newSim(t, 6, strategy(1, 2, 5*time.Second, time.Minute, 0))
	applied := map[string]time.Time{}
	x.behave = func(id string, rev int64, h Host) Host {
		h.Applied, h.State = rev, pb.SyncState_SYNC_STATE_IN_SYNC
		h.OKPaths = []string{"eth1/198.18.1.2", "eth2/198.18.2.2"}
		h.Problems = nil
		applied[id] = x.now
		return h
	}
	x.advance()
	// The canary applies, is IN_SYNC, then its eth1 probe fails 2s later.
	x.tick(time.Second)
	x.tick(time.Second)
	h := x.hosts["h1"]
	h.State, h.OKPaths, h.Problems = pb.SyncState_SYNC_STATE_DEGRADED, []string{"eth2/198.18.2.2"}, []string{"PATH_FAILED eth1 198.18.1.2"}
	x.hosts["h1"] = h
	x.behave = func(id string, rev int64, h Host) Host { // back on 1: healthy again
		h.Applied, h.State, h.Problems = rev, pb.SyncState_SYNC_STATE_IN_SYNC, nil
		h.OKPaths = []string{"eth1/198.18.1.2", "eth2/198.18.2.2"}
		return h
	}
	x.runUntil(time.Minute)
	if x.r.GetState() != pb.Rollout_STATE_ROLLED_BACK {
		t.Fatalf("state %s: %s", x.r.GetState(), x.r.GetMessage())
	}
	if want := []string{"h1→2", "h1→1"}; !slices.Equal(x.moves, want) {
		t.Errorf("moves %v, want %v: only the canary moves, and back", x.moves, want)
	}
	st := x.r.GetSteps()[0]
	if len(st.GetFailures()) != 1 || !strings.Contains(st.GetFailures()[0].GetReason(), "PATH_FAILED eth1") {
		t.Errorf("canary failures %v", st.GetFailures())
	}
	if !strings.Contains(x.r.GetMessage(), "halted") || !strings.Contains(x.r.GetMessage(), "back on revision 1") {
		t.Errorf("message %q", x.r.GetMessage())
	}
	for id, rev := range x.targets {
		if rev != 1 {
			t.Errorf("%s targets %d after the rollback", id, rev)
		}
	}
	want := []string{"rollouts.step_started", "rollouts.host_moved", "rollouts.host_failed", "rollouts.halted",
		"rollouts.rolling_back", "rollouts.host_rolled_back", "rollouts.rolled_back"}
	if diff := cmp.Diff(want, x.actions()); diff != "" {
		t.Errorf("events (-want +got):\n%s", diff)
	}
}

func TestStepTimeoutAndMaxFailures(t *testing.T) {
	// h2 never applies; one failure is tolerated, the rest succeed.
	x := newSim(t, 4, strategy(1, 3, time.Second, 10*time.Second, 1))
	x.behave = func(id string, rev int64, h Host) Host {
		if id == "h2" {
			h.State, h.LastError = pb.SyncState_SYNC_STATE_APPLYING, "still at it"
			return h
		}
		h.Applied, h.State = rev, pb.SyncState_SYNC_STATE_IN_SYNC
		return h
	}
	x.runUntil(time.Minute)
	if x.r.GetState() != pb.Rollout_STATE_SUCCEEDED {
		t.Fatalf("state %s: %s", x.r.GetState(), x.r.GetMessage())
	}
	f := x.r.GetSteps()[1].GetFailures()
	if len(f) != 1 || f[0].GetHost() != "hosts/h2" || !strings.Contains(f[0].GetReason(), "within 10s") || !strings.Contains(f[0].GetReason(), "still at it") {
		t.Errorf("failures %v", f)
	}

	// The same with max_failures 0: halted, both moved steps rolled back.
	x = newSim(t, 4, strategy(1, 3, time.Second, 10*time.Second, 0))
	stuck := true
	x.behave = func(id string, rev int64, h Host) Host {
		if id == "h2" && rev == 2 && stuck {
			h.State = pb.SyncState_SYNC_STATE_APPLYING
			return h
		}
		h.Applied, h.State = rev, pb.SyncState_SYNC_STATE_IN_SYNC
		return h
	}
	x.runUntil(time.Minute)
	if x.r.GetState() != pb.Rollout_STATE_ROLLED_BACK {
		t.Fatalf("state %s: %s", x.r.GetState(), x.r.GetMessage())
	}
	for id, rev := range x.targets {
		if rev != 1 {
			t.Errorf("%s targets %d", id, rev)
		}
	}
}

func TestApplyFailedIsImmediate(t *testing.T) {
	x := newSim(t, 3, strategy(1, 1, time.Second, time.Hour, 0))
	x.behave = func(_ string, rev int64, h Host) Host {
		if rev == 2 {
			h.State, h.LastError = pb.SyncState_SYNC_STATE_FAILED, "render: no"
			return h
		}
		h.Applied, h.State, h.LastError = rev, pb.SyncState_SYNC_STATE_IN_SYNC, ""
		return h
	}
	x.advance()
	x.tick(time.Second)
	if x.r.GetState() != pb.Rollout_STATE_ROLLING_BACK && x.r.GetState() != pb.Rollout_STATE_ROLLED_BACK {
		t.Fatalf("state %s after a failed apply, want a rollback at once", x.r.GetState())
	}
	if r := x.r.GetSteps()[0].GetFailures()[0].GetReason(); !strings.Contains(r, "render: no") {
		t.Errorf("reason %q", r)
	}
}

func TestNoRollback(t *testing.T) {
	s := strategy(2, 2, time.Second, time.Minute, 0)
	s.NoRollback = true
	x := newSim(t, 4, s)
	x.behave = func(id string, rev int64, h Host) Host {
		h.Applied, h.State = rev, pb.SyncState_SYNC_STATE_IN_SYNC
		if id == "h2" {
			h.State, h.Problems = pb.SyncState_SYNC_STATE_DEGRADED, []string{"LINK_DOWN eth2 198.18.2.2"}
		}
		return h
	}
	x.runUntil(time.Minute)
	if x.r.GetState() != pb.Rollout_STATE_FAILED {
		t.Fatalf("state %s", x.r.GetState())
	}
	if x.targets["h1"] != 2 || x.targets["h2"] != 2 || x.targets["h3"] != 1 {
		t.Errorf("targets %v: the canary keeps the target, the rest the old revision", x.targets)
	}
}

func TestPauseResume(t *testing.T) {
	x := newSim(t, 5, strategy(1, 2, 2*time.Second, time.Minute, 0))
	x.advance()
	x.r.State = pb.Rollout_STATE_PAUSED // an operator's pause, mid-canary
	for range 10 {
		x.tick(time.Second)
	}
	if x.r.GetState() != pb.Rollout_STATE_PAUSED || x.r.GetCurrentStep() != 1 || x.r.GetSteps()[1].GetStartTime() != nil {
		t.Fatalf("paused: state %s, step %d; the canary finishes, the next step does not start", x.r.GetState(), x.r.GetCurrentStep())
	}
	if len(x.moves) != 1 {
		t.Fatalf("moves while paused: %v", x.moves)
	}
	x.r.State = pb.Rollout_STATE_RUNNING
	x.runUntil(time.Minute)
	if x.r.GetState() != pb.Rollout_STATE_SUCCEEDED || len(x.moves) != 5 {
		t.Fatalf("after resume: %s, moves %v", x.r.GetState(), x.moves)
	}
}

func TestCancel(t *testing.T) {
	x := newSim(t, 4, strategy(1, 2, 5*time.Second, time.Minute, 0))
	x.advance()
	for range 7 {
		x.tick(time.Second) // the canary passes, batch 1 is moving
	}
	if x.r.GetCurrentStep() != 1 {
		t.Fatalf("step %d", x.r.GetCurrentStep())
	}
	x.take(Cancel(x.r, x.hosts, "alice", x.now))
	x.runUntil(time.Minute)
	if x.r.GetState() != pb.Rollout_STATE_CANCELLED || !strings.Contains(x.r.GetMessage(), "cancelled by alice") {
		t.Fatalf("state %s: %s", x.r.GetState(), x.r.GetMessage())
	}
	for id, rev := range x.targets {
		if rev != 1 {
			t.Errorf("%s targets %d after the cancel", id, rev)
		}
	}
}

func TestHostsComeAndGo(t *testing.T) {
	x := newSim(t, 4, strategy(1, 3, time.Second, 5*time.Second, 0))
	// h4 is disconnected at the start: not planned.
	h := x.hosts["h4"]
	h.Connected = false
	x.hosts["h4"] = h
	x.advance()
	if n := len(slices.Concat(x.r.GetSteps()[0].GetHosts(), x.r.GetSteps()[1].GetHosts())); n != 3 {
		t.Fatalf("%d hosts planned, want the 3 connected", n)
	}
	// h3 leaves the group before its step; h5 joins (not planned).
	delete(x.hosts, "h3")
	x.hosts["h5"] = Host{ID: "h5", Connected: true, State: pb.SyncState_SYNC_STATE_IN_SYNC, Applied: 1}
	x.runUntil(time.Minute)
	if x.r.GetState() != pb.Rollout_STATE_SUCCEEDED {
		t.Fatalf("state %s: %s", x.r.GetState(), x.r.GetMessage())
	}
	if !slices.Contains(x.actions(), "rollouts.host_left") {
		t.Errorf("no host_left event: %v", x.actions())
	}
	if slices.Contains(x.moves, "h3→2") || slices.Contains(x.moves, "h5→2") {
		t.Errorf("moves %v", x.moves)
	}
	// The default moves to the target for everyone, late joiners included.
	if x.targets["h4"] != 2 || x.targets["h5"] != 2 {
		t.Errorf("targets %v", x.targets)
	}

	// A moved host that disconnects and stays away fails at the step timeout.
	x = newSim(t, 2, strategy(1, 1, 10*time.Second, 5*time.Second, 0))
	x.advance()
	x.tick(time.Second)
	h = x.hosts["h1"]
	h.Connected = false
	x.hosts["h1"] = h
	x.runUntil(time.Minute)
	if f := x.r.GetSteps()[0].GetFailures(); len(f) != 1 || !strings.Contains(f[0].GetReason(), "disconnected") {
		t.Errorf("failures %v", f)
	}
}

func TestZeroHosts(t *testing.T) {
	x := newSim(t, 0, nil)
	x.advance()
	if x.r.GetState() != pb.Rollout_STATE_SUCCEEDED || len(x.r.GetSteps()) != 0 {
		t.Fatalf("state %s, %d steps", x.r.GetState(), len(x.r.GetSteps()))
	}
}

func TestCountersRise(t *testing.T) {
	x := newSim(t, 2, strategy(1, 1, 10*time.Second, time.Minute, 0))
	x.behave = func(_ string, rev int64, h Host) Host {
		h.Applied, h.State = rev, pb.SyncState_SYNC_STATE_IN_SYNC
		if rev == 2 {
			h.Bad += 50 // fallbacks pile up at the new revision
		}
		return h
	}
	x.runUntil(time.Minute)
	if x.r.GetState() != pb.Rollout_STATE_ROLLED_BACK {
		t.Fatalf("state %s", x.r.GetState())
	}
	if r := x.r.GetSteps()[0].GetFailures()[0].GetReason(); !strings.Contains(r, "fallbacks") {
		t.Errorf("reason %q", r)
	}
	// A steady rate before the move is tolerated at twice the rate.
	x = newSim(t, 1, strategy(1, 1, 10*time.Second, time.Minute, 0))
	x.r.Baselines = []*pb.HostBaseline{Baseline(x.hosts["h1"])}
	x.now = x.now.Add(100 * time.Second)
	h := x.hosts["h1"]
	h.Bad, h.CountersTime = 100, x.now // 1/s before the move
	x.hosts["h1"] = h
	x.behave = func(_ string, rev int64, h Host) Host {
		h.Applied, h.State = rev, pb.SyncState_SYNC_STATE_IN_SYNC
		return h
	}
	x.advance()
	for x.r.GetState() == pb.Rollout_STATE_RUNNING {
		h := x.hosts["h1"]
		h.Bad++ // still 1/s
		x.hosts["h1"] = h
		x.tick(time.Second)
	}
	if x.r.GetState() != pb.Rollout_STATE_SUCCEEDED {
		t.Fatalf("state %s: %s", x.r.GetState(), x.r.GetSteps()[0].GetFailures())
	}
}
