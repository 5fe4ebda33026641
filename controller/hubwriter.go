package controller

// Host status writes, coalesced per host. A report only updates the host's
// status in memory and queues the host for the hub's writer (hubbatch.go),
// which writes the newest status of many hosts in one etcd transaction and
// has at most one write of a host in flight. So a burst of reports makes at
// most two writes (the one in flight, then the newest), an agent's stream
// never waits for etcd, and one host's flood never delays another host. A
// change of anything but health counters and the last-seen time (a path's
// state, the sync state, a problem, labels) is written in the writer's next
// transaction; a change of counters only, at most every
// HealthWriteInterval; a status equal to the last one written, never.
//
// A status that cannot be stored is tried again, with backoff; the agent's
// stream ends with UNAVAILABLE (the agent reconnects and reports again,
// rather than the controller keeping a stale status as if it were stored)
// only once it has failed for StatusFailTimeout, or while the store is
// known to be unhealthy.

import (
	"bytes"
	"slices"
	"time"

	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// AgentReports reports how many agent reports the hub has taken in (valid
// or not), however many status writes they made.
func (c *Controller) AgentReports() int64 { return c.hub.reports.Load() }

// setStatus makes st the newest status of s — prompt: a change to write at
// once, not of counters only — and queues it for the writer.
func (h *hub) setStatus(s *session, st *pb.Host, prompt bool) {
	s.mu.Lock()
	s.status = st
	s.gen++
	if prompt {
		s.promptGen = s.gen
	}
	s.mu.Unlock()
	h.writes.mark(s)
}

// pending is what of a session's status is not yet written.
type pending struct {
	status    *pb.Host // the newest
	gen       uint64   // its change
	changed   bool     // since the last write
	prompt    bool     // a change to write at once among them
	lastWrite time.Time
}

// pending returns what of the status of s is not yet written.
func (s *session) pending() pending {
	s.mu.Lock()
	defer s.mu.Unlock()
	return pending{status: s.status, gen: s.gen, changed: s.gen > s.writtenGen, prompt: s.promptGen > s.writtenGen, lastWrite: s.lastWrite}
}

// wrote records that the status of s as of change gen was written at at.
func (s *session) wrote(gen uint64, at time.Time) {
	s.mu.Lock()
	s.writtenGen, s.lastWrite = max(s.writtenGen, gen), at
	s.mu.Unlock()
}

// due says whether p is to be written now, or else how long until a change
// of counters only is (0: nothing to write).
func (p pending) due(every time.Duration, now time.Time) (bool, time.Duration) {
	switch {
	case !p.changed:
		return false, 0
	case p.prompt:
		return true, 0
	}
	if wait := every - now.Sub(p.lastWrite); wait > 0 {
		return false, wait
	}
	return true, 0
}

// nextWrite decides what to write of a host whose newest status is st, and
// whose status last written (at lastWrite) is last: st, or nil and how long
// until a change of counters only is due (0: nothing to write). It compares
// whole statuses: a stream's first status against the stored one (a report
// says itself what it changed: reportChange).
func nextWrite(st, last *pb.Host, lastWrite time.Time, every time.Duration, now time.Time) (*pb.Host, time.Duration) {
	if st == nil || st == last {
		return nil, 0
	}
	if last == nil {
		return st, 0
	}
	// Path states are not counters: a change is written at once. (Compared
	// in place, without copies: this runs for every report.)
	if !proto.Equal(without(st, "health", "last_seen_time"), without(last, "health", "last_seen_time")) ||
		!samePathStates(st.GetHealth().GetPaths(), last.GetHealth().GetPaths()) {
		return st, 0
	}
	if proto.Equal(st.GetHealth(), last.GetHealth()) && proto.Equal(st.GetLastSeenTime(), last.GetLastSeenTime()) {
		return nil, 0
	}
	if wait := every - now.Sub(lastWrite); wait > 0 {
		return nil, wait
	}
	return st, 0
}

// samePathStates says whether two reports' paths are in the same states:
// equal but for when they were checked and how long a probe took.
func samePathStates(a, b []*pb.PathStatus) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !samePathState(a[i], b[i]) {
			return false
		}
	}
	return true
}

// samePathState compares two paths field by field, but for last_check_time
// and probe_latency, without copies: this runs for every report
// (TestSamePathState fails when PathStatus gains a field this misses).
func samePathState(a, b *pb.PathStatus) bool {
	return a.GetInterface() == b.GetInterface() && a.GetAddress() == b.GetAddress() &&
		a.GetState() == b.GetState() && a.GetGateway() == b.GetGateway() &&
		a.GetTable() == b.GetTable() && a.GetMessage() == b.GetMessage() &&
		bytes.Equal(a.ProtoReflect().GetUnknown(), b.ProtoReflect().GetUnknown())
}

// shallowHost returns a shallow copy of h: it shares h's values, so only
// its own fields may be set (statuses are never changed once made: a change
// is a new copy). Field by field: this runs for every report and every
// host a watch sends (TestShallowHost checks that no field is missed).
func shallowHost(h *pb.Host) *pb.Host {
	c := &pb.Host{
		Name: h.Name, Labels: h.Labels, Facts: h.Facts, Group: h.Group, ConflictingGroups: h.ConflictingGroups,
		DesiredRevision: h.DesiredRevision, AppliedRevision: h.AppliedRevision, SyncState: h.SyncState, LastError: h.LastError,
		Applied: h.Applied, Health: h.Health, Connected: h.Connected, LastSeenTime: h.LastSeenTime, AgentVersion: h.AgentVersion,
		ExcludedAddresses: h.ExcludedAddresses, DryRun: h.DryRun, LastPlan: h.LastPlan, Problems: h.Problems, ReportedLabels: h.ReportedLabels,
	}
	if u := h.ProtoReflect().GetUnknown(); len(u) > 0 {
		c.ProtoReflect().SetUnknown(u)
	}
	return c
}

// without returns a shallow copy of m without the fields named skip: it
// shares m's values, and must not be changed.
func without(m proto.Message, skip ...protoreflect.Name) proto.Message {
	r := m.ProtoReflect()
	c := r.New()
	r.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if !slices.Contains(skip, fd.Name()) {
			c.Set(fd, v)
		}
		return true
	})
	c.SetUnknown(r.GetUnknown())
	return c.Interface()
}
