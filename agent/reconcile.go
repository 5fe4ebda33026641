package agent

// A reconcile pass: render, read, plan, apply, confirm, settle.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/mpfleet/mpfleet/internal/mptcp"
	"github.com/mpfleet/mpfleet/internal/policy"
	"github.com/mpfleet/mpfleet/internal/reconcile"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
)

// maxChase bounds the reconciles in a row that a kernel still differing
// after an apply triggers.
const maxChase = 3

// reconcile brings the kernel to the effective configuration rendered
// against the interfaces present now: render, read, plan, apply (journaled),
// confirm a new revision with the controller, read back, report.
func (l *loop) reconcile(ctx context.Context, why reason) {
	defer l.endPass(why, l.events, time.Now())
	// What the fast path knew is read anew; changes from now on are for
	// the fast path to take once this pass has left a base (hotplug.go).
	l.stopHotplug()
	for idx := range l.a.takeDown() {
		l.flapped[idx] = true
	}
	d := l.effective
	if d == nil {
		return // hands off: unmanaged, conflict, or nothing desired yet
	}
	newRev := !sameConfig(d, l.lastGood)
	facts, err := l.a.opts.System.Facts(ctx)
	if err != nil {
		l.failed(ctx, d, "read the host's facts: "+err.Error(), nil, false)
		return
	}
	l.facts = facts
	ifaces := l.rememberGateways(policy.InterfacesFromFacts(facts))
	for _, i := range ifaces {
		if !i.Up {
			l.flapped[i.Index] = true
		}
	}
	r, err := policy.Render(d.GetPolicy(), ifaces)
	if err != nil {
		l.failed(ctx, d, "render: "+err.Error(), nil, newRev)
		return
	}
	cfg := r.Config
	k, err := l.kernelFor(ctx, cfg.Range)
	if err != nil {
		l.failed(ctx, d, err.Error(), nil, false)
		return
	}
	actual, err := k.Read(ctx, cfg)
	if err != nil {
		l.failed(ctx, d, "read the kernel: "+err.Error(), nil, false)
		return
	}
	l.sawKernel(actual)
	// A sysctl the kernel lacks is reported, and the rest applied. Rules and
	// routes that mpfleet did not make inside its range are reported, left
	// alone and kept apart from: an address whose table or priority one
	// holds moves to a free one.
	cfg, lacks := cfg.WithoutUnsupported(actual)
	cfg, moves := reconcile.AvoidForeign(cfg, actual)
	rendered, _ := json.Marshal(cfg)
	paths := movePaths(r.Paths, moves)
	l.setPaths(paths, probeTargets(d.GetPolicy().GetProbes()), slices.Concat(r.Problems, policy.SysctlProblems(lacks),
		conflictProblems(cfg, actual, cfg.OwnedRange(), moves, paths)))
	ops, err := reconcile.Plan(cfg, actual)
	if err != nil {
		l.failed(ctx, d, "plan: "+err.Error(), nil, newRev)
		return
	}
	drift := len(ops) > 0 && !newRev && bytes.Equal(rendered, l.lastRendered)
	ops = append(ops, l.recreate(cfg, actual, ops, ifaces)...)
	ops, held := protect(ops, actual, l.localAddr())
	moved := l.guardPath(ctx, actual, ops)
	l.excluded = r.Excluded

	if l.a.opts.DryRun {
		l.pushProbes()
		l.lastPlan = ops
		l.applied = policy.AppliedFromState(actual, ifaces)
		l.dryRevision = 0
		if moved != "" {
			held = append(held, moved)
		}
		before, beforeErr := l.state, l.lastError
		if len(ops) == 0 {
			if len(held) == 0 {
				l.dryRevision = d.GetRevision()
			}
			l.heldNotes = nil
			l.settleHealth()
		} else {
			l.setState(pb.SyncState_SYNC_STATE_DRIFTED, strings.Join(slices.Concat(held, policy.ProblemMessages(l.problems())), "; "))
		}
		if l.state != before || l.lastError != beforeErr || why == reasonDesired || len(ops) > 0 || l.pathsChanged() {
			l.sendReport(ctx)
		}
		return
	}

	if len(ops) == 0 {
		l.pushProbes()
		l.lastRendered = rendered
		l.applied = policy.AppliedFromState(actual, ifaces)
		l.clearFlapped(ifaces)
		l.startHotplug(ctx, d, ifaces, k, actual)
		l.recordEndpoints(actual)
		if newRev {
			l.commit(d)
			l.event(pb.AgentEvent_KIND_APPLIED, d, fmt.Sprintf("%s revision %d applied: the kernel already held it", d.GetGroup(), d.GetRevision()), nil)
		}
		before := l.state
		beforeErr := l.lastError
		l.settle(held)
		if newRev || why == reasonDesired || l.state != before || l.lastError != beforeErr || l.pathsChanged() {
			l.sendReport(ctx)
		}
		return
	}

	if moved != "" {
		l.refusePlan(ctx, d, why, moved, ops, held)
		return
	}
	// A new revision, and the restore at start, must be confirmed.
	confirm := newRev || why == reasonRestore
	l.lastPlan = ops
	switch {
	case confirm:
		l.setState(pb.SyncState_SYNC_STATE_APPLYING, "")
		l.sendReport(ctx)
	case drift:
		l.setState(pb.SyncState_SYNC_STATE_DRIFTED, "")
		l.sendReport(ctx)
	}
	// Probe rounds begun against the kernel as it was are dropped; the
	// paths are probed again once it holds the new state.
	l.probeGen++
	if err = l.recordBefore(ops); err == nil {
		err = reconcile.Apply(ctx, k, ops)
	}
	for try := 0; err != nil && kernelRaced(err) && try < 2; try++ {
		// The kernel changed between the read and the apply (an endpoint it
		// made itself for a join took an address or an ID): the journal
		// undid the apply; read, plan and apply again.
		l.log.Info("the kernel changed during the apply; planning again", "err", err)
		now, rerr := k.Read(ctx, cfg)
		if rerr != nil {
			break
		}
		again, perr := reconcile.Plan(cfg, now)
		if perr != nil {
			break
		}
		again = append(again, l.recreate(cfg, now, again, ifaces)...)
		again, held = protect(again, now, l.localAddr())
		if l.guardPath(ctx, now, again) != "" {
			break // the failure stands; the next reconcile refuses the plan
		}
		actual, ops = now, again
		l.lastPlan = ops
		if err = l.recordBefore(ops); err == nil {
			err = reconcile.Apply(ctx, k, ops)
		}
	}
	if err != nil {
		l.pushProbes()
		l.failed(ctx, d, err.Error(), ops, newRev)
		return
	}
	l.log.Debug("applied", "reason", why.String(), "ops", ops.String())
	after, err := k.Read(ctx, cfg)
	if err == nil {
		l.applied = policy.AppliedFromState(after, ifaces)
		l.sawKernel(after)
	}
	if confirm && !l.confirm(ctx) {
		l.rollBack(ctx, d, why, k, cfg, actual, ifaces)
		l.pushProbes()
		return
	}
	l.lastRendered = rendered
	l.clearFlapped(ifaces)
	if err == nil {
		l.startHotplug(ctx, d, ifaces, k, after)
		l.recordEndpoints(after)
	}
	switch {
	case why == reasonRestore:
		l.event(pb.AgentEvent_KIND_RESTORED, d, fmt.Sprintf("%s revision %d re-applied from the state dir at start", d.GetGroup(), d.GetRevision()), ops)
	case newRev:
		l.commit(d)
		l.event(pb.AgentEvent_KIND_APPLIED, d, fmt.Sprintf("%s revision %d applied", d.GetGroup(), d.GetRevision()), ops)
	case drift:
		l.a.metrics.driftRepairs.Inc()
		l.event(pb.AgentEvent_KIND_DRIFT_REPAIRED, d, "the kernel had changed under the agent; repaired", ops)
	}
	// Check the paths as the kernel is now.
	l.pushProbes()
	l.a.prober.now()
	l.settle(held)
	if err == nil {
		// Something may have changed while applying (and its event been
		// merged into this reconcile's): look again soon, but do not chase
		// a kernel that does not take what it is given.
		if rest, perr := reconcile.Plan(cfg, after); perr == nil {
			if rest, _ = protect(rest, after, l.localAddr()); len(rest) == 0 {
				l.chase = 0
			} else if l.chase++; l.chase <= maxChase {
				l.a.kick()
			} else {
				l.log.Warn("the kernel does not hold what was applied; waiting for the next resync", "left", rest.String())
			}
		}
	}
	l.sendReport(ctx)
}

