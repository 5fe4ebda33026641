package audit

import (
	"bytes"
	"fmt"
	"strings"
	"testing"

	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"google.golang.org/protobuf/proto"
)

func testKey(t *testing.T, fill byte) *Key {
	t.Helper()
	k, err := NewKey(bytes.Repeat([]byte{fill}, KeySize))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// chain returns n events sealed with k (nil: unkeyed) after prev (nil: from
// the start).
func chain(t *testing.T, n int, k *Key, prev ...*pb.AuditEvent) []*pb.AuditEvent {
	t.Helper()
	evs := append([]*pb.AuditEvent(nil), prev...)
	for i := 0; i < n; i++ {
		ev := &pb.AuditEvent{Actor: "alice", Action: "groups.update", Resource: fmt.Sprintf("groups/g%d", len(evs)), Result: pb.AuditResult_AUDIT_RESULT_SUCCESS}
		appendSealed(t, &evs, ev, k)
	}
	return evs
}

func appendSealed(t *testing.T, evs *[]*pb.AuditEvent, ev *pb.AuditEvent, k *Key) {
	t.Helper()
	var prevSeq uint64
	var prevHash []byte
	if n := len(*evs); n > 0 {
		prevSeq, prevHash = (*evs)[n-1].Sequence, (*evs)[n-1].Hash
	}
	if err := Seal(ev, prevSeq, prevHash, k); err != nil {
		t.Fatal(err)
	}
	*evs = append(*evs, ev)
}

// reseal recomputes every link and hash of evs with k, as someone with
// write access to the store would after editing it.
func reseal(t *testing.T, evs []*pb.AuditEvent, k *Key) []*pb.AuditEvent {
	t.Helper()
	var out []*pb.AuditEvent
	for _, ev := range evs {
		ev = proto.CloneOf(ev)
		seq := ev.Sequence
		var prevHash []byte
		if len(out) > 0 {
			prevHash = out[len(out)-1].Hash
		} else if seq > 1 {
			prevHash = ev.PrevHash
		}
		if err := Seal(ev, seq-1, prevHash, k); err != nil {
			t.Fatal(err)
		}
		out = append(out, ev)
	}
	return out
}

func verify(k *Key, evs []*pb.AuditEvent, headSeq uint64, headHash []byte) *pb.VerifyAuditLogResponse {
	v := Verifier{Key: k}
	for _, ev := range evs {
		if !v.Add(ev) {
			break
		}
	}
	v.Finish(headSeq, headHash)
	return v.Result()
}

// verifyHead verifies evs against a head that matches their last event, as
// a rewrite of the events and the head leaves it.
func verifyHead(k *Key, evs []*pb.AuditEvent) *pb.VerifyAuditLogResponse {
	last := evs[len(evs)-1]
	return verify(k, evs, last.Sequence, last.Hash)
}

func TestVerify(t *testing.T) {
	tests := []struct {
		name    string
		tamper  func(evs []*pb.AuditEvent) []*pb.AuditEvent
		wantBad uint64
	}{
		{"intact", func(e []*pb.AuditEvent) []*pb.AuditEvent { return e }, 0},
		{"field edited", func(e []*pb.AuditEvent) []*pb.AuditEvent { e[2].Actor = "mallory"; return e }, 3},
		{"edited and rehashed", func(e []*pb.AuditEvent) []*pb.AuditEvent {
			e[2].Actor = "mallory"
			e[2].Hash, _ = Hash(e[2])
			return e
		}, 3},
		{"event removed", func(e []*pb.AuditEvent) []*pb.AuditEvent { return append(e[:1:1], e[2:]...) }, 3},
		{"last event removed", func(e []*pb.AuditEvent) []*pb.AuditEvent { return e[:4] }, 5},
		{"reordered", func(e []*pb.AuditEvent) []*pb.AuditEvent { e[1], e[2] = e[2], e[1]; return e }, 3},
		{"key id cleared", func(e []*pb.AuditEvent) []*pb.AuditEvent { e[1].KeyId = ""; return e }, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k := testKey(t, 1)
			evs := chain(t, 5, k)
			head := proto.Clone(evs[4]).(*pb.AuditEvent)
			got := verify(k, tt.tamper(evs), head.Sequence, head.Hash)
			if got.FirstBadSequence != tt.wantBad || got.Ok != (tt.wantBad == 0) {
				t.Fatalf("verify = %+v, want first bad %d", got, tt.wantBad)
			}
			if tt.wantBad != 0 && got.Reason == "" {
				t.Fatal("no reason given")
			}
			if tt.wantBad == 0 && (got.KeyedEvents != 5 || got.UnkeyedEvents != 0 || got.FirstKeyedSequence != 1 || got.KeyId != k.ID()) {
				t.Fatalf("verify = %+v, want 5 keyed events from 1 with key %s", got, k.ID())
			}
		})
	}
}

