package store_test

import (
	"context"
	"testing"
	"time"

	"github.com/mpfleet/mpfleet/internal/store"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"google.golang.org/protobuf/proto"
)

// TestCacheHoldsWrittenStatusOnce: a status this store wrote is, in its
// cache, the very object the writer gave; one another store wrote (another
// replica) is decoded, and so is one whose claim was refused (never
// written).
func TestCacheHoldsWrittenStatusOnce(t *testing.T) {
	s, cli := newStore(t)
	other := store.New(cli, "/test/") // another replica's store
	c := runCache(t, s)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	seen := func() {
		t.Helper()
		resp, err := cli.Get(ctx, "rev")
		if err != nil {
			t.Fatal(err)
		}
		if err := c.WaitRevision(ctx, resp.Header.Revision); err != nil {
			t.Fatal(err)
		}
	}
	host := func(id string) *pb.Host {
		t.Helper()
		h, _, ok := c.Host(id)
		if !ok {
			t.Fatalf("cache lacks host %s", id)
		}
		return h
	}
	lease, err := cli.Grant(ctx, 60)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := other.ClaimSession(ctx, "held", "b", lease.ID); err != nil {
		t.Fatal(err)
	}

	mine := &pb.Host{Name: store.HostName("h1"), AgentVersion: "v1", SyncState: pb.SyncState_SYNC_STATE_IN_SYNC}
	refused := &pb.Host{Name: store.HostName("held"), AgentVersion: "refused"}
	res, err := s.WriteHosts(ctx, "a", []store.HostWrite{{ID: "h1", Status: mine}, {ID: "held", Claim: true, Lease: lease.ID, Status: refused}})
	if err != nil || res[1].Err == nil {
		t.Fatalf("write: %v, claim of held: %v (want refused)", err, res)
	}
	seen()
	if h := host("h1"); h != mine {
		t.Errorf("cache holds a copy of the status written (%v), not the status itself", h)
	}
	if _, _, ok := c.Host("held"); ok {
		t.Error("cache holds the status of a refused claim")
	}

	theirs := &pb.Host{Name: store.HostName("h1"), AgentVersion: "v2"}
	if _, err := other.WriteHosts(ctx, "b", []store.HostWrite{{ID: "h1", Status: theirs}}); err != nil {
		t.Fatal(err)
	}
	seen()
	if h := host("h1"); h == theirs || h == mine || !proto.Equal(h, theirs) {
		t.Errorf("after another replica's write the cache holds %v (theirs %p, mine %p, got %p), want a decoded copy of theirs", h, theirs, mine, h)
	}

	// Written again, the same bytes as before: the cache takes the object
	// written this time.
	again := proto.Clone(mine).(*pb.Host)
	if _, err := s.WriteHosts(ctx, "a", []store.HostWrite{{ID: "h1", Status: again}}); err != nil {
		t.Fatal(err)
	}
	seen()
	if h := host("h1"); h != again {
		t.Errorf("cache holds %p, want the status written last (%p)", h, again)
	}
}
