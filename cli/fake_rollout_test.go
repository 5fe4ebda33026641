package cli

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	mpfleetv1 "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
)

// fakeRollouts is an in-memory RolloutService. CreateRollout records the
// request and stores a PENDING rollout; WatchRollout streams a scripted
// sequence; pause, resume and cancel flip the state.
type fakeRollouts struct {
	mpfleetv1.UnimplementedRolloutServiceServer

	groups *fakeGroups

	mu       sync.Mutex
	rollouts []*mpfleetv1.Rollout // in creation order
	creates  []*mpfleetv1.CreateRolloutRequest
	controls []string // "pause rollouts/r1 why", in order
	// watches holds the states WatchRollout sends, by rollout name; a
	// rollout with none gets its stored state.
	watches map[string][]*mpfleetv1.Rollout
	// With block, WatchRollout keeps the stream open after sending, and
	// closes sent.
	block bool
	sent  chan struct{}
}

// put stores a rollout (test setup).
func (f *fakeRollouts) put(r *mpfleetv1.Rollout) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rollouts = append(f.rollouts, r)
}

func (f *fakeRollouts) find(name string) (*mpfleetv1.Rollout, error) {
	for _, r := range f.rollouts {
		if r.GetName() == name {
			return r, nil
		}
	}
	return nil, status.Errorf(codes.NotFound, "%s not found", name)
}

func (f *fakeRollouts) CreateRollout(ctx context.Context, req *mpfleetv1.CreateRolloutRequest) (*mpfleetv1.Rollout, error) {
	g, err := f.groups.GetGroup(ctx, &mpfleetv1.GetGroupRequest{Name: req.GetRollout().GetGroup()})
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.creates = append(f.creates, req)
	id := req.GetRolloutId()
	if id == "" {
		id = fmt.Sprintf("r%d", len(f.creates))
	}
	target := req.GetRollout().GetTargetRevision()
	if target == 0 {
		target = g.GetPolicyRevision()
	}
	if target > g.GetPolicyRevision() {
		return nil, status.Errorf(codes.InvalidArgument, "group %s has no revision %d", g.GetName(), target)
	}
	r := &mpfleetv1.Rollout{
		Name: "rollouts/" + id, Group: g.GetName(), FromRevision: g.GetDeployedRevision(), TargetRevision: target,
		Strategy: req.GetRollout().GetStrategy(), State: mpfleetv1.Rollout_STATE_PENDING, Etag: "1",
		CreateTime: timestamppb.New(testNow), UpdateTime: timestamppb.New(testNow),
		Actor: "anonymous@127.0.0.1", Reason: req.GetReason(),
	}
	f.rollouts = append(f.rollouts, r)
	return r, nil
}

func (f *fakeRollouts) GetRollout(_ context.Context, req *mpfleetv1.GetRolloutRequest) (*mpfleetv1.Rollout, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.find(req.GetName())
}

func (f *fakeRollouts) ListRollouts(_ context.Context, req *mpfleetv1.ListRolloutsRequest) (*mpfleetv1.ListRolloutsResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var match []*mpfleetv1.Rollout
	for _, r := range slices.Backward(f.rollouts) {
		if req.GetGroup() == "" || r.GetGroup() == req.GetGroup() {
			match = append(match, r)
		}
	}
	items, next, err := page(match, req.GetPageSize(), req.GetPageToken())
	return &mpfleetv1.ListRolloutsResponse{Rollouts: items, NextPageToken: next}, err
}

// control records a pause, resume or cancel and moves the rollout from one
// of the states in from to state to.
func (f *fakeRollouts) control(verb, name, reason string, to mpfleetv1.Rollout_State, from ...mpfleetv1.Rollout_State) (*mpfleetv1.Rollout, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.controls = append(f.controls, verb+" "+name+" "+reason)
	r, err := f.find(name)
	if err != nil {
		return nil, err
	}
	if !slices.Contains(from, r.GetState()) {
		return nil, status.Errorf(codes.FailedPrecondition, "%s is %s", name, r.GetState())
	}
	r.State = to
	r.UpdateTime = timestamppb.New(testNow)
	return proto.Clone(r).(*mpfleetv1.Rollout), nil
}

func (f *fakeRollouts) PauseRollout(_ context.Context, req *mpfleetv1.PauseRolloutRequest) (*mpfleetv1.Rollout, error) {
	return f.control("pause", req.GetName(), req.GetReason(), mpfleetv1.Rollout_STATE_PAUSED,
		mpfleetv1.Rollout_STATE_PENDING, mpfleetv1.Rollout_STATE_RUNNING)
}

