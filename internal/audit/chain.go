// Package audit hash-chains audit events so that editing, removing or
// reordering a stored event is detectable, and filters events for queries.
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

// Hash returns SHA-256 over the event's deterministic protobuf encoding with
// the hash field cleared. prev_hash is part of the encoding, so each event's
// hash covers the whole chain before it.
func Hash(ev *pb.AuditEvent) ([]byte, error) {
	c := proto.Clone(ev).(*pb.AuditEvent)
	c.Hash = nil
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(c)
	if err != nil {
		return nil, fmt.Errorf("audit: encode event %d: %w", ev.GetSequence(), err)
	}
	sum := sha256.Sum256(b)
	return sum[:], nil
}

// Seal links ev after prev (nil for the first event): it sets sequence, name,
// prev_hash and hash.
func Seal(ev *pb.AuditEvent, prevSeq uint64, prevHash []byte) error {
	ev.Sequence = prevSeq + 1
	ev.Name = fmt.Sprintf("auditEvents/%d", ev.Sequence)
	ev.PrevHash = append([]byte(nil), prevHash...)
	h, err := Hash(ev)
	if err != nil {
		return err
	}
	ev.Hash = h
	return nil
}

// Verifier checks a chain event by event, oldest first.
type Verifier struct {
	checked  uint64
	first    uint64
	last     *pb.AuditEvent
	badSeq   uint64
	badWhy   string
	headHash []byte
}

// Add checks the next event. It returns false once the chain is broken; later
// calls change nothing.
func (v *Verifier) Add(ev *pb.AuditEvent) bool {
	if v.badSeq != 0 {
		return false
	}
	fail := func(format string, args ...any) bool {
		v.badSeq = ev.GetSequence()
		if v.badSeq == 0 && v.last != nil {
			v.badSeq = v.last.GetSequence() + 1
		}
		v.badWhy = fmt.Sprintf(format, args...)
		return false
	}
	if v.last != nil {
		if want := v.last.GetSequence() + 1; ev.GetSequence() != want {
			return fail("sequence %d follows %d: event %d is missing or out of order", ev.GetSequence(), v.last.GetSequence(), want)
		}
		if !bytes.Equal(ev.GetPrevHash(), v.last.GetHash()) {
			return fail("prev_hash %s does not match the hash %s of event %d", short(ev.GetPrevHash()), short(v.last.GetHash()), v.last.GetSequence())
		}
	} else {
		v.first = ev.GetSequence()
		if ev.GetSequence() == 1 && len(ev.GetPrevHash()) != 0 {
			return fail("the first event has a prev_hash")
		}
	}
	if want := fmt.Sprintf("auditEvents/%d", ev.GetSequence()); ev.GetName() != want {
		return fail("name %q does not match sequence (want %q)", ev.GetName(), want)
	}
	h, err := Hash(ev)
	if err != nil {
		return fail("%v", err)
	}
	if !bytes.Equal(h, ev.GetHash()) {
		return fail("content does not match its hash (stored %s, computed %s): the event was altered", short(ev.GetHash()), short(h))
	}
	v.checked++
	v.last = ev
	v.headHash = ev.GetHash()
	return true
}

// Result reports the verification so far.
func (v *Verifier) Result() *pb.VerifyAuditLogResponse {
	r := &pb.VerifyAuditLogResponse{
		Ok:               v.badSeq == 0,
		EventsChecked:    v.checked,
		FirstSequence:    v.first,
		FirstBadSequence: v.badSeq,
		Reason:           v.badWhy,
		HeadHash:         hex.EncodeToString(v.headHash),
	}
	if v.last != nil {
		r.LastSequence = v.last.GetSequence()
	}
	return r
}

// CheckHead compares the last verified event with the stored chain head
// (sequence and hash), which catches events removed from the end.
func (v *Verifier) CheckHead(seq uint64, hash []byte) {
	if v.badSeq != 0 {
		return
	}
	var lastSeq uint64
	var lastHash []byte
	if v.last != nil {
		lastSeq, lastHash = v.last.GetSequence(), v.last.GetHash()
	}
	if seq != lastSeq || !bytes.Equal(hash, lastHash) {
		v.badSeq = lastSeq + 1
		v.badWhy = fmt.Sprintf("chain head says event %d (hash %s) but the log ends at event %d: events were removed from the end", seq, short(hash), lastSeq)
	}
}

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
