package controller_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// reportingAgent is an in-memory agent that answers every desired
// configuration with the report behave makes of it, and records the
// revisions it was sent.
type reportingAgent struct {
	id     string
	stream pb.AgentService_ConnectClient
	cancel context.CancelFunc
	done   chan struct{}

	mu   sync.Mutex
	revs []int64
}

func healthyAt(d *pb.DesiredConfig) *pb.AgentReport {
	return &pb.AgentReport{SyncState: pb.SyncState_SYNC_STATE_IN_SYNC, Group: d.GetGroup(), AppliedRevision: d.GetRevision(),
		Health: &pb.MptcpHealth{ReadTime: timestamppb.Now(), Paths: []*pb.PathStatus{{Interface: "eth1", Address: "198.18.1.2", State: pb.PathState_PATH_STATE_OK}}}}
}

func connectReporting(t *testing.T, e *env, id string, behave func(*pb.DesiredConfig) *pb.AgentReport) *reportingAgent {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := e.agents.Connect(ctx)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	a := &reportingAgent{id: id, stream: stream, cancel: cancel, done: make(chan struct{})}
	if err := stream.Send(&pb.ConnectRequest{Kind: &pb.ConnectRequest_Hello{Hello: &pb.AgentHello{
		HostId: id, Labels: map[string]string{"role": "web"}, AgentVersion: "test"}}}); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(a.done)
		for {
			m, err := stream.Recv()
			if err != nil {
				return
			}
			d := m.GetDesired()
			if d == nil || d.GetAssignment() != pb.DesiredConfig_ASSIGNMENT_MANAGED {
				continue
			}
			a.mu.Lock()
			a.revs = append(a.revs, d.GetRevision())
			a.mu.Unlock()
			_ = stream.Send(&pb.ConnectRequest{Kind: &pb.ConnectRequest_Report{Report: behave(d)}})
		}
	}()
	t.Cleanup(func() { cancel(); <-a.done })
	return a
}

func (a *reportingAgent) revisions() []int64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.revs)
}

func strategyGroup() *pb.Group {
	g := webGroup()
	g.RolloutStrategy = &pb.RolloutStrategy{CanaryCount: 1, BatchSize: 2, BakeTime: durationpb.New(300 * time.Millisecond),
		StepTimeout: durationpb.New(10 * time.Second)}
	return g
}

// fleetOf creates the group and n agents, and waits until every host runs
// revision 1.
func fleetOf(t *testing.T, e *env, n int, behave func(*pb.DesiredConfig) *pb.AgentReport) (*pb.Group, []*reportingAgent) {
	t.Helper()
	g, err := e.groups.CreateGroup(ctxT(t), &pb.CreateGroupRequest{GroupId: "web", Group: strategyGroup()})
	if err != nil {
		t.Fatal(err)
	}
	var as []*reportingAgent
	for i := range n {
		as = append(as, connectReporting(t, e, fmt.Sprintf("web-%d", i+1), behave))
	}
	for i := range n {
		waitHost(t, e, fmt.Sprintf("hosts/web-%d", i+1), func(h *pb.Host) bool {
			return h.GetSyncState() == pb.SyncState_SYNC_STATE_IN_SYNC && h.GetAppliedRevision() == 1
		})
	}
	return g, as
}

func waitRollout(t *testing.T, e *env, name string, done func(*pb.Rollout) bool) *pb.Rollout {
	t.Helper()
	rc := pb.NewRolloutServiceClient(e.conn)
	stream, err := rc.WatchRollout(ctxT(t), &pb.WatchRolloutRequest{Name: name})
	if err != nil {
		t.Fatal(err)
	}
	var last *pb.Rollout
	for {
		r, err := stream.Recv()
		if err != nil {
			t.Fatalf("watch %s ended (%v); last %v", name, err, last)
		}
		last = r
		if done(r) {
			return r
		}
	}
}

