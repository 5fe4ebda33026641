package agent

// The loop's side of health truth: it judges the managed paths, hands them
// to the prober, takes the probes' outcomes, and moves the host between
// IN_SYNC and DEGRADED.

import (
	"context"
	"slices"
	"strings"
	"time"

	"github.com/mpfleet/mpfleet/internal/policy"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
)

// settleHealth sets IN_SYNC or DEGRADED by the problems known now; the
// last error carries the problems' messages.
func (l *loop) settleHealth() {
	ps := l.problems()
	if len(ps) > 0 {
		l.setState(pb.SyncState_SYNC_STATE_DEGRADED, strings.Join(policy.ProblemMessages(ps), "; "))
		return
	}
	l.setState(pb.SyncState_SYNC_STATE_IN_SYNC, "")
}

// problems are everything that keeps the host from running its policy as
// asked: ops held back, what the policy could not realize, broken paths.
func (l *loop) problems() []*pb.HostProblem {
	var out []*pb.HostProblem
	for _, h := range l.heldNotes {
		out = append(out, &pb.HostProblem{Code: pb.HostProblem_CODE_MANAGEMENT_PATH_PROTECTED, Message: h})
	}
	return slices.Concat(out, l.rendProblems, l.pathProblems)
}

// setPaths takes the paths, probes and problems of a render and judges the
// paths; pushProbes hands them to the prober, once the kernel holds what
// the render asks.
func (l *loop) setPaths(paths []policy.Path, targets []probeTarget, problems []*pb.HostProblem) {
	l.paths, l.targets, l.rendProblems = paths, targets, problems
	l.results.forget(paths, targets)
	l.judgePaths()
}

// pushProbes hands the paths that are up and the probes to the prober; a
// changed set is probed at once.
func (l *loop) pushProbes() {
	spec := probeSpec{targets: l.targets, gen: l.probeGen}
	for _, p := range l.paths {
		spec.paths = append(spec.paths, probePath{key: pathKey{p.Addr.Addr(), p.IfIndex}, up: p.Up && (!p.Routed || p.Gateway.IsValid())})
	}
	if len(l.targets) == 0 {
		spec.paths = nil
	}
	l.a.prober.set(spec)
}

func (l *loop) judgePaths() {
	names := map[int]string{}
	for _, i := range policy.InterfacesFromFacts(l.facts) {
		names[i.Index] = i.Name
	}
	l.pathStatus, l.pathProblems = pathStatuses(l.paths, l.targets, l.results, names, time.Now())
	l.a.metrics.setPaths(l.pathStatus)
}

// pathsChanged reports whether the paths' states differ from the last
// report's.
func (l *loop) pathsChanged() bool {
	return !l.sentPathsOnce || !samePaths(l.pathStatus, l.sentPaths)
}

// onProbes takes a probe round's outcomes: a path whose state changed is
// reported at once, and the host moves between IN_SYNC and DEGRADED.
func (l *loop) onProbes(ctx context.Context, outs []probeOutcome) {
	if l.effective == nil {
		return
	}
	l.results.merge(outs, l.paths, l.probeGen)
	l.judgePaths()
	before, beforeErr := l.state, l.lastError
	if (l.state == pb.SyncState_SYNC_STATE_IN_SYNC || l.state == pb.SyncState_SYNC_STATE_DEGRADED) && len(l.heldNotes) == 0 && l.refused == "" {
		l.settleHealth()
	}
	if l.state != before || l.lastError != beforeErr || l.pathsChanged() {
		l.sendReport(ctx)
	}
}
