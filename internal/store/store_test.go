package store_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/mpfleet/mpfleet/internal/audit"
	"github.com/mpfleet/mpfleet/internal/etcdtest"
	"github.com/mpfleet/mpfleet/internal/store"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"
)

func newStore(t *testing.T) (*store.Store, *clientv3.Client) {
	t.Helper()
	_, c := etcdtest.Embedded(t)
	return store.New(c, "/test/"), c
}

func group(subflows uint32) *pb.Group {
	return &pb.Group{
		Description: "web",
		Selector:    &pb.Selector{MatchLabels: map[string]string{"role": "web"}},
		Policy:      &pb.MultipathPolicy{Limits: &pb.Limits{Subflows: proto.Uint32(subflows)}},
	}
}

var meta = store.Meta{Actor: "alice", RequestID: "r1", Peer: "127.0.0.1:1"}

func TestGroupLifecycle(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()

	g, _, err := s.CreateGroup(ctx, "web", group(2), meta)
	if err != nil {
		t.Fatal(err)
	}
	if g.Name != "groups/web" || g.PolicyRevision != 1 || g.Etag == "" || g.CreateTime == nil {
		t.Fatalf("created group = %v", g)
	}
	if _, _, err := s.CreateGroup(ctx, "web", group(2), meta); !errors.Is(err, store.ErrAlreadyExists) {
		t.Fatalf("second create: err = %v, want ErrAlreadyExists", err)
	}

	// Description only: no new revision.
	g2, _, err := s.UpdateGroup(ctx, "web", g.Etag, func(cur *pb.Group) (*pb.Group, error) {
		cur.Description = "web tier"
		return cur, nil
	}, meta)
	if err != nil {
		t.Fatal(err)
	}
	if g2.PolicyRevision != 1 || g2.Etag == g.Etag {
		t.Fatalf("after description change: revision %d etag %s (was %s)", g2.PolicyRevision, g2.Etag, g.Etag)
	}
	// Policy change: revision 2.
	g3, _, err := s.UpdateGroup(ctx, "web", "", func(cur *pb.Group) (*pb.Group, error) {
		cur.Policy.Limits.Subflows = proto.Uint32(4)
		return cur, nil
	}, meta)
	if err != nil {
		t.Fatal(err)
	}
	if g3.PolicyRevision != 2 {
		t.Fatalf("after policy change: revision %d, want 2", g3.PolicyRevision)
	}
	// No change: nothing written.
	g4, _, err := s.UpdateGroup(ctx, "web", "", func(cur *pb.Group) (*pb.Group, error) { return cur, nil }, meta)
	if err != nil || g4.Etag != g3.Etag {
		t.Fatalf("no-op update: etag %s -> %s, err %v", g3.Etag, g4.Etag, err)
	}
	// Stale etag.
	if _, _, err := s.UpdateGroup(ctx, "web", g.Etag, func(cur *pb.Group) (*pb.Group, error) {
		cur.Description = "x"
		return cur, nil
	}, meta); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("stale etag: err = %v, want ErrConflict", err)
	}

	revs, more, err := s.ListRevisions(ctx, "web", 0, 10)
	if err != nil || more || len(revs) != 2 || revs[0].Revision != 2 || revs[1].Revision != 1 {
		t.Fatalf("revisions = %v more=%v err=%v", revs, more, err)
	}
	r1, err := s.GetRevision(ctx, "web", 1)
	if err != nil || r1.GetPolicy().GetLimits().GetSubflows() != 2 || r1.Actor != "alice" {
		t.Fatalf("revision 1 = %v, %v", r1, err)
	}
	if _, err := s.GetRevision(ctx, "web", 3); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("revision 3: err = %v", err)
	}

	evs, next, err := s.ListAudit(ctx, store.AuditQuery{Limit: 100})
	if err != nil || next != 0 {
		t.Fatal(err, next)
	}
	var actions []string
	for _, e := range evs {
		actions = append(actions, e.Action)
	}
	if fmt.Sprint(actions) != "[groups.create groups.update groups.update]" {
		t.Fatalf("audit actions = %v", actions)
	}
	if evs[2].GetBefore() == nil || evs[2].GetAfter() == nil || evs[2].RequestId != "r1" {
		t.Fatalf("update event lacks before/after/request id: %v", evs[2])
	}

	if _, err := s.DeleteGroup(ctx, "web", g.Etag, meta); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("delete with stale etag: %v", err)
	}
	if _, err := s.DeleteGroup(ctx, "web", g4.Etag, meta); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetGroup(ctx, "web"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("get after delete: %v", err)
	}
	if _, err := s.DeleteGroup(ctx, "web", "", meta); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("second delete: %v", err)
	}
	v, err := s.VerifyAudit(ctx)
	if err != nil || !v.Ok || v.EventsChecked != 4 {
		t.Fatalf("verify = %v, %v", v, err)
	}
}

