// Package rollout is the state machine of staged rollouts: which hosts a
// step moves, when a host counts as healthy at its new revision, when a
// rollout halts, rolls back, pauses and ends. It is pure: Advance takes a
// rollout, what the hosts report and the time, and returns the rollout's next
// state, the hosts whose target revision changes, and what happened, for the
// controller to write in one transaction (with the leader fence) and audit.
//
// The order of hosts is stable and documented: by host id, in byte order.
// The canary is the first canary_count (or ceil(canary_percent% of the
// hosts), at least 1) hosts, each batch the next batch_size (or
// ceil(batch_percent%), at least 1). Steps are planned when the rollout
// starts, over the group's hosts connected at that moment; a host that is
// disconnected then, or joins the group later, runs the from-revision until
// the rollout succeeds, then the target with the rest of the group.
package rollout

import (
	"cmp"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Defaults of a strategy's unset fields.
const (
	DefaultCanary       = 1
	DefaultBatchPercent = 25
	DefaultStepTimeout  = 5 * time.Minute
	DefaultBakeTime     = 10 * time.Second
)

// BadCounters are the MPTcpExt counters whose rise during the bake is
// compared with their rise before the move: fallbacks to TCP and MP_JOIN
// failures.
var BadCounters = []string{
	"MPCapableFallbackACK", "MPCapableFallbackSYNACK", "MPFallbackTokenInit", "MPJoinSynTxConnectErr",
}

// Counter tolerance: during the bake, the bad counters may rise by at most
// CounterFactor times their rate before the move, plus CounterSlack events.
const (
	CounterFactor = 2
	CounterSlack  = 2
)

// Host is what the rollout sees of one host of the group.
type Host struct {
	ID        string // host id (not "hosts/...")
	Connected bool
	State     pb.SyncState
	// Applied is the revision the host applied last.
	Applied   int64
	LastError string
	// Problems are "CODE interface address" of its problems.
	Problems []string
	// OKPaths are "interface/address" of its paths in PATH_STATE_OK.
	OKPaths []string
	// Bad is the sum of BadCounters, read at CountersTime.
	Bad          uint64
	CountersTime time.Time
}

// HostFrom reads what the rollout needs from a host's status.
func HostFrom(id string, h *pb.Host, connected bool) Host {
	out := Host{ID: id, Connected: connected, State: h.GetSyncState(), Applied: h.GetAppliedRevision(), LastError: h.GetLastError()}
	for _, p := range h.GetProblems() {
		out.Problems = append(out.Problems, ProblemKey(p))
	}
	for _, p := range h.GetHealth().GetPaths() {
		if p.GetState() == pb.PathState_PATH_STATE_OK {
			out.OKPaths = append(out.OKPaths, p.GetInterface()+"/"+p.GetAddress())
		}
	}
	for _, c := range BadCounters {
		out.Bad += h.GetHealth().GetCounters()[c]
	}
	if t := h.GetHealth().GetReadTime(); t != nil {
		out.CountersTime = t.AsTime()
	}
	return out
}

// ProblemKey names a problem for comparison: code, interface, address.
func ProblemKey(p *pb.HostProblem) string {
	return strings.TrimPrefix(p.GetCode().String(), "CODE_") + " " + p.GetInterface() + " " + p.GetAddress()
}

// Event is one thing that happened, for the audit log.
type Event struct {
	// Action: "rollouts.step_started", "rollouts.host_moved",
	// "rollouts.host_succeeded", "rollouts.host_failed",
	// "rollouts.host_left", "rollouts.halted", "rollouts.rolling_back",
	// "rollouts.host_rolled_back", "rollouts.rolled_back",
	// "rollouts.succeeded", "rollouts.cancelled".
	Action string
	Host   string // "hosts/{id}", when about one host
	// Failure is true for events that record a failure.
	Failure bool
	Message string
}

// Result is what Advance decided.
type Result struct {
	// Rollout is the next state (a copy; the input is not changed).
	Rollout *pb.Rollout
	// Targets maps host ids whose target changes to their new revision.
	Targets map[string]int64
	// Done is true when the rollout reached a terminal state in this
	// advance: the group's default revision becomes DefaultRevision and
	// every override is cleared — except, after a halt without rollback,
	// the hosts the rollout moved, which keep the target.
	Done            bool
	DefaultRevision int64
	Events          []Event
}

// Changed reports whether the result changes anything.
func (r Result) Changed(before *pb.Rollout) bool {
	return len(r.Targets) > 0 || r.Done || len(r.Events) > 0 || !proto.Equal(before, r.Rollout)
}

// Active reports whether a rollout state still moves hosts.
func Active(s pb.Rollout_State) bool {
	switch s {
	case pb.Rollout_STATE_PENDING, pb.Rollout_STATE_RUNNING, pb.Rollout_STATE_PAUSED, pb.Rollout_STATE_ROLLING_BACK:
		return true
	}
	return false
}

// Strategy returns s with the defaults filled in.
func Strategy(s *pb.RolloutStrategy) *pb.RolloutStrategy {
	out := proto.CloneOf(s)
	if out == nil {
		out = &pb.RolloutStrategy{}
	}
	if out.CanaryCount == 0 && out.CanaryPercent == 0 {
		out.CanaryCount = DefaultCanary
	}
	if out.BatchSize == 0 && out.BatchPercent == 0 {
		out.BatchPercent = DefaultBatchPercent
	}
	if out.StepTimeout == nil {
		out.StepTimeout = durationpb.New(DefaultStepTimeout)
	}
	if out.BakeTime == nil {
		out.BakeTime = durationpb.New(DefaultBakeTime)
	}
	return out
}

// share is count, or ceil(percent% of n), at least 1, at most n.
func share(count, percent int32, n int) int {
	k := int(count)
	if k == 0 {
		k = int(math.Ceil(float64(percent) * float64(n) / 100))
	}
	return max(1, min(k, n))
}

// Plan splits hosts (ids) into the steps of s: the canary, then batches, in
// host id order. No hosts, no steps.
func Plan(s *pb.RolloutStrategy, hosts []string) [][]string {
	s = Strategy(s)
	ids := slices.Clone(hosts)
	slices.Sort(ids)
	ids = slices.Compact(ids)
	if len(ids) == 0 {
		return nil
	}
	var steps [][]string
	k := share(s.GetCanaryCount(), s.GetCanaryPercent(), len(ids))
	steps = append(steps, ids[:k])
	ids = ids[k:]
	b := share(s.GetBatchSize(), s.GetBatchPercent(), len(ids)+k)
	for len(ids) > 0 {
		n := min(b, len(ids))
		steps = append(steps, ids[:n])
		ids = ids[n:]
	}
	return steps
}

func hostName(id string) string { return "hosts/" + id }
func hostID(name string) string { return strings.TrimPrefix(name, "hosts/") }

// advancer carries one Advance.
type advancer struct {
	r     *pb.Rollout
	now   time.Time
	hosts map[string]Host
	res   Result
}

func (a *advancer) event(action, host string, failure bool, format string, args ...any) {
	h := ""
	if host != "" {
		h = hostName(host)
	}
	a.res.Events = append(a.res.Events, Event{Action: action, Host: h, Failure: failure, Message: fmt.Sprintf(format, args...)})
}

func (a *advancer) target(id string, rev int64) {
	if a.res.Targets == nil {
		a.res.Targets = map[string]int64{}
	}
	a.res.Targets[id] = rev
}

// Advance moves rollout r on by what hosts (the group's hosts now, by id)
// report at now. Call it whenever host status or the rollout changes, and
// periodically (bake times and step timeouts pass without an event).
func Advance(r *pb.Rollout, hosts map[string]Host, now time.Time) Result {
	a := &advancer{r: proto.CloneOf(r), now: now, hosts: hosts}
	a.r.Strategy = Strategy(a.r.GetStrategy())
	switch a.r.GetState() {
	case pb.Rollout_STATE_PENDING:
		a.start()
	case pb.Rollout_STATE_RUNNING, pb.Rollout_STATE_PAUSED:
		a.run()
	case pb.Rollout_STATE_ROLLING_BACK:
		a.rollBack()
	}
	if !proto.Equal(a.r, r) {
		a.r.UpdateTime = timestamppb.New(now)
	}
	a.res.Rollout = a.r
	return a.res
}

// start plans the steps over the connected hosts and starts the canary.
func (a *advancer) start() {
	var ids []string
	for id, h := range a.hosts {
		if h.Connected {
			ids = append(ids, id)
		}
	}
	for i, step := range Plan(a.r.GetStrategy(), ids) {
		names := make([]string, len(step))
		for j, id := range step {
			names[j] = hostName(id)
		}
		a.r.Steps = append(a.r.Steps, &pb.RolloutStep{Index: int32(i), Hosts: names})
	}
	a.r.State = pb.Rollout_STATE_RUNNING
	a.r.CurrentStep = 0
	if len(a.r.Steps) == 0 {
		a.succeed("no connected host to move; the group's hosts run revision %d from now on", a.r.GetTargetRevision())
		return
	}
	a.run()
}

func (a *advancer) step() *pb.RolloutStep {
	if i := int(a.r.GetCurrentStep()); i >= 0 && i < len(a.r.GetSteps()) {
		return a.r.Steps[i]
	}
	return nil
}

// startStep moves the current step's hosts to the target.
func (a *advancer) startStep() {
	st := a.step()
	st.StartTime = timestamppb.New(a.now)
	kind := "canary"
	if st.GetIndex() > 0 {
		kind = fmt.Sprintf("batch %d", st.GetIndex())
	}
	a.event("rollouts.step_started", "", false, "step %d (%s) started: %d hosts to revision %d", st.GetIndex(), kind, len(st.GetHosts()), a.r.GetTargetRevision())
	var keep []string
	for _, name := range st.GetHosts() {
		id := hostID(name)
		h, ok := a.hosts[id]
		if !ok {
			a.event("rollouts.host_left", id, false, "%s left the group before its step; not moved", name)
			continue
		}
		keep = append(keep, name)
		a.target(id, a.r.GetTargetRevision())
		a.r.MovedHosts = append(a.r.MovedHosts, name)
		a.r.Baselines = append(a.r.Baselines, baseline(h, a.r.GetCreateTime(), a.hostBaselineAtCreate(name), a.now))
		a.event("rollouts.host_moved", id, false, "%s moved to revision %d", name, a.r.GetTargetRevision())
	}
	st.Hosts = keep
}

// run judges the current step's hosts; a finished step starts the next.
func (a *advancer) run() {
	for {
		st := a.step()
		if st == nil {
			return
		}
		if st.StartTime == nil {
			if a.r.GetState() == pb.Rollout_STATE_PAUSED {
				return // paused between steps: start nothing new
			}
			a.startStep()
		}
		a.judgeStep(st)
		if a.r.GetState() != pb.Rollout_STATE_RUNNING && a.r.GetState() != pb.Rollout_STATE_PAUSED {
			return // halted
		}
		if len(st.GetSucceededHosts())+len(st.GetFailedHosts()) < len(st.GetHosts()) {
			return // in flight
		}
		a.endStep()
		if a.r.GetState() != pb.Rollout_STATE_RUNNING && a.r.GetState() != pb.Rollout_STATE_PAUSED {
			return // succeeded
		}
	}
}

func (a *advancer) judgeStep(st *pb.RolloutStep) {
	timeout := a.r.GetStrategy().GetStepTimeout().AsDuration()
	bake := a.r.GetStrategy().GetBakeTime().AsDuration()
	started := st.GetStartTime().AsTime()
	var keep []string
	for _, name := range st.GetHosts() {
		id := hostID(name)
		if slices.Contains(st.GetSucceededHosts(), name) || slices.Contains(st.GetFailedHosts(), name) {
			keep = append(keep, name)
			continue
		}
		h, ok := a.hosts[id]
		if !ok {
			// Left the group: nothing to judge, nothing to roll back.
			a.event("rollouts.host_left", id, false, "%s left the group during its step", name)
			a.r.MovedHosts = slices.DeleteFunc(a.r.MovedHosts, func(s string) bool { return s == name })
			continue
		}
		keep = append(keep, name)
		b := a.movedBaseline(name)
		healthy, failure := a.judge(h, b)
		switch {
		case failure != "":
			if b.GetHealthySince() != nil && !strings.HasPrefix(failure, "could not") {
				failure = "after " + a.now.Sub(b.GetHealthySince().AsTime()).Round(time.Second).String() + " healthy: " + failure
			}
			a.fail(st, name, failure)
		case healthy:
			if b.GetHealthySince() == nil {
				b.HealthySince = timestamppb.New(a.now)
			}
			if a.now.Sub(b.GetHealthySince().AsTime()) >= bake {
				st.SucceededHosts = append(st.SucceededHosts, name)
				a.event("rollouts.host_succeeded", id, false, "%s healthy at revision %d for %v", name, a.r.GetTargetRevision(), bake)
			}
		default:
			if b.GetHealthySince() != nil {
				// It was healthy and no longer is (disconnected, drifting).
				b.HealthySince = nil
			}
			if a.now.Sub(started) >= timeout {
				why := fmt.Sprintf("not IN_SYNC at revision %d within %v: %s at revision %d", a.r.GetTargetRevision(), timeout,
					strings.TrimPrefix(h.State.String(), "SYNC_STATE_"), h.Applied)
				if !h.Connected {
					why = fmt.Sprintf("not IN_SYNC at revision %d within %v: disconnected", a.r.GetTargetRevision(), timeout)
				} else if h.LastError != "" {
					why += " (" + h.LastError + ")"
				}
				a.fail(st, name, why)
			}
		}
		if a.r.GetState() != pb.Rollout_STATE_RUNNING && a.r.GetState() != pb.Rollout_STATE_PAUSED {
			return
		}
	}
	st.Hosts = keep
}

func (a *advancer) failures() int {
	n := 0
	for _, s := range a.r.GetSteps() {
		n += len(s.GetFailedHosts())
	}
	return n
}

func (a *advancer) fail(st *pb.RolloutStep, name, why string) {
	st.FailedHosts = append(st.FailedHosts, name)
	st.Failures = append(st.Failures, &pb.HostFailure{Host: name, Reason: why})
	a.event("rollouts.host_failed", hostID(name), true, "%s failed: %s", name, why)
	if n := a.failures(); n > int(a.r.GetStrategy().GetMaxFailures()) {
		a.halt(fmt.Sprintf("halted: %d failed hosts, more than max_failures %d; %s: %s", n, a.r.GetStrategy().GetMaxFailures(), name, why))
	}
}

// halt stops the rollout: FAILED, or ROLLING_BACK unless no_rollback.
func (a *advancer) halt(msg string) {
	if st := a.step(); st != nil && st.EndTime == nil {
		st.EndTime = timestamppb.New(a.now)
	}
	a.r.Message = msg
	a.event("rollouts.halted", "", true, "%s", msg)
	if a.r.GetStrategy().GetNoRollback() {
		a.r.State = pb.Rollout_STATE_FAILED
		a.r.EndTime = timestamppb.New(a.now)
		a.res.Done = true
		a.res.DefaultRevision = a.r.GetFromRevision()
		return
	}
	a.beginRollBack()
}

// beginRollBack moves every moved host back to the from-revision.
func (a *advancer) beginRollBack() {
	a.r.State = pb.Rollout_STATE_ROLLING_BACK
	a.r.CurrentStep = int32(len(a.r.GetSteps())) // no step in flight
	a.event("rollouts.rolling_back", "", false, "moving %d hosts back to revision %d", len(a.r.GetMovedHosts()), a.r.GetFromRevision())
	for _, name := range a.r.GetMovedHosts() {
		a.target(hostID(name), a.r.GetFromRevision())
	}
	a.r.Baselines = slices.DeleteFunc(a.r.Baselines, func(b *pb.HostBaseline) bool { return b.GetMoveTime() == nil })
	for _, b := range a.r.GetBaselines() {
		b.HealthySince = nil
		b.MoveTime = timestamppb.New(a.now) // when it was sent back
	}
	a.rollBack()
}

// rollBack waits until every host sent back runs the from-revision
// (applied, IN_SYNC or DEGRADED), has left, or the step timeout passed.
func (a *advancer) rollBack() {
	from := a.r.GetFromRevision()
	timeout := a.r.GetStrategy().GetStepTimeout().AsDuration()
	var pending, unverified []string
	for _, name := range a.r.GetMovedHosts() {
		h, ok := a.hosts[hostID(name)]
		if !ok {
			continue
		}
		var since time.Time
		if b := a.movedBaseline(name); b != nil {
			since = b.GetMoveTime().AsTime()
		}
		back := h.Connected && h.Applied == from &&
			(h.State == pb.SyncState_SYNC_STATE_IN_SYNC || h.State == pb.SyncState_SYNC_STATE_DEGRADED)
		switch {
		case back:
		case a.now.Sub(since) >= timeout:
			unverified = append(unverified, name)
		default:
			pending = append(pending, name)
		}
	}
	if len(pending) > 0 {
		return
	}
	for _, name := range a.r.GetMovedHosts() {
		if !slices.Contains(unverified, name) {
			a.event("rollouts.host_rolled_back", hostID(name), false, "%s runs revision %d again", name, from)
		}
	}
	msg := fmt.Sprintf("%d hosts back on revision %d", len(a.r.GetMovedHosts())-len(unverified), from)
	if len(unverified) > 0 {
		msg += fmt.Sprintf("; not verified within %v: %s", timeout, strings.Join(unverified, ", "))
	}
	a.r.MovedHosts = nil
	a.r.EndTime = timestamppb.New(a.now)
	a.res.Done = true
	a.res.DefaultRevision = from
	if a.r.GetCancelled() {
		a.r.State = pb.Rollout_STATE_CANCELLED
		a.r.Message = cmp.Or(a.r.GetMessage(), "cancelled") + "; " + msg
		a.event("rollouts.cancelled", "", false, "%s", a.r.GetMessage())
		return
	}
	a.r.State = pb.Rollout_STATE_ROLLED_BACK
	a.r.Message += "; " + msg
	a.event("rollouts.rolled_back", "", len(unverified) > 0, "%s", msg)
}

// endStep closes the current step and starts the next one, or succeeds.
func (a *advancer) endStep() {
	st := a.step()
	if st.EndTime == nil {
		st.EndTime = timestamppb.New(a.now)
	}
	a.r.CurrentStep++
	if a.step() == nil {
		a.succeed("every host moved and healthy at revision %d", a.r.GetTargetRevision())
	}
}

func (a *advancer) succeed(format string, args ...any) {
	a.r.State = pb.Rollout_STATE_SUCCEEDED
	a.r.Message = fmt.Sprintf(format, args...)
	a.r.EndTime = timestamppb.New(a.now)
	a.r.CurrentStep = int32(len(a.r.GetSteps()))
	a.res.Done = true
	a.res.DefaultRevision = a.r.GetTargetRevision()
	a.event("rollouts.succeeded", "", false, "%s", a.r.GetMessage())
}

// Cancel is an operator's cancel of an active rollout: moved hosts roll back
// (the rollout then ends CANCELLED), or with no_rollback it ends CANCELLED at
// once and the moved hosts keep the target.
func Cancel(r *pb.Rollout, hosts map[string]Host, actor string, now time.Time) Result {
	a := &advancer{r: proto.CloneOf(r), now: now, hosts: hosts}
	a.r.Strategy = Strategy(a.r.GetStrategy())
	a.r.Cancelled, a.r.LastOperator = true, actor
	a.r.Message = "cancelled by " + actor
	if st := a.step(); st != nil && st.EndTime == nil && st.StartTime != nil {
		st.EndTime = timestamppb.New(now)
	}
	switch {
	case a.r.GetState() == pb.Rollout_STATE_ROLLING_BACK:
		a.rollBack()
	case a.r.GetStrategy().GetNoRollback() || len(a.r.GetMovedHosts()) == 0:
		a.r.State = pb.Rollout_STATE_CANCELLED
		a.r.EndTime = timestamppb.New(now)
		a.res.Done = true
		a.res.DefaultRevision = a.r.GetFromRevision()
		a.event("rollouts.cancelled", "", false, "%s; %d moved hosts keep revision %d", a.r.GetMessage(), len(a.r.GetMovedHosts()), a.r.GetTargetRevision())
	default:
		a.beginRollBack()
	}
	a.r.UpdateTime = timestamppb.New(now)
	a.res.Rollout = a.r
	return a.res
}
