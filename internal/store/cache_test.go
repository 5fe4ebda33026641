package store_test

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/mpfleet/mpfleet/internal/store"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"google.golang.org/protobuf/proto"
)

func runCache(t *testing.T, s *store.Store) *store.Cache {
	t.Helper()
	c := store.NewCache(s, slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError})))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = c.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return c
}

func TestCacheFollowsWrites(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	c := runCache(t, s)
	_, preRev, err := s.CreateGroup(ctx, "pre", group(1), meta)
	if err != nil {
		t.Fatal(err)
	}
	// Subscribe once the cache holds etcd's state (a list ends earlier
	// subscriptions with ErrResync).
	if err := c.WaitRevision(ctx, preRev); err != nil {
		t.Fatal(err)
	}
	sub, groups, _, _ := c.Subscribe(16)
	defer sub.Close()
	if groups["pre"] == nil {
		t.Fatal("snapshot lacks the group created before subscribing")
	}

	g, rev, err := s.CreateGroup(ctx, "web", group(2), meta)
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := c.WaitRevision(wctx, rev); err != nil {
		t.Fatal(err)
	}
	if got := c.Groups()["web"]; got == nil || got.Etag != g.Etag {
		t.Fatalf("cache has %v, want etag %s", got, g.Etag)
	}
	if c.Groups()["pre"] == nil {
		t.Fatal("cache lacks the group created before it subscribed")
	}
	// The subscriber sees the group and its audit event.
	var sawGroup, sawAudit bool
	for !sawGroup || !sawAudit {
		select {
		case ev := <-sub.C():
			sawGroup = sawGroup || ev.GroupID == "web"
			sawAudit = sawAudit || (ev.Audit != nil && ev.Audit.Action == "groups.create" && ev.Audit.Resource == "groups/web")
		case <-wctx.Done():
			t.Fatalf("subscriber saw group=%v audit=%v", sawGroup, sawAudit)
		}
	}
	if _, err := s.DeleteGroup(ctx, "web", "", meta); err != nil {
		t.Fatal(err)
	}
	for {
		select {
		case ev := <-sub.C():
			if ev.GroupID == "web" && ev.Group == nil {
				if c.Groups()["web"] != nil {
					t.Fatal("deleted group still cached")
				}
				return
			}
		case <-wctx.Done():
			t.Fatal("no delete event")
		}
	}
}

// A watch broken by compaction re-lists at the current revision: the cache
// ends up with every change, and subscribers are told to re-snapshot.
func TestCacheRelistsAfterCompaction(t *testing.T) {
	s, cli := newStore(t)
	ctx := context.Background()
	c := runCache(t, s)
	_, rev, err := s.CreateGroup(ctx, "a", group(1), meta)
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := c.WaitRevision(wctx, rev); err != nil {
		t.Fatal(err)
	}
	sub, _, _, _ := c.Subscribe(1)
	defer sub.Close()
	// Many writes, then compact beyond them all: a watcher that fell behind
	// can only recover by re-listing. A subscriber with a buffer of 1 is dropped.
	for i := 0; i < 5; i++ {
		if _, _, err := s.UpdateGroup(ctx, "a", "", func(g *pb.Group) (*pb.Group, error) {
			g.Policy.Limits.Subflows = proto.Uint32(uint32(i + 2))
			return g, nil
		}, meta); err != nil {
			t.Fatal(err)
		}
	}
	_, rev, err = s.CreateGroup(ctx, "b", group(1), meta)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Compact(ctx, rev); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitRevision(wctx, rev); err != nil {
		t.Fatal(err)
	}
	if c.Groups()["b"] == nil || c.Groups()["a"].GetPolicyRevision() != 6 {
		t.Fatalf("cache after compaction: %v", c.Groups())
	}
	select {
	case <-sub.Done():
		if err := sub.Err(); !errors.Is(err, store.ErrLagged) && !errors.Is(err, store.ErrResync) {
			t.Fatalf("subscription ended with %v", err)
		}
	case <-wctx.Done():
		t.Fatal("slow subscriber was not dropped")
	}
}

// TestCacheMarksTheEndOfATransaction: the events of one transaction (here a
// policy change and the rollout and host targets it starts) reach a
// subscriber together, the last one marked, so that it never acts on half
// of one.
func TestCacheMarksTheEndOfATransaction(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	c := runCache(t, s)
	_, rev, err := s.CreateGroup(ctx, "web", group(1), meta)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.WaitRevision(ctx, rev); err != nil {
		t.Fatal(err)
	}
	sub, _, _, _ := c.Subscribe(16)
	defer sub.Close()
	r := &pb.Rollout{Name: "rollouts/r1", Group: "groups/web", FromRevision: 1, TargetRevision: 2, State: pb.Rollout_STATE_PENDING}
	if _, err := s.WriteRollout(ctx, store.RolloutWrite{RolloutID: "r1", Rollout: r, Group: "web",
		Targets: &pb.HostTargets{DefaultRevision: 1, Rollout: "rollouts/r1"}}); err != nil {
		t.Fatal(err)
	}
	var got []store.Event
	for len(got) == 0 || !got[len(got)-1].Last {
		select {
		case ev := <-sub.C():
			got = append(got, ev)
		case <-time.After(10 * time.Second):
			t.Fatalf("no event marked Last; got %d", len(got))
		}
	}
	var rollout, targets bool
	for i, ev := range got {
		rollout = rollout || ev.RolloutID == "r1"
		targets = targets || ev.TargetsGroup == "web"
		if ev.Last != (i == len(got)-1) {
			t.Errorf("event %d of %d: Last=%v", i, len(got), ev.Last)
		}
	}
	if !rollout || !targets {
		t.Errorf("the transaction's events %+v lack the rollout or the targets", got)
	}
}