// kernelRaced reports whether an apply failed because the kernel changed
// its endpoints between the read and the apply: an address or ID taken.
func kernelRaced(err error) bool {
	return errors.Is(err, mptcp.ErrEndpointExists) || errors.Is(err, syscall.EBUSY)
}

// settle sets the state after a reconcile that left the kernel as desired,
// except for ops held back to keep the controller reachable: FAILED while
// the controller's latest configuration is refused or ops are held back,
// else DEGRADED with problems, else IN_SYNC.
func (l *loop) settle(held []string) {
	l.heldNotes = held
	notes := policy.ProblemMessages(l.problems()) // the held ops' notes first
	if l.refused != "" {
		l.setState(pb.SyncState_SYNC_STATE_FAILED, strings.Join(append([]string{l.refused}, notes...), "; "))
		return
	}
	if len(held) > 0 {
		l.setState(pb.SyncState_SYNC_STATE_FAILED, strings.Join(notes, "; "))
		return
	}
	l.lastFailMsg = ""
	l.settleHealth()
}

// failed records a failed reconcile: state FAILED with msg, an APPLY_FAILED
// event unless the same failure was just reported, and a report. With hold
// (a new revision that cannot be planned or applied) the revision is not
// tried again until the controller sends another, and the last good one
// stays maintained; other failures (of the revision in force, or reading the
// host) are retried at the next change or resync.
func (l *loop) failed(ctx context.Context, d *pb.DesiredConfig, msg string, ops reconcile.Ops, hold bool) {
	l.log.Warn("reconcile failed", "group", d.GetGroup(), "revision", d.GetRevision(), "err", msg)
	l.a.metrics.applyFailures.Inc()
	if ops != nil {
		l.lastPlan = ops
	}
	l.setState(pb.SyncState_SYNC_STATE_FAILED, msg)
	if msg != l.lastFailMsg {
		l.event(pb.AgentEvent_KIND_APPLY_FAILED, d, msg, ops)
		l.lastFailMsg = msg
	}
	if hold {
		l.held, l.effective, l.refused = d, l.lastGood, msg
	}
	l.sendReport(ctx)
}
