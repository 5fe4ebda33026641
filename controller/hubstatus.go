package controller

// Host status: what an agent reports, stored; events of note, audited.

import (
	"context"
	"errors"
	"time"

	"github.com/mpfleet/mpfleet/internal/store"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

func (h *hub) report(ctx context.Context, s *session, r *pb.AgentReport) error {
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
	s.mu.Lock()
	s.status = st
	s.mu.Unlock()
	return h.writeStatus(ctx, s, false)
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

// writeStatus persists a host's status: at once when anything but health
// counters and the last-seen time changed (a path's state, a problem), else
// at most every HealthWriteInterval.
func (h *hub) writeStatus(ctx context.Context, s *session, force bool) error {
	s.mu.Lock()
	st := s.status
	if !force && s.lastWritten != nil && time.Since(s.lastWrite) < h.opts.HealthWriteInterval {
		a := proto.Clone(st).(*pb.Host)
		b := proto.Clone(s.lastWritten).(*pb.Host)
		// Path states are not counters: a change is written at once.
		a.Health, b.Health = pathStates(a.Health), pathStates(b.Health)
		a.LastSeenTime, b.LastSeenTime = nil, nil
		if proto.Equal(a, b) {
			s.mu.Unlock()
			return nil
		}
	}
	s.lastWritten, s.lastWrite = st, time.Now()
	s.mu.Unlock()
	if _, err := h.c.store.PutHost(ctx, s.id, st); err != nil {
		if errors.Is(err, context.Canceled) {
			return err
		}
		h.log.Warn("write host status", "host", s.id, "err", err)
	}
	return nil
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
