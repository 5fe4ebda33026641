package store_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/mpfleet/mpfleet/internal/etcdtest"
	"github.com/mpfleet/mpfleet/internal/store"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
)

// A watch that starts at a compacted revision must end with ErrCompacted (so
// Run re-lists) instead of silently resuming from the compact revision; the
// re-list then has every change.
func TestWatchFromCompactedRevisionRelists(t *testing.T) {
	_, cli := etcdtest.Embedded(t)
	s := store.New(cli, "/t/")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, _, err := s.CreateGroup(ctx, "a", &pb.Group{}, store.Meta{}); err != nil {
		t.Fatal(err)
	}
	c := store.NewCache(s, nil)
	rev, err := c.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.CreateGroup(ctx, "b", &pb.Group{}, store.Meta{}); err != nil {
		t.Fatal(err)
	}
	_, rev2, err := s.CreateGroup(ctx, "c", &pb.Group{}, store.Meta{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Compact(ctx, rev2); err != nil {
		t.Fatal(err)
	}
	err = c.Watch(ctx, rev+1)
	if !errors.Is(err, rpctypes.ErrCompacted) {
		t.Fatalf("watch from compacted revision: err = %v, want ErrCompacted", err)
	}
	if _, err := c.List(ctx); err != nil {
		t.Fatal(err)
	}
	if c.Groups()["b"] == nil || c.Groups()["c"] == nil || c.Revision() < rev2 {
		t.Fatalf("re-list missed group b: %v at %d", c.Groups(), c.Revision())
	}
}
