package agent

// Reports and events: what the loop tells the controller.

import (
	"context"

	"github.com/mpfleet/mpfleet/internal/policy"
	"github.com/mpfleet/mpfleet/internal/reconcile"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"google.golang.org/protobuf/proto"
)

func (l *loop) sendEvent(ev *pb.AgentEvent) {
	if l.send(&pb.ConnectRequest{Kind: &pb.ConnectRequest_Event{Event: ev}}) {
		return
	}
	if len(l.pending) == maxPending {
		l.pending = l.pending[1:]
	}
	l.pending = append(l.pending, ev)
}

func (l *loop) event(kind pb.AgentEvent_Kind, d *pb.DesiredConfig, msg string, ops reconcile.Ops) {
	l.log.Info("event", "kind", kind.String(), "group", d.GetGroup(), "revision", d.GetRevision(), "msg", msg, "ops", len(ops))
	l.events++
	l.sendEvent(&pb.AgentEvent{
		Kind: kind, Group: d.GetGroup(), Revision: d.GetRevision(), Message: truncate(msg, maxReportError),
		Operations: capOps(ops),
	})
}

func capOps(ops reconcile.Ops) []*pb.PlanOperation {
	p := policy.OpsToProto(ops)
	if len(p) > maxReportPlan {
		p = p[:maxReportPlan]
	}
	return p
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-3] + "..."
}

func (l *loop) sendReport(ctx context.Context) {
	if l.sess == nil {
		return
	}
	r := &pb.AgentReport{
		SyncState: l.state,
		LastError: truncate(l.lastError, maxReportError),
		LastPlan:  capOps(l.lastPlan),
		Applied:   l.applied,
	}
	if l.lastGood != nil {
		r.Group, r.AppliedRevision = l.lastGood.GetGroup(), l.lastGood.GetRevision()
	}
	if l.a.opts.DryRun && l.dryRevision != 0 {
		r.Group, r.AppliedRevision = l.effective.GetGroup(), l.dryRevision
	}
	for _, a := range l.excluded {
		r.ExcludedAddresses = append(r.ExcludedAddresses, a.String())
	}
	if h, err := l.a.opts.System.Health(ctx); err == nil {
		l.a.metrics.health.offer(h)
		r.Health = h
	} else {
		l.log.Debug("health", "err", err)
	}
	if len(l.pathStatus) > 0 {
		if r.Health == nil {
			r.Health = &pb.MptcpHealth{}
		}
		r.Health.Paths = l.pathStatus
	}
	for _, p := range l.problems() {
		if len(r.Problems) == maxReportProblems {
			break
		}
		if len(p.GetMessage()) > maxProblemMessage {
			p = proto.CloneOf(p)
			p.Message = truncate(p.GetMessage(), maxProblemMessage)
		}
		r.Problems = append(r.Problems, p)
	}
	l.sentPaths, l.sentPathsOnce = l.pathStatus, true
	if l.facts != nil && !proto.Equal(l.facts, l.sentFacts) && !proto.Equal(l.facts, l.sess.helloFacts) {
		r.Facts = l.facts
	}
	if l.send(&pb.ConnectRequest{Kind: &pb.ConnectRequest_Report{Report: r}}) && r.Facts != nil {
		l.sentFacts = r.Facts
	}
}

// setState sets the sync state and last error.
func (l *loop) setState(s pb.SyncState, lastError string) {
	if s != l.state || lastError != l.lastError {
		l.log.Info("sync state", "state", s.String(), "error", lastError)
	}
	l.state, l.lastError = s, lastError
	l.a.metrics.setSyncState(s)
}
