package agent

// The loop: the agent's single goroutine that owns the kernel and all
// state, and what it does with a session and a desired configuration.

import (
	"context"
	"log/slog"
	"net/netip"
	"strings"
	"time"

	"github.com/mpfleet/mpfleet/internal/policy"
	"github.com/mpfleet/mpfleet/internal/reconcile"
	"github.com/mpfleet/mpfleet/internal/route"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"google.golang.org/protobuf/proto"
)

// reason is why a reconcile runs.
type reason int

const (
	reasonDesired reason = iota // a desired configuration arrived
	reasonEvent                 // an address or link changed
	reasonResync                // the periodic resync
	reasonRestore               // boot: the last good configuration
)

func (r reason) String() string {
	switch r {
	case reasonDesired:
		return "desired"
	case reasonEvent:
		return "event"
	case reasonResync:
		return "resync"
	case reasonRestore:
		return "restore"
	}
	return "unknown"
}

// Limits of what a report carries (the controller rejects more).
const (
	maxReportError    = 4096
	maxReportPlan     = 1024
	maxReportProblems = 64
	maxProblemMessage = 1024
	maxPending        = 64
)

// loop is the agent's single goroutine that owns the kernel and all state:
// every reconcile, report and event happens on it, in order.
type loop struct {
	a   *Agent
	log *slog.Logger

	sess   *session
	local  netip.Addr // local address of the last controller connection
	remote netip.Addr // the controller's address on it

	effective *pb.DesiredConfig // what the kernel is kept at; nil: hands off
	lastGood  *pb.DesiredConfig // last MANAGED config applied and confirmed
	held      *pb.DesiredConfig // rolled back: not re-applied until another comes

	kernel       reconcile.Kernel
	krange       route.Range
	lastRendered []byte       // JSON of the HostConfig last brought about
	flapped      map[int]bool // links that were down since their endpoints were made
	gateways     map[gwKey][]netip.Addr

	state     pb.SyncState
	lastError string
	// refused says why the controller's latest desired configuration is not
	// the one applied (rejected, or rolled back): the state stays FAILED
	// with it until another configuration comes.
	refused     string
	lastFailMsg string // of the last APPLY_FAILED event, not to repeat it
	lastPlan    reconcile.Ops
	excluded    []netip.Addr
	applied     *pb.AppliedState
	facts       *pb.HostFacts
	sentFacts   *pb.HostFacts
	dryRevision int64 // dry run: the revision the kernel matches
	pending     []pendingEvent
	chase       int    // reconciles in a row that left something to do
	passes      uint64 // reconcile passes ended (pass.go)
	events      uint64 // events emitted

	// Health truth: the managed paths of the last render, the probes, their
	// latest outcomes, what the policy could not realize, and the judged
	// path states and problems.
	paths         []policy.Path
	targets       []probeTarget
	results       pathResults
	rendProblems  []*pb.HostProblem // of the render and the kernel's missing sysctls
	heldNotes     []string          // ops held back to keep the controller reachable
	pathStatus    []*pb.PathStatus
	pathProblems  []*pb.HostProblem
	sentPaths     []*pb.PathStatus // as last reported
	sentPathsOnce bool
	probeGen      uint64 // bumped before every apply; older rounds are dropped

	// rec is the state dir's records for --cleanup, read at first use
	// (record.go).
	rec *records
}

func (l *loop) run(ctx context.Context) {
	resync := time.NewTicker(l.a.opts.ResyncInterval)
	defer resync.Stop()
	report := time.NewTicker(l.a.opts.ReportInterval)
	defer report.Stop()
	var debounce <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case s := <-l.a.sessionC:
			l.connected(ctx, s)
		case <-l.sessDone():
			l.sess = nil
		case <-l.a.desiredC:
			if d := l.a.takeDesired(); d != nil {
				l.onDesired(ctx, d)
			}
		case <-l.a.problemC:
			l.onProblems()
		case <-l.a.trigger:
			l.hotplug(ctx)
			if debounce == nil {
				debounce = time.After(l.a.opts.Debounce)
			}
		case <-debounce:
			debounce = nil
			l.reconcile(ctx, reasonEvent)
		case <-resync.C:
			l.reconcile(ctx, reasonResync)
		case <-report.C:
			l.sendReport(ctx)
		case <-l.a.confirmC:
			// A late echo: nothing waits for it any more.
		case outs := <-l.a.prober.out:
			l.onProbes(ctx, outs)
		}
	}
}

func (l *loop) sessDone() <-chan struct{} {
	if l.sess == nil {
		return nil
	}
	return l.sess.done
}

// connected adopts a new session: queued events, then the current state.
func (l *loop) connected(ctx context.Context, s *session) {
	l.sess = s
	if s.local.IsValid() {
		l.local, l.remote = s.local, s.remote
	}
	l.sentFacts = nil
	l.resendEvents()
	l.sendReport(ctx)
}

