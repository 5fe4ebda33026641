// Package audit hash-chains audit events so that editing, removing or
// reordering a stored event is detectable, and filters events for queries.
//
// Each event's hash covers the previous event's hash. It is an HMAC-SHA256
// under a Key kept outside the store, so that whoever can write the store but
// has not the key cannot rewrite the chain and its head consistently; events
// written before there was a key keep their plain SHA-256 hashes, and the
// first keyed event's hash covers them. Retention removes the oldest events
// after a checkpoint event that records what it removes, so that the
// verification of what is left tells a prune from a deletion by hand.
package audit

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"

	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"google.golang.org/protobuf/proto"
)

// Action names of the events the audit chain itself writes.
const (
	// ActionCheckpoint is appended by retention before it removes the oldest
	// events; its checkpoint says which.
	ActionCheckpoint = "audit.checkpoint"
	// ActionKeyIntroduced is the first keyed event of a log that had
	// unkeyed events (a log written before the controller had an audit key).
	ActionKeyIntroduced = "audit.key_introduced"
)

// encoding is the event's deterministic protobuf encoding with the hash field
// cleared. prev_hash is part of it, so each event's hash covers the whole
// chain before it; key_id is too, so an event cannot be passed off as
// unkeyed.
func encoding(ev *pb.AuditEvent) ([]byte, error) {
	c := proto.Clone(ev).(*pb.AuditEvent)
	c.Hash = nil
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(c)
	if err != nil {
		return nil, fmt.Errorf("audit: encode event %d: %w", ev.GetSequence(), err)
	}
	return b, nil
}

// Hash returns the plain SHA-256 hash of an unkeyed event: over its
// deterministic protobuf encoding with the hash field cleared.
func Hash(ev *pb.AuditEvent) ([]byte, error) {
	b, err := encoding(ev)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(b)
	return sum[:], nil
}

// Hash returns the keyed hash of an event: HMAC-SHA256 under k over what
// the plain Hash covers.
func (k *Key) Hash(ev *pb.AuditEvent) ([]byte, error) {
	b, err := encoding(ev)
	if err != nil {
		return nil, err
	}
	return k.sum(b), nil
}

// Seal links ev after prev (0 and nil for the first event): it sets
// sequence, name, prev_hash, key_id and hash. With a nil key the event is
// unkeyed (plain SHA-256), as events were before audit keys.
func Seal(ev *pb.AuditEvent, prevSeq uint64, prevHash []byte, k *Key) error {
	ev.Sequence = prevSeq + 1
	ev.Name = fmt.Sprintf("auditEvents/%d", ev.Sequence)
	ev.PrevHash = append([]byte(nil), prevHash...)
	var h []byte
	var err error
	if k != nil {
		ev.KeyId = k.ID()
		h, err = k.Hash(ev)
	} else {
		ev.KeyId = ""
		h, err = Hash(ev)
	}
	if err != nil {
		return err
	}
	ev.Hash = h
	return nil
}

// Verifier checks a chain event by event, oldest first, then Finish checks
// its ends. Key is the audit key: events keyed with it are checked with
// HMAC-SHA256. Unkeyed events may only come before the first keyed one, and
// with a Key the newest event must be keyed: whoever rewrites the log with
// plain SHA-256 hashes, or with another key, is caught.
type Verifier struct {
	Key *Key

	checked  uint64
	first    uint64
	firstPH  []byte // prev_hash of the first event checked
	last     *pb.AuditEvent
	badSeq   uint64
	badWhy   string
	headHash []byte

	keyed, unkeyed uint64
	firstKeyed     uint64
	// The checkpoint that removed the most: events up to cpThrough are
	// accounted for by the event at cpSeq.
	cpSeq, cpThrough uint64
}

func (v *Verifier) fail(seq uint64, format string, args ...any) bool {
	v.badSeq = seq
	v.badWhy = fmt.Sprintf(format, args...)
	return false
}

