package controller

// Host status: what an agent reports, stored (its events: hubaudit.go).

import (
	"context"
	"slices"

	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// report takes an agent's report into the host's status in memory; its
// writer stores it (hubwriter.go). A report that would make the status over
// maxHostStatusSize is refused: logged, and the status stays as it was.
func (h *hub) report(_ context.Context, s *session, r *pb.AgentReport) error {
	defer h.reports.Add(1)
	if err := validateReport(r); err != nil {
		h.log.Warn("agent sent an invalid report; ignored", "host", s.id, "err", err)
		return nil
	}
	s.mu.Lock()
	prev := s.status
	s.mu.Unlock()
	// A shallow copy: statuses are never changed once made, and the
	// report's fields replace the copy's.
	st := shallowHost(prev)
	st.SyncState = r.GetSyncState()
	st.AppliedRevision = r.GetAppliedRevision()
	st.Applied = r.GetApplied()
	st.Health = r.GetHealth()
	st.LastError = r.GetLastError()
	st.LastPlan = r.GetLastPlan()
	st.ExcludedAddresses = r.GetExcludedAddresses()
	st.Problems = r.GetProblems()
	if r.GetFacts() != nil {
		st.Facts = r.GetFacts()
	}
	st.LastSeenTime = timestamppb.Now()
	if n := proto.Size(st); n > maxHostStatusSize {
		h.log.Warn("agent report refused: it makes the host's status too large; the stored status stays as it was", "host", s.id, "bytes", n, "limit", maxHostStatusSize)
		return nil
	}
	h.observePropagation(s, st)
	h.setStatus(s, st, reportChange(prev, st))
	return nil
}

// reportChange says whether a report changed what of a host's status is
// written at once — all it sets but health counters and the last-seen time
// — from prev to st. (Field by field, without copies: this runs for every
// report.)
func reportChange(prev, st *pb.Host) bool {
	return st.GetSyncState() != prev.GetSyncState() || st.GetAppliedRevision() != prev.GetAppliedRevision() ||
		st.GetLastError() != prev.GetLastError() || !slices.Equal(st.GetExcludedAddresses(), prev.GetExcludedAddresses()) ||
		!same(st.GetApplied(), prev.GetApplied()) || !same(st.GetFacts(), prev.GetFacts()) ||
		!slices.EqualFunc(st.GetLastPlan(), prev.GetLastPlan(), same[*pb.PlanOperation]) ||
		!slices.EqualFunc(st.GetProblems(), prev.GetProblems(), same[*pb.HostProblem]) ||
		!samePathStates(st.GetHealth().GetPaths(), prev.GetHealth().GetPaths())
}

// same says whether a and b are equal messages (at once when they are one).
func same[M proto.Message](a, b M) bool {
	return proto.Message(a) == proto.Message(b) || proto.Equal(a, b)
}