func (f *fakeRollouts) ResumeRollout(_ context.Context, req *mpfleetv1.ResumeRolloutRequest) (*mpfleetv1.Rollout, error) {
	return f.control("resume", req.GetName(), req.GetReason(), mpfleetv1.Rollout_STATE_RUNNING, mpfleetv1.Rollout_STATE_PAUSED)
}

func (f *fakeRollouts) CancelRollout(_ context.Context, req *mpfleetv1.CancelRolloutRequest) (*mpfleetv1.Rollout, error) {
	return f.control("cancel", req.GetName(), req.GetReason(), mpfleetv1.Rollout_STATE_ROLLING_BACK,
		mpfleetv1.Rollout_STATE_PENDING, mpfleetv1.Rollout_STATE_RUNNING, mpfleetv1.Rollout_STATE_PAUSED)
}

func (f *fakeRollouts) WatchRollout(req *mpfleetv1.WatchRolloutRequest, stream grpc.ServerStreamingServer[mpfleetv1.Rollout]) error {
	f.mu.Lock()
	seq, ok := f.watches[req.GetName()]
	if !ok {
		r, err := f.find(req.GetName())
		if err != nil {
			f.mu.Unlock()
			return err
		}
		seq = []*mpfleetv1.Rollout{r}
	}
	block := f.block
	f.mu.Unlock()
	for _, r := range seq {
		if err := stream.Send(r); err != nil {
			return err
		}
	}
	if block {
		close(f.sent)
		<-stream.Context().Done()
	}
	return nil
}

// rolloutStates returns the states of a rollout of group web from revision 1
// to 2 over 4 hosts: a canary (h1), then a batch of 3 (h2, h3, h4). The
// last state is end; with a failed end, h3 fails in the batch and the
// moved hosts go back.
func rolloutStates(end mpfleetv1.Rollout_State) []*mpfleetv1.Rollout {
	at := func(s int) *timestamppb.Timestamp {
		return timestamppb.New(testNow.Add(time.Duration(s-120) * time.Second))
	}
	base := func(state mpfleetv1.Rollout_State, cur int32, steps ...*mpfleetv1.RolloutStep) *mpfleetv1.Rollout {
		return &mpfleetv1.Rollout{
			Name: "rollouts/r1", Group: "groups/web", FromRevision: 1, TargetRevision: 2, State: state, CurrentStep: cur,
			Strategy:   &mpfleetv1.RolloutStrategy{CanaryCount: 1, BatchPercent: 75, MaxFailures: 0},
			CreateTime: at(0), Steps: steps,
		}
	}
	canary := func(done bool) *mpfleetv1.RolloutStep {
		s := &mpfleetv1.RolloutStep{Index: 0, Hosts: []string{"hosts/h1"}, StartTime: at(1)}
		if done {
			s.SucceededHosts, s.EndTime = []string{"hosts/h1"}, at(20)
		}
		return s
	}
	batch := func(ok []string, failed ...string) *mpfleetv1.RolloutStep {
		s := &mpfleetv1.RolloutStep{Index: 1, Hosts: []string{"hosts/h2", "hosts/h3", "hosts/h4"}, SucceededHosts: ok, FailedHosts: failed}
		for _, h := range failed {
			s.Failures = append(s.Failures, &mpfleetv1.HostFailure{Host: h, Reason: "not IN_SYNC within 5m: add endpoint: ERANGE"})
		}
		if len(ok) > 0 || len(failed) > 0 {
			s.StartTime = at(21)
		}
		return s
	}
	states := []*mpfleetv1.Rollout{
		base(mpfleetv1.Rollout_STATE_PENDING, 0),
		base(mpfleetv1.Rollout_STATE_RUNNING, 0, canary(false), batch(nil)),
		base(mpfleetv1.Rollout_STATE_RUNNING, 0, canary(false), batch(nil)), // an update that changes nothing shown
		base(mpfleetv1.Rollout_STATE_RUNNING, 1, canary(true), batch([]string{"hosts/h2"})),
	}
	var last *mpfleetv1.Rollout
	switch end {
	case mpfleetv1.Rollout_STATE_SUCCEEDED:
		last = base(end, 1, canary(true), batch([]string{"hosts/h2", "hosts/h3", "hosts/h4"}))
	default:
		failing := base(mpfleetv1.Rollout_STATE_ROLLING_BACK, 1, canary(true), batch([]string{"hosts/h2"}, "hosts/h3"))
		failing.Message = "1 host failed in batch 1 (max failures 0): rolling back 2 moved hosts"
		states = append(states, failing)
		last = proto.Clone(failing).(*mpfleetv1.Rollout)
		last.State = end
		last.Message = "1 host failed in batch 1 (max failures 0); 2 moved hosts are back on revision 1"
	}
	last.EndTime = timestamppb.New(testNow)
	last.Steps[1].EndTime = last.EndTime
	return append(states, last)
}
