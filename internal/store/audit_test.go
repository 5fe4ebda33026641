package store_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/mpfleet/mpfleet/internal/audit"
	"github.com/mpfleet/mpfleet/internal/etcdtest"
	"github.com/mpfleet/mpfleet/internal/store"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"
)

const prefix = "/test/"

func auditKey(t *testing.T, fill byte) *audit.Key {
	t.Helper()
	k, err := audit.NewKey(bytes.Repeat([]byte{fill}, audit.KeySize))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// noLeader is a fence that holds: no leader key exists.
var noLeader = store.LeaderFence(prefix+"no-leader", 0)

func eventKey(seq uint64) string { return fmt.Sprintf("%saudit/events/%020d", prefix, seq) }

func appendEvents(t *testing.T, s *store.Store, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		if _, err := s.AppendAudit(context.Background(), &pb.AuditEvent{Actor: "agent:h1", Action: "agent.applied", Host: "hosts/h1"}); err != nil {
			t.Fatal(err)
		}
	}
}

// events reads the stored events, oldest first.
func events(t *testing.T, c *clientv3.Client) []*pb.AuditEvent {
	t.Helper()
	resp, err := c.Get(context.Background(), prefix+"audit/events/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	var out []*pb.AuditEvent
	for _, kv := range resp.Kvs {
		ev := &pb.AuditEvent{}
		if err := proto.Unmarshal(kv.Value, ev); err != nil {
			t.Fatal(err)
		}
		out = append(out, ev)
	}
	return out
}

// rewrite replaces every stored event and the head with evs, relinked and
// rehashed with k (nil: plain SHA-256), as someone with write access to etcd
// but not the audit key could.
func rewrite(t *testing.T, c *clientv3.Client, evs []*pb.AuditEvent, k *audit.Key) {
	t.Helper()
	ctx := context.Background()
	var prevSeq uint64
	var prevHash []byte
	for _, ev := range evs {
		if err := audit.Seal(ev, prevSeq, prevHash, k); err != nil {
			t.Fatal(err)
		}
		b, _ := proto.Marshal(ev)
		if _, err := c.Put(ctx, eventKey(ev.Sequence), string(b)); err != nil {
			t.Fatal(err)
		}
		prevSeq, prevHash = ev.Sequence, ev.Hash
	}
	b, _ := proto.Marshal(&pb.AuditEvent{Name: fmt.Sprintf("auditEvents/%d", prevSeq), Sequence: prevSeq, Hash: prevHash, KeyId: evs[len(evs)-1].KeyId})
	if _, err := c.Put(ctx, prefix+"audit/head", string(b)); err != nil {
		t.Fatal(err)
	}
}

func verifyAudit(t *testing.T, s *store.Store) *pb.VerifyAuditLogResponse {
	t.Helper()
	v, err := s.VerifyAudit(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// With an audit key, whoever can write etcd but has not the key cannot
// change the log unnoticed: not one event, not the whole chain and its head
// rewritten with plain SHA-256 hashes or with another key.
func TestKeyedAuditTamperDetected(t *testing.T) {
	k := auditKey(t, 1)
	for _, tc := range []struct {
		name    string
		tamper  func(t *testing.T, c *clientv3.Client)
		wantBad uint64
		reason  string
	}{
		{"one event edited", func(t *testing.T, c *clientv3.Client) {
			evs := events(t, c)
			evs[2].Actor = "mallory"
			b, _ := proto.Marshal(evs[2])
			if _, err := c.Put(context.Background(), eventKey(3), string(b)); err != nil {
				t.Fatal(err)
			}
		}, 3, "does not match its keyed"},
		{"chain and head rewritten with SHA-256", func(t *testing.T, c *clientv3.Client) {
			evs := events(t, c)
			evs[2].Actor = "mallory"
			rewrite(t, c, evs, nil)
		}, 5, "newest event is unkeyed"},
		{"chain and head rewritten with another key", func(t *testing.T, c *clientv3.Client) {
			evs := events(t, c)
			evs[2].Actor = "mallory"
			rewrite(t, c, evs, auditKey(t, 2))
		}, 1, "not with this controller's audit key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, c := etcdtest.Embedded(t)
			s := store.New(c, prefix, store.WithAuditKey(k))
			appendEvents(t, s, 5)
			if v := verifyAudit(t, s); !v.Ok || v.KeyedEvents != 5 || v.UnkeyedEvents != 0 || v.FirstKeyedSequence != 1 || v.KeyId != k.ID() {
				t.Fatalf("verify before tampering = %v", v)
			}
			tc.tamper(t, c)
			v := verifyAudit(t, s)
			if v.Ok || v.FirstBadSequence != tc.wantBad || !strings.Contains(v.Reason, tc.reason) {
				t.Fatalf("verify = %v, want first bad %d with %q", v, tc.wantBad, tc.reason)
			}
		})
	}
}

// A log written before the controller had a key (pruned, then, without
// checkpoints) gets an "audit.key_introduced" event; from then on it verifies
// keyed from that event, with the older part reported as unkeyed.
func TestKeyAuditChainUpgrade(t *testing.T) {
	ctx := context.Background()
	_, c := etcdtest.Embedded(t)
	old := store.New(c, prefix)
	appendEvents(t, old, 5)
	// The old retention deleted the oldest events without a checkpoint.
	if _, err := c.Delete(ctx, eventKey(1), clientv3.WithRange(eventKey(3))); err != nil {
		t.Fatal(err)
	}
	if v := verifyAudit(t, old); v.Ok || v.FirstBadSequence != 1 || !strings.Contains(v.Reason, "events 1..2 missing and no checkpoint accounts for them") {
		t.Fatalf("verify of the old log = %v", v)
	}

	k := auditKey(t, 1)
	s := store.New(c, prefix, store.WithAuditKey(k))
	if v := verifyAudit(t, s); v.Ok {
		t.Fatalf("a keyed store verified an unkeyed head: %v", v)
	}
	added, err := s.KeyAuditChain(ctx)
	if err != nil || !added {
		t.Fatalf("KeyAuditChain = %v, %v; want an event added", added, err)
	}
	if added, err := s.KeyAuditChain(ctx); err != nil || added {
		t.Fatalf("second KeyAuditChain = %v, %v; want nothing to do", added, err)
	}
	appendEvents(t, s, 2)
	v := verifyAudit(t, s)
	want := &pb.VerifyAuditLogResponse{Ok: true, EventsChecked: 6, FirstSequence: 3, LastSequence: 8, KeyId: k.ID(),
		KeyedEvents: 3, UnkeyedEvents: 3, FirstKeyedSequence: 6, PrunedEvents: 2, CheckpointSequence: 6, HeadHash: v.HeadHash}
	if !proto.Equal(v, want) {
		t.Fatalf("verify after the upgrade = %v\nwant %v", v, want)
	}
	evs := events(t, c)
	if ki := evs[3]; ki.Action != audit.ActionKeyIntroduced || ki.KeyId != k.ID() || ki.GetCheckpoint().GetLastSequence() != 2 {
		t.Fatalf("event 6 = %v, want the key introduced with a checkpoint of events 1..2", ki)
	}

	// A replica with another key, or none, refuses to continue the chain.
	for name, other := range map[string]*store.Store{
		"another key": store.New(c, prefix, store.WithAuditKey(auditKey(t, 2))),
		"no key":      old,
	} {
		if _, err := other.KeyAuditChain(ctx); name != "no key" && !errors.Is(err, store.ErrFailedPrecondition) {
			t.Errorf("%s: KeyAuditChain: %v, want ErrFailedPrecondition", name, err)
		}
		if _, err := other.AppendAudit(ctx, &pb.AuditEvent{Action: "x"}); !errors.Is(err, store.ErrFailedPrecondition) || !strings.Contains(err.Error(), k.ID()) {
			t.Errorf("%s: append: %v, want ErrFailedPrecondition naming key id %s", name, err, k.ID())
		}
	}
	if v := verifyAudit(t, s); !v.Ok || v.LastSequence != 8 {
		t.Fatalf("verify after the refused writes = %v", v)
	}
}

// Retention checkpoints what it prunes: what is left verifies, and events
// deleted by hand from the start of the log are caught.
func TestPruneAuditCheckpoint(t *testing.T) {
	defer store.SetPruneBatch(3)()
	ctx := context.Background()
	_, c := etcdtest.Embedded(t)
	k := auditKey(t, 1)
	s := store.New(c, prefix, store.WithAuditKey(k))
	appendEvents(t, s, 10)
	n, err := s.PruneAudit(ctx, noLeader, 7)
	if err != nil || n != 7 {
		t.Fatalf("prune: %d deleted, %v; want 7", n, err)
	}
	evs := events(t, c)
	if len(evs) != 4 || evs[0].Sequence != 8 || evs[3].Sequence != 11 {
		t.Fatalf("after the prune: %d events from %d", len(evs), evs[0].Sequence)
	}
	cp := evs[3]
	want := &pb.AuditCheckpoint{FirstSequence: 1, LastSequence: 7, LastHash: evs[0].PrevHash, Events: 7}
	if cp.Action != audit.ActionCheckpoint || cp.KeyId != k.ID() || !proto.Equal(cp.Checkpoint, want) {
		t.Fatalf("checkpoint event = %v, want %v", cp, want)
	}
	v := verifyAudit(t, s)
	if !v.Ok || v.FirstSequence != 8 || v.PrunedEvents != 7 || v.CheckpointSequence != 11 || v.KeyedEvents != 4 {
		t.Fatalf("verify after the prune = %v", v)
	}

	// A second prune: its checkpoint accounts for everything before the
	// oldest retained event.
	appendEvents(t, s, 3) // 12..14
	if n, err := s.PruneAudit(ctx, noLeader, 11); err != nil || n != 4 {
		t.Fatalf("second prune: %d deleted, %v; want 4", n, err)
	}
	if v := verifyAudit(t, s); !v.Ok || v.FirstSequence != 12 || v.PrunedEvents != 11 || v.CheckpointSequence != 15 {
		t.Fatalf("verify after the second prune = %v", v)
	}
	// Deleting the oldest retained event by hand is not a prune.
	if _, err := c.Delete(ctx, eventKey(12)); err != nil {
		t.Fatal(err)
	}
	v = verifyAudit(t, s)
	if v.Ok || v.FirstBadSequence != 12 || !strings.Contains(v.Reason, "events 12..12 missing and no checkpoint accounts for them") {
		t.Fatalf("verify after deleting event 12 by hand = %v", v)
	}
	// Pruning up to the newest event keeps only the checkpoint.
	if _, err := s.PruneAudit(ctx, noLeader, 100); err != nil {
		t.Fatal(err)
	}
	if evs := events(t, c); len(evs) != 1 || evs[0].Action != audit.ActionCheckpoint {
		t.Fatalf("after pruning everything: %v", evs)
	}
	if v := verifyAudit(t, s); !v.Ok || v.EventsChecked != 1 || v.PrunedEvents != 15 {
		t.Fatalf("verify of a log of one checkpoint = %v", v)
	}
}

// Deleting the oldest events by hand from a log that was never pruned fails
// verification, keyed or not.
func TestAuditDeletedFromStart(t *testing.T) {
	ctx := context.Background()
	for _, k := range []*audit.Key{nil, auditKey(t, 1)} {
		_, c := etcdtest.Embedded(t)
		s := store.New(c, prefix, store.WithAuditKey(k))
		appendEvents(t, s, 5)
		if _, err := c.Delete(ctx, eventKey(1), clientv3.WithRange(eventKey(4))); err != nil {
			t.Fatal(err)
		}
		if v := verifyAudit(t, s); v.Ok || v.FirstBadSequence != 1 || v.Reason != "events 1..3 missing and no checkpoint accounts for them: they were deleted by hand, not by retention" {
			t.Fatalf("keyed %v: verify = %v", k != nil, v)
		}
	}
}

// A prune whose fence no longer holds changes nothing, checkpoint included.
func TestPruneAuditFenced(t *testing.T) {
	ctx := context.Background()
	_, c := etcdtest.Embedded(t)
	s := store.New(c, prefix, store.WithAuditKey(auditKey(t, 1)))
	appendEvents(t, s, 3)
	if _, err := s.PruneAudit(ctx, store.LeaderFence(prefix+"stale", 1), 2); !errors.Is(err, store.ErrNotLeader) {
		t.Fatalf("prune with a stale fence: %v, want ErrNotLeader", err)
	}
	if first, last, _ := s.AuditRange(ctx); first != 1 || last != 3 {
		t.Fatalf("audit range after a refused prune = %d..%d", first, last)
	}
}
