package controller

// Propagation latency: how long a change takes to reach a host. When a
// change this replica watches happen gives a connected host a new revision
// — a group's new policy revision, a rollout moving the host, new labels
// moving it to another group — the host's session remembers the revision
// and when the change was committed: the store's timestamp of the policy
// revision (the group's update_time, written in the same transaction), or,
// for a change without one (host targets, labels), the moment this replica
// saw it. The first report of the host that holds that revision (IN_SYNC or
// DEGRADED at it) observes the time since in
// mpfleet_controller_propagation_seconds: once per host and revision. A
// host that connects already assigned a revision is not observed: that is
// a reconnect, not a propagation.

import (
	"strings"
	"time"

	"github.com/mpfleet/mpfleet/internal/store"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
)

// revCommit is a group's policy revision and when the store committed it.
type revCommit struct {
	rev int64
	at  time.Time
}

// noteCommitLocked remembers the commit time of a group's new policy
// revision seen in ev, for the reassignment that follows (h.mu held).
func (h *hub) noteCommitLocked(ev store.Event) {
	if h.c.metrics == nil || ev.GroupID == "" || ev.Group == nil {
		return
	}
	if prev, ok := h.groups[ev.GroupID]; ok && prev.GetPolicyRevision() >= ev.Group.GetPolicyRevision() {
		return
	}
	if h.fresh == nil {
		h.fresh = map[string]revCommit{}
	}
	h.fresh[ev.GroupID] = revCommit{rev: ev.Group.GetPolicyRevision(), at: ev.Group.GetUpdateTime().AsTime()}
}

// expectLocked starts timing the propagation of d to s, whose desired
// configuration a change just set to d (h.mu held).
func (h *hub) expectLocked(s *session, d *pb.DesiredConfig) {
	if h.c.metrics == nil {
		return // nothing observes it
	}
	start := time.Now()
	rev := d.GetRevision()
	if c, ok := h.fresh[strings.TrimPrefix(d.GetGroup(), "groups/")]; ok && c.rev == rev && c.at.Before(start) {
		start = c.at
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if d.GetAssignment() != pb.DesiredConfig_ASSIGNMENT_MANAGED || s.status.GetAppliedRevision() == rev {
		s.propRev = 0 // nothing to wait for
		return
	}
	s.propRev, s.propStart = rev, start
}

// observePropagation observes the propagation to s when its new status st
// holds the revision s waits for.
func (h *hub) observePropagation(s *session, st *pb.Host) {
	m := h.c.metrics
	if m == nil {
		return
	}
	switch st.GetSyncState() {
	case pb.SyncState_SYNC_STATE_IN_SYNC, pb.SyncState_SYNC_STATE_DEGRADED:
	default:
		return
	}
	s.mu.Lock()
	rev, start := s.propRev, s.propStart
	if rev == 0 || st.GetAppliedRevision() != rev {
		s.mu.Unlock()
		return
	}
	s.propRev = 0
	s.mu.Unlock()
	m.propagation.Observe(max(time.Since(start), 0).Seconds())
}
