package controller

// Host status: what an agent reports, stored; events of note, audited.

import (
	"context"

	"github.com/mpfleet/mpfleet/internal/store"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
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
	st := proto.Clone(s.status).(*pb.Host)
	s.mu.Unlock()
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
	s.setStatus(st)
	return nil
}

// pathStates is what of h is written at once when it changes: the paths'
// states, without when they were checked or how long a probe took.
func pathStates(h *pb.MptcpHealth) *pb.MptcpHealth {
	if len(h.GetPaths()) == 0 {
		return nil
	}
	out := &pb.MptcpHealth{}
	for _, p := range h.GetPaths() {
		q := proto.Clone(p).(*pb.PathStatus)
		q.LastCheckTime, q.ProbeLatency = nil, nil
		out.Paths = append(out.Paths, q)
	}
	return out
}

func (h *hub) recordEvent(ctx context.Context, s *session, caller Caller, action string, result pb.AuditResult, ev *pb.AgentEvent) {
	after, _ := anypb.New(ev)
	resource := ev.GetGroup()
	if resource == "" {
		resource = store.HostName(s.id)
	}
	actor := caller.Actor // the authenticated identity, never a name the agent gives
	if caller.Anonymous {
		actor = "agent:" + s.id
	}
	a := &pb.AuditEvent{
		Actor: actor, Action: action, Resource: resource, Host: store.HostName(s.id),
		After: after, Result: result, PeerAddress: caller.Peer, RequestId: caller.RequestID,
		Reason: ev.GetMessage(), StatusCode: "OK",
	}
	if result == pb.AuditResult_AUDIT_RESULT_FAILURE {
		a.StatusCode, a.Error = "FAILED", ev.GetMessage()
	}
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), auditTimeout)
	defer cancel()
	if _, err := h.c.store.AppendAudit(actx, a); err != nil {
		h.log.Error("audit: cannot record agent event", "host", s.id, "action", action, "err", err)
	}
}