// Add checks the next event. It returns false once the chain is broken; later
// calls change nothing.
func (v *Verifier) Add(ev *pb.AuditEvent) bool {
	if v.badSeq != 0 {
		return false
	}
	seq := ev.GetSequence()
	if seq == 0 && v.last != nil {
		seq = v.last.GetSequence() + 1
	}
	if v.last != nil {
		if want := v.last.GetSequence() + 1; ev.GetSequence() != want {
			return v.fail(seq, "sequence %d follows %d: event %d is missing or out of order", ev.GetSequence(), v.last.GetSequence(), want)
		}
		if !bytes.Equal(ev.GetPrevHash(), v.last.GetHash()) {
			return v.fail(seq, "prev_hash %s does not match the hash %s of event %d", short(ev.GetPrevHash()), short(v.last.GetHash()), v.last.GetSequence())
		}
	} else {
		v.first = ev.GetSequence()
		v.firstPH = ev.GetPrevHash()
		if ev.GetSequence() == 1 && len(ev.GetPrevHash()) != 0 {
			return v.fail(seq, "the first event has a prev_hash")
		}
	}
	if want := fmt.Sprintf("auditEvents/%d", ev.GetSequence()); ev.GetName() != want {
		return v.fail(seq, "name %q does not match sequence (want %q)", ev.GetName(), want)
	}
	if !v.checkHash(seq, ev) {
		return false
	}
	if cp := ev.GetCheckpoint(); cp != nil && !v.addCheckpoint(seq, cp) {
		return false
	}
	v.checked++
	v.last = ev
	v.headHash = ev.GetHash()
	return true
}

func (v *Verifier) checkHash(seq uint64, ev *pb.AuditEvent) bool {
	var h []byte
	var err error
	switch id := ev.GetKeyId(); {
	case id == "" && v.firstKeyed != 0:
		return v.fail(seq, "event is unkeyed but follows keyed event %d: once keyed, every event is keyed, so it was rewritten without the key", v.firstKeyed)
	case id == "":
		h, err = Hash(ev)
	case v.Key == nil:
		return v.fail(seq, "event is keyed (key id %s) but no audit key was given to verify it", id)
	case id != v.Key.ID():
		return v.fail(seq, "event is keyed with key id %s, not with this controller's audit key (key id %s): it was written by a controller with another key file, or forged", id, v.Key.ID())
	default:
		h, err = v.Key.Hash(ev)
	}
	if err != nil {
		return v.fail(seq, "%v", err)
	}
	if !bytes.Equal(h, ev.GetHash()) {
		what := "plain SHA-256"
		if ev.GetKeyId() != "" {
			what = "keyed (HMAC-SHA256)"
		}
		return v.fail(seq, "content does not match its %s hash (stored %s, computed %s): the event was altered", what, short(ev.GetHash()), short(h))
	}
	if ev.GetKeyId() != "" {
		v.keyed++
		if v.firstKeyed == 0 {
			v.firstKeyed = ev.GetSequence()
		}
	} else {
		v.unkeyed++
	}
	return true
}

// addCheckpoint notes what a (verified) checkpoint event says was pruned.
func (v *Verifier) addCheckpoint(seq uint64, cp *pb.AuditCheckpoint) bool {
	through := cp.GetLastSequence()
	if through == 0 || through >= seq || cp.GetFirstSequence() > through {
		return v.fail(seq, "checkpoint of events %d to %d does not precede it", cp.GetFirstSequence(), through)
	}
	// The checkpoint of the prune that removed exactly the events before the
	// first retained one names that event's predecessor: the link must hold.
	if through+1 == v.first && !bytes.Equal(cp.GetLastHash(), v.firstPH) {
		return v.fail(seq, "checkpoint says pruned event %d had hash %s, but event %d links to %s", through, short(cp.GetLastHash()), v.first, short(v.firstPH))
	}
	if through >= v.cpThrough {
		v.cpSeq, v.cpThrough = seq, through
	}
	return true
}