func TestListGroupsPaging(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	for i := 0; i < 7; i++ {
		if _, _, err := s.CreateGroup(ctx, fmt.Sprintf("g%d", i), group(1), meta); err != nil {
			t.Fatal(err)
		}
	}
	var got []string
	after := ""
	for pages := 0; ; pages++ {
		gs, more, err := s.ListGroups(ctx, after, 3)
		if err != nil {
			t.Fatal(err)
		}
		for _, g := range gs {
			got = append(got, g.Name)
		}
		if !more {
			break
		}
		after = gs[len(gs)-1].Name[len("groups/"):]
		if pages > 5 {
			t.Fatal("paging does not end")
		}
	}
	if fmt.Sprint(got) != "[groups/g0 groups/g1 groups/g2 groups/g3 groups/g4 groups/g5 groups/g6]" {
		t.Fatalf("paged groups = %v", got)
	}
}

// Two updates racing with the same etag: exactly one wins, the other is
// ErrConflict, and exactly one revision and one audit event are added.
func TestConcurrentUpdatesSameEtag(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	g, _, err := s.CreateGroup(ctx, "web", group(1), meta)
	if err != nil {
		t.Fatal(err)
	}
	const n = 8
	var wg sync.WaitGroup
	errs := make([]error, n)
	start := make(chan struct{})
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			<-start
			_, _, errs[i] = s.UpdateGroup(ctx, "web", g.Etag, func(cur *pb.Group) (*pb.Group, error) {
				cur.Policy.Limits.Subflows = proto.Uint32(uint32(2 + i%6))
				cur.Description = fmt.Sprint("writer ", i)
				return cur, nil
			}, meta)
		}(i)
	}
	close(start)
	wg.Wait()
	wins := 0
	for _, err := range errs {
		switch {
		case err == nil:
			wins++
		case errors.Is(err, store.ErrConflict):
		default:
			t.Fatalf("unexpected error: %v", err)
		}
	}
	if wins != 1 {
		t.Fatalf("%d updates won, want exactly 1 (errs %v)", wins, errs)
	}
	revs, _, _ := s.ListRevisions(ctx, "web", 0, 10)
	if len(revs) != 2 {
		t.Fatalf("%d revisions, want 2", len(revs))
	}
	v, err := s.VerifyAudit(ctx)
	if err != nil || !v.Ok || v.EventsChecked != 2 {
		t.Fatalf("verify = %v, %v", v, err)
	}
}

// Many writers without etags all succeed and the audit chain has no gaps.
func TestConcurrentAuditChain(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	var wg sync.WaitGroup
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			if _, _, err := s.CreateGroup(ctx, fmt.Sprintf("g%d", i), group(1), meta); err != nil {
				t.Error(err)
			}
			if _, err := s.AppendAudit(ctx, &pb.AuditEvent{Actor: "agent:h", Action: "agent.applied"}); err != nil {
				t.Error(err)
			}
		}(i)
	}
	wg.Wait()
	v, err := s.VerifyAudit(ctx)
	if err != nil || !v.Ok || v.EventsChecked != 40 || v.LastSequence != 40 {
		t.Fatalf("verify = %v, %v", v, err)
	}
}

