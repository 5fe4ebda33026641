package controller_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/mpfleet/mpfleet/controller"
	"github.com/mpfleet/mpfleet/internal/audit"
	"github.com/mpfleet/mpfleet/internal/store"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
)

// The elected leader prunes the audit log to the retention limit, each time
// after a checkpoint event that records what it removes; what is left still
// verifies, from the oldest retained event, and events deleted by hand are
// told apart from the prune.
func TestAuditRetention(t *testing.T) {
	key, err := audit.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	e := startWith(t, controller.Options{Retention: controller.Retention{MaxEvents: 5, Interval: 50 * time.Millisecond}}, store.WithAuditKey(key))
	ctx := ctxT(t)
	for i := 0; i < 12; i++ {
		if _, err := e.groups.CreateGroup(ctx, &pb.CreateGroupRequest{GroupId: fmt.Sprintf("g%d", i), Group: webGroup()}); err != nil {
			t.Fatal(err)
		}
	}
	// Retention may have run between the creates: however often, it settles
	// at five events, the newest a checkpoint of everything before the
	// oldest.
	evs := waitPruned(t, e, 13)
	first, cp := evs[0], evs[4]
	if cp.Actor != "system:audit-retention" || cp.Checkpoint.LastSequence != first.Sequence-1 || !bytes.Equal(cp.Checkpoint.LastHash, first.PrevHash) ||
		cp.Checkpoint.Events != cp.Checkpoint.LastSequence-cp.Checkpoint.FirstSequence+1 {
		t.Fatalf("newest event %v, want the checkpoint of the events before %d", cp, first.Sequence)
	}
	v, err := e.audit.VerifyAuditLog(ctx, &pb.VerifyAuditLogRequest{})
	if err != nil || !v.Ok || v.FirstSequence != first.Sequence || v.EventsChecked != 5 || v.PrunedEvents != first.Sequence-1 ||
		v.CheckpointSequence != cp.Sequence || v.KeyedEvents != 5 || v.KeyId != key.ID() {
		t.Fatalf("verify after pruning = %v, %v", v, err)
	}
	// New events continue the chain; the next prune checkpoints again.
	if _, err := e.groups.DeleteGroup(ctx, &pb.DeleteGroupRequest{Name: "groups/g0"}); err != nil {
		t.Fatal(err)
	}
	evs = waitPruned(t, e, cp.Sequence+2)
	if v, _ := e.audit.VerifyAuditLog(ctx, &pb.VerifyAuditLogRequest{}); !v.Ok || v.LastSequence != cp.Sequence+2 || v.CheckpointSequence != v.LastSequence {
		t.Fatalf("verify after a new event and a second prune = %v", v)
	}
	// Deleting the oldest retained event by hand is not a prune. (Four
	// events are left: retention has nothing to do.)
	oldest := evs[0].Sequence
	if _, err := e.etcd.Delete(ctx, fmt.Sprintf("/mpfleet/v1/audit/events/%020d", oldest)); err != nil {
		t.Fatal(err)
	}
	v, err = e.audit.VerifyAuditLog(ctx, &pb.VerifyAuditLogRequest{})
	want := fmt.Sprintf("events %d..%d missing and no checkpoint accounts for them", oldest, oldest)
	if err != nil || v.Ok || v.FirstBadSequence != oldest || !strings.Contains(v.Reason, want) {
		t.Fatalf("verify after deleting event %d by hand = %v, %v; want %q", oldest, v, err, want)
	}
}

// waitPruned waits until the audit log holds five events, the newest a
// retention checkpoint with at least sequence minLast, and returns them.
func waitPruned(t *testing.T, e *env, minLast uint64) []*pb.AuditEvent {
	t.Helper()
	ctx := ctxT(t)
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := e.audit.ListAuditEvents(ctx, &pb.ListAuditEventsRequest{})
		if err != nil {
			t.Fatal(err)
		}
		evs := resp.Events
		if n := len(evs); n == 5 && evs[n-1].Sequence >= minLast && evs[n-1].Action == audit.ActionCheckpoint {
			return evs
		}
		if time.Now().After(deadline) {
			var seqs []string
			for _, ev := range evs {
				seqs = append(seqs, fmt.Sprint(ev.Sequence, " ", ev.Action))
			}
			t.Fatalf("retention did not settle at 5 events ending in a checkpoint at %d or later: %v", minLast, seqs)
		}
		time.Sleep(50 * time.Millisecond)
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