// Someone who can write the store but has not the key rewrites the whole
// chain and its head: every rewrite is caught.
func TestVerifyRewrittenChain(t *testing.T) {
	k := testKey(t, 1)
	tests := []struct {
		name    string
		rewrite func(evs []*pb.AuditEvent) []*pb.AuditEvent
		wantBad uint64
		reason  string
	}{
		{"plain SHA-256, unkeyed", func(e []*pb.AuditEvent) []*pb.AuditEvent {
			e[2].Actor = "mallory"
			return reseal(t, e, nil)
		}, 5, "newest event is unkeyed"},
		{"plain SHA-256, key id kept", func(e []*pb.AuditEvent) []*pb.AuditEvent {
			e[2].Actor = "mallory"
			out := reseal(t, e, nil)
			for i, ev := range out {
				ev.KeyId = k.ID()
				var prev []byte
				if i > 0 {
					prev = out[i-1].Hash
				}
				ev.PrevHash = prev
				ev.Hash, _ = Hash(ev)
			}
			return out
		}, 1, "does not match its keyed (HMAC-SHA256) hash"},
		{"another key", func(e []*pb.AuditEvent) []*pb.AuditEvent {
			e[2].Actor = "mallory"
			return reseal(t, e, testKey(t, 2))
		}, 1, "not with this controller's audit key"},
		{"another key, our key id", func(e []*pb.AuditEvent) []*pb.AuditEvent {
			other := testKey(t, 2)
			out := reseal(t, e, other)
			for i, ev := range out {
				ev.KeyId = k.ID()
				if i > 0 {
					ev.PrevHash = out[i-1].Hash
				}
				ev.Hash, _ = other.Hash(ev)
			}
			return out
		}, 1, "does not match its keyed"},
		{"unkeyed events appended", func(e []*pb.AuditEvent) []*pb.AuditEvent {
			return chain(t, 2, nil, e...)
		}, 6, "follows keyed event 1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := verifyHead(k, tt.rewrite(chain(t, 5, k)))
			if got.Ok || got.FirstBadSequence != tt.wantBad || !strings.Contains(got.Reason, tt.reason) {
				t.Fatalf("verify = %+v, want first bad %d with %q", got, tt.wantBad, tt.reason)
			}
		})
	}
	// Without the key, a keyed chain cannot be verified.
	if got := verifyHead(nil, chain(t, 3, k)); got.Ok || got.FirstBadSequence != 1 || !strings.Contains(got.Reason, "no audit key") {
		t.Fatalf("verify without the key = %+v", got)
	}
}

// A log written before the key: its unkeyed events verify with plain SHA-256
// and are reported as such; the first keyed event's hash covers them.
func TestVerifyUpgradedLog(t *testing.T) {
	k := testKey(t, 1)
	old := chain(t, 3, nil)
	evs := append([]*pb.AuditEvent(nil), old...)
	appendSealed(t, &evs, &pb.AuditEvent{Actor: "system:audit", Action: ActionKeyIntroduced}, k)
	evs = chain(t, 2, k, evs...)

	got := verifyHead(k, evs)
	if !got.Ok || got.UnkeyedEvents != 3 || got.KeyedEvents != 3 || got.FirstKeyedSequence != 4 || got.EventsChecked != 6 {
		t.Fatalf("verify of an upgraded log = %+v", got)
	}
	// Before the key is introduced, the log verifies without a key, and not
	// with one: a controller with a key always keys the head.
	if got := verifyHead(nil, old); !got.Ok || got.UnkeyedEvents != 3 {
		t.Fatalf("verify of the old log without a key = %+v", got)
	}
	if got := verifyHead(k, old); got.Ok || got.FirstBadSequence != 3 {
		t.Fatalf("verify of the old log with a key = %+v", got)
	}
	// Rewriting the unkeyed part breaks the link to the first keyed event.
	forged := reseal(t, evs[:3], nil)
	forged[1].Actor = "mallory"
	forged = reseal(t, forged, nil)
	if got := verifyHead(k, append(forged, evs[3:]...)); got.Ok || got.FirstBadSequence != 4 {
		t.Fatalf("verify after rewriting the unkeyed part = %+v", got)
	}
}