func changePolicy(t *testing.T, e *env, g *pb.Group, subflows uint32) *pb.Group {
	t.Helper()
	g = proto.CloneOf(g)
	g.Policy.Limits.Subflows = proto.Uint32(subflows)
	out, err := e.groups.UpdateGroup(ctxT(t), &pb.UpdateGroupRequest{Group: g, Reason: "more subflows"})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestRolloutGood: a policy change of a group with a strategy moves a canary,
// then batches, each after the previous step baked; every host ends on the
// new revision; the audit log tells the story.
func TestRolloutGood(t *testing.T) {
	e := start(t)
	g, as := fleetOf(t, e, 6, healthyAt)
	g = changePolicy(t, e, g, 4)
	if g.GetActiveRollout() == "" || g.GetPolicyRevision() != 2 || g.GetDeployedRevision() != 1 {
		t.Fatalf("after the update: active %q, revision %d, deployed %d", g.GetActiveRollout(), g.GetPolicyRevision(), g.GetDeployedRevision())
	}
	// A second change while it runs is refused, naming it.
	_, err := e.groups.UpdateGroup(ctxT(t), &pb.UpdateGroupRequest{Group: func() *pb.Group { x := proto.CloneOf(g); x.Policy.Limits.Subflows = proto.Uint32(5); return x }()})
	if st := wantCode(t, err, codes.FailedPrecondition); !strings.Contains(st.Message(), g.GetActiveRollout()) {
		t.Errorf("refusal %q does not name the rollout", st.Message())
	}
	r := waitRollout(t, e, g.GetActiveRollout(), func(r *pb.Rollout) bool { return r.GetState() == pb.Rollout_STATE_SUCCEEDED })
	if len(r.GetSteps()) != 4 || r.GetFromRevision() != 1 || r.GetTargetRevision() != 2 {
		t.Fatalf("rollout %v", r)
	}
	for i := 1; i < len(r.GetSteps()); i++ {
		if r.GetSteps()[i].GetStartTime().AsTime().Before(r.GetSteps()[i-1].GetEndTime().AsTime()) {
			t.Errorf("step %d started before step %d ended", i, i-1)
		}
	}
	for _, a := range as {
		if revs := a.revisions(); !slices.Equal(revs, []int64{1, 2}) {
			t.Errorf("%s was sent revisions %v, want [1 2]", a.id, revs)
		}
	}
	gg, err := e.groups.GetGroup(ctxT(t), &pb.GetGroupRequest{Name: "groups/web"})
	if err != nil || gg.GetDeployedRevision() != 2 || gg.GetActiveRollout() != "" {
		t.Fatalf("group after: %v, %v", gg, err)
	}
	h := waitHost(t, e, "hosts/web-6", func(h *pb.Host) bool { return h.GetDesiredRevision() == 2 })
	if h.GetAppliedRevision() != 2 {
		t.Errorf("web-6 applied %d", h.GetAppliedRevision())
	}
	evs, err := e.audit.ListAuditEvents(ctxT(t), &pb.ListAuditEventsRequest{PageSize: 1000})
	if err != nil {
		t.Fatal(err)
	}
	var actions []string
	for _, ev := range evs.GetEvents() {
		if strings.HasPrefix(ev.GetAction(), "rollouts.") {
			actions = append(actions, ev.GetAction())
		}
	}
	for _, want := range []string{"rollouts.create", "rollouts.step_started", "rollouts.host_moved", "rollouts.host_succeeded", "rollouts.succeeded"} {
		if !slices.Contains(actions, want) {
			t.Errorf("audit has no %s: %v", want, actions)
		}
	}
}

// TestRolloutHarmful: the canary reports a new problem at the new revision;
// the rollout halts and rolls it back; no other host is ever sent it.
func TestRolloutHarmful(t *testing.T) {
	e := start(t)
	g, as := fleetOf(t, e, 4, func(d *pb.DesiredConfig) *pb.AgentReport {
		r := healthyAt(d)
		if d.GetRevision() == 2 {
			r.SyncState = pb.SyncState_SYNC_STATE_DEGRADED
			r.Health.Paths[0].State = pb.PathState_PATH_STATE_FAILED
			r.Problems = []*pb.HostProblem{{Code: pb.HostProblem_CODE_PATH_FAILED, Interface: "eth1", Address: "198.18.1.2", Message: "no MPTCP connection"}}
		}
		return r
	})
	g = changePolicy(t, e, g, 4)
	r := waitRollout(t, e, g.GetActiveRollout(), func(r *pb.Rollout) bool { return !activeState(r.GetState()) })
	if r.GetState() != pb.Rollout_STATE_ROLLED_BACK || !strings.Contains(r.GetMessage(), "PATH_FAILED") {
		t.Fatalf("rollout %s: %s", r.GetState(), r.GetMessage())
	}
	moved := 0
	for _, a := range as {
		revs := a.revisions()
		if slices.Contains(revs, 2) {
			moved++
			if !slices.Equal(revs, []int64{1, 2, 1}) {
				t.Errorf("canary %s was sent %v, want [1 2 1]", a.id, revs)
			}
		}
	}
	if moved != 1 {
		t.Errorf("%d hosts were sent the harmful revision, want only the canary", moved)
	}
	gg, _ := e.groups.GetGroup(ctxT(t), &pb.GetGroupRequest{Name: "groups/web"})
	if gg.GetDeployedRevision() != 1 || gg.GetPolicyRevision() != 2 {
		t.Errorf("group: deployed %d, revision %d", gg.GetDeployedRevision(), gg.GetPolicyRevision())
	}
}

func activeState(s pb.Rollout_State) bool {
	switch s {
	case pb.Rollout_STATE_PENDING, pb.Rollout_STATE_RUNNING, pb.Rollout_STATE_PAUSED, pb.Rollout_STATE_ROLLING_BACK:
		return true
	}
	return false
}

// TestRolloutPauseResumeCancel: pause holds between steps, resume finishes;
// a rollback by CreateRollout to an old revision, cancelled, moves its
// canary back.
func TestRolloutPauseResumeCancel(t *testing.T) {
	e := start(t)
	rc := pb.NewRolloutServiceClient(e.conn)
	g, as := fleetOf(t, e, 3, healthyAt)
	g = changePolicy(t, e, g, 4)
	if _, err := rc.PauseRollout(ctxT(t), &pb.PauseRolloutRequest{Name: g.GetActiveRollout(), Reason: "look first"}); err != nil {
		t.Fatal(err)
	}
	// The canary may finish; no batch starts while paused.
	r := waitRollout(t, e, g.GetActiveRollout(), func(r *pb.Rollout) bool {
		return r.GetState() == pb.Rollout_STATE_PAUSED && (len(r.GetSteps()) == 0 || r.GetCurrentStep() >= 1)
	})
	before := 0
	for _, a := range as {
		if slices.Contains(a.revisions(), 2) {
			before++
		}
	}
	if before > 1 {
		t.Fatalf("%d hosts moved under a pause", before)
	}
	if _, err := rc.ResumeRollout(ctxT(t), &pb.ResumeRolloutRequest{Name: r.GetName(), Etag: "1"}); err == nil {
		t.Fatal("resume with a wrong etag succeeded")
	}
	if _, err := rc.ResumeRollout(ctxT(t), &pb.ResumeRolloutRequest{Name: r.GetName()}); err != nil {
		t.Fatal(err)
	}
	waitRollout(t, e, r.GetName(), func(r *pb.Rollout) bool { return r.GetState() == pb.Rollout_STATE_SUCCEEDED })

	// Roll back to revision 1, then cancel it mid-way.
	slow := &pb.RolloutStrategy{CanaryCount: 1, BatchSize: 1, BakeTime: durationpb.New(time.Hour), StepTimeout: durationpb.New(time.Hour)}
	back, err := rc.CreateRollout(ctxT(t), &pb.CreateRolloutRequest{Rollout: &pb.Rollout{Group: "groups/web", TargetRevision: 1, Strategy: slow}, Reason: "back"})
	if err != nil {
		t.Fatal(err)
	}
	if back.GetFromRevision() != 2 || back.GetTargetRevision() != 1 {
		t.Fatalf("rollback rollout %v", back)
	}
	waitRollout(t, e, back.GetName(), func(r *pb.Rollout) bool { return len(r.GetMovedHosts()) == 1 })
	if _, err := rc.CancelRollout(ctxT(t), &pb.CancelRolloutRequest{Name: back.GetName(), Reason: "changed my mind"}); err != nil {
		t.Fatal(err)
	}
	r = waitRollout(t, e, back.GetName(), func(r *pb.Rollout) bool { return !activeState(r.GetState()) })
	if r.GetState() != pb.Rollout_STATE_CANCELLED {
		t.Fatalf("state %s: %s", r.GetState(), r.GetMessage())
	}
	// Each agent is sent revision 2 again (the cancel's move may still be
	// on its way when the rollout reads CANCELLED: the canary had not yet
	// reported revision 1).
	for _, a := range as {
		deadline := time.Now().Add(10 * time.Second)
		for revs := a.revisions(); revs[len(revs)-1] != 2; revs = a.revisions() {
			if time.Now().After(deadline) {
				t.Fatalf("%s ends on %v", a.id, revs)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	list, err := rc.ListRollouts(ctxT(t), &pb.ListRolloutsRequest{Group: "groups/web"})
	if err != nil || len(list.GetRollouts()) != 2 || list.GetRollouts()[0].GetName() != back.GetName() {
		t.Fatalf("list: %v, %v", list, err)
	}
	// Nothing to roll out: the hosts run revision 2 already.
	_, err = rc.CreateRollout(ctxT(t), &pb.CreateRolloutRequest{Rollout: &pb.Rollout{Group: "groups/web", TargetRevision: 2}})
	wantCode(t, err, codes.FailedPrecondition)
	_, err = rc.CreateRollout(ctxT(t), &pb.CreateRolloutRequest{Rollout: &pb.Rollout{Group: "groups/web", TargetRevision: 9}})
	wantCode(t, err, codes.NotFound)
	_, err = rc.CreateRollout(ctxT(t), &pb.CreateRolloutRequest{Rollout: &pb.Rollout{Group: "groups/web",
		Strategy: &pb.RolloutStrategy{CanaryPercent: 101}}})
	wantCode(t, err, codes.InvalidArgument)
}