// Finish checks the ends of the chain once every event was added: the last
// verified event against the stored chain head (sequence and hash), which
// catches events removed from the end; with a Key, that the newest event is
// keyed; and that events missing before the oldest retained one are
// accounted for by a checkpoint, which catches events removed from the
// start.
func (v *Verifier) Finish(seq uint64, hash []byte) {
	if v.badSeq != 0 {
		return
	}
	var lastSeq uint64
	var lastHash []byte
	if v.last != nil {
		lastSeq, lastHash = v.last.GetSequence(), v.last.GetHash()
	}
	if seq != lastSeq || !bytes.Equal(hash, lastHash) {
		v.fail(lastSeq+1, "chain head says event %d (hash %s) but the log ends at event %d: events were removed from the end", seq, short(hash), lastSeq)
		return
	}
	if v.last == nil {
		return
	}
	if v.first > 1 && v.cpThrough+1 < v.first {
		missing := span(v.cpThrough+1, v.first-1)
		if v.cpThrough == 0 {
			v.fail(1, "%s missing and no checkpoint accounts for them: they were deleted by hand, not by retention", missing)
		} else {
			v.fail(v.cpThrough+1, "%s missing and no checkpoint accounts for them (checkpoint %d accounts for events up to %d): they were deleted by hand, not by retention", missing, v.cpSeq, v.cpThrough)
		}
		return
	}
	if v.Key != nil && v.last.GetKeyId() == "" {
		v.fail(lastSeq, "the newest event is unkeyed: a controller with an audit key keys every event it writes (and keys the chain when it starts), so the log was rewritten without the key")
	}
}

// Result reports the verification so far.
func (v *Verifier) Result() *pb.VerifyAuditLogResponse {
	r := &pb.VerifyAuditLogResponse{
		Ok:                 v.badSeq == 0,
		EventsChecked:      v.checked,
		FirstSequence:      v.first,
		FirstBadSequence:   v.badSeq,
		Reason:             v.badWhy,
		HeadHash:           hex.EncodeToString(v.headHash),
		KeyedEvents:        v.keyed,
		UnkeyedEvents:      v.unkeyed,
		FirstKeyedSequence: v.firstKeyed,
	}
	if v.Key != nil {
		r.KeyId = v.Key.ID()
	}
	if v.last != nil {
		r.LastSequence = v.last.GetSequence()
	}
	if v.first > 1 {
		r.PrunedEvents = v.first - 1
		if v.cpThrough+1 >= v.first {
			r.CheckpointSequence = v.cpSeq
		}
	}
	return r
}

// span names the events from a to b.
func span(a, b uint64) string { return fmt.Sprintf("events %d..%d", a, b) }

func short(b []byte) string {
	s := hex.EncodeToString(b)
	if len(s) > 12 {
		return s[:12]
	}
	if s == "" {
		return "(none)"
	}
	return s
}

// Filter selects events for ListAuditEvents and WatchAuditEvents.
type Filter struct {
	Actor    string
	Resource string // exact, or a prefix when it ends in "/"
	Action   string // exact, or a prefix when it ends in "."
	Host     string
}

// Match reports whether ev passes the filter.
func (f Filter) Match(ev *pb.AuditEvent) bool {
	if f.Actor != "" && ev.GetActor() != f.Actor {
		return false
	}
	if !matchPrefixed(f.Resource, "/", ev.GetResource()) {
		return false
	}
	if !matchPrefixed(f.Action, ".", ev.GetAction()) {
		return false
	}
	if f.Host != "" && ev.GetHost() != f.Host {
		return false
	}
	return true
}

func matchPrefixed(want, sep, got string) bool {
	if want == "" {
		return true
	}
	if strings.HasSuffix(want, sep) {
		return strings.HasPrefix(got, want)
	}
	return got == want
}