// send sends m on the session, if there is one that works.
func (l *loop) send(m *pb.ConnectRequest) bool {
	if l.sess == nil {
		return false
	}
	if err := l.sess.send(m); err != nil {
		l.log.Debug("send to the controller", "err", err)
		l.sess = nil // connectLoop sees the stream end and reconnects
		return false
	}
	return true
}

// boot takes the last good configuration from the state dir, and reports
// whether there is one to restore (Run re-applies it at once, before and
// without the controller, which must confirm it).
func (l *loop) boot() bool {
	if l.a.opts.StateDir == "" {
		return false
	}
	d, err := loadState(l.a.opts.StateDir)
	if err != nil {
		l.log.Error("cannot read the state dir; starting without a last good configuration", "err", err)
		l.setState(pb.SyncState_SYNC_STATE_FAILED, err.Error())
		return false
	}
	if d == nil || d.GetAssignment() != pb.DesiredConfig_ASSIGNMENT_MANAGED {
		return false
	}
	l.log.Info("restoring the last good configuration", "group", d.GetGroup(), "revision", d.GetRevision())
	l.lastGood, l.effective = d, d
	l.publishApplied()
	return true
}

func (l *loop) publishApplied() {
	if l.lastGood == nil {
		l.a.applied.Store(nil)
		return
	}
	l.a.applied.Store(&appliedRevision{group: l.lastGood.GetGroup(), revision: l.lastGood.GetRevision()})
}

// commit records d as the last good configuration, on disk too.
func (l *loop) commit(d *pb.DesiredConfig) {
	l.lastGood = d
	l.publishApplied()
	l.save(d)
}

func (l *loop) save(d *pb.DesiredConfig) {
	if l.a.opts.StateDir == "" || l.a.opts.DryRun {
		return
	}
	if err := saveState(l.a.opts.StateDir, d, time.Now()); err != nil {
		l.log.Error("cannot save the state", "err", err)
	}
}

// sameConfig reports whether a and b are the same revision of the same
// group's policy.
func sameConfig(a, b *pb.DesiredConfig) bool {
	return a != nil && b != nil && a.GetAssignment() == b.GetAssignment() && a.GetGroup() == b.GetGroup() &&
		a.GetRevision() == b.GetRevision() && proto.Equal(a.GetPolicy(), b.GetPolicy())
}

func (l *loop) onDesired(ctx context.Context, d *pb.DesiredConfig) {
	if err := validateDesired(d); err != nil {
		msg := "desired configuration rejected: " + err.Error()
		l.log.Warn("rejected a desired configuration", "group", d.GetGroup(), "revision", d.GetRevision(), "err", err)
		l.a.metrics.applyFailures.Inc()
		l.refused = msg
		l.setState(pb.SyncState_SYNC_STATE_FAILED, msg)
		l.event(pb.AgentEvent_KIND_APPLY_FAILED, d, msg, nil)
		l.lastFailMsg = msg
		l.publish()
		l.sendReport(ctx)
		return
	}
	switch d.GetAssignment() {
	case pb.DesiredConfig_ASSIGNMENT_UNMANAGED, pb.DesiredConfig_ASSIGNMENT_CONFLICT:
		// Leave the kernel as it is, and do not restore anything at boot.
		l.stopHotplug()
		l.effective, l.held, l.lastRendered, l.lastPlan, l.excluded = nil, nil, nil, nil, nil
		l.lastGood, l.refused = nil, ""
		l.setPaths(nil, nil, nil)
		l.pushProbes()
		l.publishApplied()
		l.save(d)
		if d.GetAssignment() == pb.DesiredConfig_ASSIGNMENT_CONFLICT {
			l.setState(pb.SyncState_SYNC_STATE_CONFLICT, "selected by several groups ("+strings.Join(d.GetConflictingGroups(), ", ")+"); left as it is")
		} else {
			l.setState(pb.SyncState_SYNC_STATE_UNMANAGED, "")
		}
		l.readApplied(ctx)
		l.publish()
		l.sendReport(ctx)
	case pb.DesiredConfig_ASSIGNMENT_MANAGED:
		if sameConfig(d, l.held) {
			// The revision this agent rolled back, sent again (after a
			// reconnect): it stays rolled back until another comes.
			l.sendReport(ctx)
			return
		}
		l.held, l.refused = nil, ""
		l.effective = d
		l.reconcile(ctx, reasonDesired)
	}
}

// onProblems reports connection-level rejections (a message over the size
// limit).
func (l *loop) onProblems() {
	for _, err := range l.a.takeProblems() {
		msg := err.Error()
		l.a.metrics.applyFailures.Inc()
		l.refused = msg
		l.setState(pb.SyncState_SYNC_STATE_FAILED, msg)
		if msg != l.lastFailMsg {
			l.event(pb.AgentEvent_KIND_APPLY_FAILED, nil, msg, nil)
			l.lastFailMsg = msg
		}
	}
	l.publish()
}
