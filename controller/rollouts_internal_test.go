package controller

import (
	"context"
	"testing"

	"github.com/mpfleet/mpfleet/internal/etcdtest"
	"github.com/mpfleet/mpfleet/internal/rollout"
	"github.com/mpfleet/mpfleet/internal/store"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// TestTransitionReadsAgain: a transition without an etag whose rollout the
// engine writes between the read and the write reads it again and
// succeeds; with the etag it read, it fails ABORTED and writes nothing.
func TestTransitionReadsAgain(t *testing.T) {
	_, cli := etcdtest.Embedded(t)
	st := store.New(cli, "/mpfleet/v1/")
	cache := store.NewCache(st, nil)
	s := &rolloutService{c: New(st, cache, Options{})}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = cache.Run(ctx) }()
	defer func() { cancel(); <-done }()
	r0 := &pb.Rollout{Name: "rollouts/r1", Group: "groups/web", State: pb.Rollout_STATE_RUNNING, Etag: "e1"}
	if _, err := st.WriteRollout(ctx, store.RolloutWrite{RolloutID: "r1", Rollout: r0, Group: "web", TargetsRev: store.NoCompare}); err != nil {
		t.Fatal(err)
	}
	// The engine moves the rollout, once, while the first attempt works.
	calls := 0
	pause := func(r *pb.Rollout, _ string) (rollout.Result, error) {
		calls++
		if calls == 1 {
			moved := proto.CloneOf(r)
			moved.Message = "the engine moved it"
			if _, err := st.WriteRollout(ctx, store.RolloutWrite{RolloutID: "r1", Rollout: moved, Group: "web", RolloutRev: store.NoCompare, TargetsRev: store.NoCompare}); err != nil {
				t.Fatal(err)
			}
		}
		r.State = pb.Rollout_STATE_PAUSED
		return rollout.Result{Rollout: r}, nil
	}
	got, err := s.transition(ctx, "rollouts/r1", "", "test", "rollouts.pause", pause)
	if err != nil || got.GetState() != pb.Rollout_STATE_PAUSED || got.GetMessage() != "the engine moved it" {
		t.Fatalf("transition without an etag = %v, %v; want PAUSED, on top of the engine's write", got, err)
	}
	if calls != 2 {
		t.Errorf("the transition ran %d times, want 2 (read again once)", calls)
	}

	// With an etag, a change under it is the caller's to see.
	calls = 0
	r, _, err := st.GetRollout(ctx, "r1")
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.transition(ctx, "rollouts/r1", r.GetEtag(), "test", "rollouts.pause", pause)
	if status.Code(err) != codes.Aborted {
		t.Errorf("transition with the etag it read, moved under it: %v, want ABORTED", err)
	}
	if calls != 1 {
		t.Errorf("the transition with an etag ran %d times, want 1", calls)
	}
}
