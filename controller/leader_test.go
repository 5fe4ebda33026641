package controller_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/mpfleet/mpfleet/controller"
	"github.com/mpfleet/mpfleet/internal/store"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
)

// The elected leader prunes the audit log to the retention limit; what is
// left still verifies, from the oldest retained event.
func TestAuditRetention(t *testing.T) {
	e := startWith(t, controller.Options{Retention: controller.Retention{MaxEvents: 5, Interval: 50 * time.Millisecond}})
	ctx := ctxT(t)
	for i := 0; i < 12; i++ {
		if _, err := e.groups.CreateGroup(ctx, &pb.CreateGroupRequest{GroupId: fmt.Sprintf("g%d", i), Group: webGroup()}); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := e.audit.ListAuditEvents(ctx, &pb.ListAuditEventsRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.Events) == 5 && resp.Events[0].Sequence == 8 && resp.Events[4].Sequence == 12 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("retention did not prune to 5 events: %d left", len(resp.Events))
		}
		time.Sleep(50 * time.Millisecond)
	}
	v, err := e.audit.VerifyAuditLog(ctx, &pb.VerifyAuditLogRequest{})
	if err != nil || !v.Ok || v.FirstSequence != 8 || v.EventsChecked != 5 {
		t.Fatalf("verify after pruning = %v, %v", v, err)
	}
	// New events continue the chain.
	if _, err := e.groups.DeleteGroup(ctx, &pb.DeleteGroupRequest{Name: "groups/g0"}); err != nil {
		t.Fatal(err)
	}
	if v, _ := e.audit.VerifyAuditLog(ctx, &pb.VerifyAuditLogRequest{}); !v.Ok || v.LastSequence != 13 {
		t.Fatalf("verify after a new event = %v", v)
	}
}

// A leader-only write with a stale fence (the leader key of a lost term) is
// refused and deletes nothing.
func TestPruneFenced(t *testing.T) {
	e := start(t)
	ctx := ctxT(t)
	for i := 0; i < 3; i++ {
		if _, err := e.groups.CreateGroup(ctx, &pb.CreateGroupRequest{GroupId: fmt.Sprintf("g%d", i), Group: webGroup()}); err != nil {
			t.Fatal(err)
		}
	}
	st := store.New(e.etcd, "/mpfleet/v1/")
	_, err := st.PruneAudit(context.Background(), store.LeaderFence(st.ElectionPrefix()+"/stale", 1), 2)
	if !errors.Is(err, store.ErrNotLeader) {
		t.Fatalf("prune with a stale fence: %v, want ErrNotLeader", err)
	}
	if first, last, _ := st.AuditRange(ctx); first != 1 || last != 3 {
		t.Fatalf("audit range after refused prune = %d..%d", first, last)
	}
}
