package agent

// Reports and events: what the loop tells the controller.
//
// Events are numbered (the hello's event_epoch, chosen at start, then a
// sequence) and kept until the controller acknowledges them
// (EventsRecorded: in the audit log). What is not acknowledged when a
// stream ends is sent again, in order, on the next one, to whichever
// replica; the controller records an event it has already once. At most
// maxPending are kept: beyond, the oldest is dropped, logged. A controller
// older than acknowledgements sends none: what was sent to it is done, as
// before them.

import (
	"context"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/mpfleet/mpfleet/internal/policy"
	"github.com/mpfleet/mpfleet/internal/reconcile"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"google.golang.org/protobuf/proto"
)

// eventLog numbers the agent's events and holds what the controller
// acknowledged of them.
type eventLog struct {
	once  sync.Once
	epoch uint64
	next  uint64        // the last sequence given (the loop's)
	acked atomic.Uint64 // the highest sequence acknowledged
}

// epochOf returns the epoch of this run's events: random, not zero.
func (e *eventLog) epochOf() uint64 {
	e.once.Do(func() {
		for e.epoch == 0 {
			e.epoch = rand.Uint64()
		}
	})
	return e.epoch
}

// ack notes that the controller recorded every event up to seq.
func (e *eventLog) ack(seq uint64) {
	for {
		old := e.acked.Load()
		if seq <= old || e.acked.CompareAndSwap(old, seq) {
			return
		}
	}
}

// pendingEvent is an event not acknowledged yet, and the session it was
// last sent on (nil: not sent).
type pendingEvent struct {
	ev *pb.AgentEvent
	on *session
}

// sendEvent numbers ev, keeps it until it is acknowledged, and sends it if
// there is a session.
func (l *loop) sendEvent(ev *pb.AgentEvent) {
	l.a.evlog.next++
	ev.Sequence = l.a.evlog.next
	l.forgetAcked()
	if len(l.pending) == maxPending {
		if old := l.pending[0]; old.on == nil || old.on.acking.Load() {
			l.log.Warn("too many events the controller has not acknowledged; the oldest is dropped, not recorded in the audit log",
				"kind", old.ev.GetKind().String(), "sequence", old.ev.GetSequence(), "kept", maxPending)
		}
		l.pending = l.pending[1:]
	}
	l.pending = append(l.pending, l.sendPending(ev))
}

func (l *loop) sendPending(ev *pb.AgentEvent) pendingEvent {
	p := pendingEvent{ev: ev}
	if l.send(&pb.ConnectRequest{Kind: &pb.ConnectRequest_Event{Event: ev}}) {
		p.on = l.sess
	}
	return p
}

// resendEvents sends the events not acknowledged again, in order, on a new
// session; those sent on a session of a controller that acknowledges none
// are done.
func (l *loop) resendEvents() {
	l.forgetAcked()
	old := l.pending
	l.pending = nil
	for _, p := range old {
		if p.on != nil && !p.on.acking.Load() {
			continue
		}
		l.pending = append(l.pending, l.sendPending(p.ev))
	}
}

// forgetAcked drops the events acknowledged.
func (l *loop) forgetAcked() {
	acked := l.a.evlog.acked.Load()
	l.pending = slices.DeleteFunc(l.pending, func(p pendingEvent) bool { return p.ev.GetSequence() <= acked })
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