func TestAuditTamperDetected(t *testing.T) {
	s, c := newStore(t)
	ctx := context.Background()
	for i := 0; i < 5; i++ {
		if _, _, err := s.CreateGroup(ctx, fmt.Sprintf("g%d", i), group(1), meta); err != nil {
			t.Fatal(err)
		}
	}
	key := fmt.Sprintf("/test/audit/events/%020d", 3)
	resp, err := c.Get(ctx, key)
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("get %s: %v", key, err)
	}
	ev := &pb.AuditEvent{}
	if err := proto.Unmarshal(resp.Kvs[0].Value, ev); err != nil {
		t.Fatal(err)
	}
	ev.Actor = "mallory"
	b, _ := proto.Marshal(ev)
	if _, err := c.Put(ctx, key, string(b)); err != nil {
		t.Fatal(err)
	}
	v, err := s.VerifyAudit(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if v.Ok || v.FirstBadSequence != 3 || v.Reason == "" {
		t.Fatalf("verify after tampering with event 3 = %v", v)
	}

	// Re-hashing the edited event moves the break to the next link.
	ev.Hash, _ = audit.Hash(ev)
	b, _ = proto.Marshal(ev)
	if _, err := c.Put(ctx, key, string(b)); err != nil {
		t.Fatal(err)
	}
	if v, _ := s.VerifyAudit(ctx); v.Ok || v.FirstBadSequence != 4 {
		t.Fatalf("verify after re-hashing event 3 = %v", v)
	}

	// Deleting the newest event is caught by the head.
	if _, err := c.Delete(ctx, fmt.Sprintf("/test/audit/events/%020d", 5)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Put(ctx, key, string(resp.Kvs[0].Value)); err != nil { // restore 3
		t.Fatal(err)
	}
	if v, _ := s.VerifyAudit(ctx); v.Ok || v.FirstBadSequence != 5 {
		t.Fatalf("verify after deleting event 5 = %v", v)
	}
}

func TestListAuditFilters(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	if _, _, err := s.CreateGroup(ctx, "web", group(1), store.Meta{Actor: "alice"}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.CreateGroup(ctx, "db", group(1), store.Meta{Actor: "bob"}); err != nil {
		t.Fatal(err)
	}
	mid := time.Now()
	for i := 0; i < 5; i++ {
		if _, err := s.AppendAudit(ctx, &pb.AuditEvent{Actor: "agent:h1", Action: "agent.applied", Host: "hosts/h1", Resource: "groups/web"}); err != nil {
			t.Fatal(err)
		}
	}
	count := func(q store.AuditQuery) int {
		q.Limit = 100
		evs, _, err := s.ListAudit(ctx, q)
		if err != nil {
			t.Fatal(err)
		}
		return len(evs)
	}
	for name, tc := range map[string]struct {
		q    store.AuditQuery
		want int
	}{
		"all":          {store.AuditQuery{}, 7},
		"actor":        {store.AuditQuery{Filter: audit.Filter{Actor: "bob"}}, 1},
		"action pfx":   {store.AuditQuery{Filter: audit.Filter{Action: "agent."}}, 5},
		"resource":     {store.AuditQuery{Filter: audit.Filter{Resource: "groups/web"}}, 6},
		"host":         {store.AuditQuery{Filter: audit.Filter{Host: "hosts/h1"}}, 5},
		"since":        {store.AuditQuery{Start: mid}, 5},
		"until":        {store.AuditQuery{End: mid}, 2},
		"after seq 6":  {store.AuditQuery{AfterSeq: 6}, 1},
		"no such host": {store.AuditQuery{Filter: audit.Filter{Host: "hosts/x"}}, 0},
	} {
		if got := count(tc.q); got != tc.want {
			t.Errorf("%s: %d events, want %d", name, got, tc.want)
		}
	}
	// Paging by sequence.
	evs, next, err := s.ListAudit(ctx, store.AuditQuery{Limit: 3})
	if err != nil || len(evs) != 3 || next != 3 {
		t.Fatalf("page 1: %d events next %d err %v", len(evs), next, err)
	}
	evs, next, err = s.ListAudit(ctx, store.AuditQuery{Limit: 4, AfterSeq: next})
	if err != nil || len(evs) != 4 || next != 0 || evs[0].Sequence != 4 {
		t.Fatalf("page 2: %d events next %d err %v", len(evs), next, err)
	}
}