// checkpointed returns events 1..10, then a checkpoint of events 1..through,
// then one more event.
func checkpointed(t *testing.T, k *Key, through int) []*pb.AuditEvent {
	t.Helper()
	evs := chain(t, 10, k)
	cp := &pb.AuditEvent{Actor: "system:audit-retention", Action: ActionCheckpoint, Checkpoint: &pb.AuditCheckpoint{
		FirstSequence: 1, LastSequence: uint64(through), LastHash: evs[through-1].Hash, Events: uint64(through),
	}}
	appendSealed(t, &evs, cp, k)
	return chain(t, 1, k, evs...)
}

func TestVerifyPruned(t *testing.T) {
	k := testKey(t, 1)
	tests := []struct {
		name      string
		through   int // the checkpoint's last sequence
		drop      int // events removed from the start
		forge     func(evs []*pb.AuditEvent)
		wantBad   uint64
		reason    string
		wantCheck uint64
	}{
		{name: "nothing pruned", through: 5, drop: 0},
		{name: "pruned as checkpointed", through: 5, drop: 5, wantCheck: 11},
		{name: "prune interrupted", through: 5, drop: 3, wantCheck: 11},
		{name: "one more deleted by hand", through: 5, drop: 6, wantBad: 6, reason: "events 6..6 missing and no checkpoint accounts for them"},
		{name: "checkpoint with another hash", through: 5, drop: 5, forge: func(evs []*pb.AuditEvent) {
			evs[10].Checkpoint.LastHash = evs[3].Hash
		}, wantBad: 11, reason: "checkpoint says pruned event 5 had hash"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			evs := checkpointed(t, k, tt.through)
			if tt.forge != nil {
				tt.forge(evs)
				evs = reseal(t, evs, k) // as the controller would have sealed it
			}
			got := verifyHead(k, evs[tt.drop:])
			if got.Ok != (tt.wantBad == 0) || got.FirstBadSequence != tt.wantBad || !strings.Contains(got.Reason, tt.reason) {
				t.Fatalf("verify = %+v, want first bad %d with %q", got, tt.wantBad, tt.reason)
			}
			if got.PrunedEvents != uint64(tt.drop) || got.CheckpointSequence != tt.wantCheck {
				t.Fatalf("verify = %+v, want %d pruned events accounted for by checkpoint %d", got, tt.drop, tt.wantCheck)
			}
		})
	}
	// The reason names the events missing when no checkpoint is left.
	evs := chain(t, 6, k)
	if got := verifyHead(k, evs[3:]); got.Ok || got.FirstBadSequence != 1 || !strings.Contains(got.Reason, "events 1..3 missing and no checkpoint accounts for them") {
		t.Fatalf("verify after deleting events 1..3 = %+v", got)
	}
}

func TestFilter(t *testing.T) {
	ev := &pb.AuditEvent{Actor: "alice", Action: "agent.applied", Resource: "groups/web", Host: "hosts/h1"}
	for f, want := range map[Filter]bool{
		{}:                          true,
		{Actor: "alice"}:            true,
		{Actor: "bob"}:              false,
		{Action: "agent."}:          true,
		{Action: "agent"}:           false,
		{Resource: "groups/"}:       true,
		{Resource: "groups/we"}:     false,
		{Host: "hosts/h1"}:          true,
		{Host: "hosts/h2"}:          false,
		{Actor: "alice", Host: "x"}: false,
	} {
		if got := f.Match(ev); got != want {
			t.Errorf("%+v.Match = %v, want %v", f, got, want)
		}
	}
}
