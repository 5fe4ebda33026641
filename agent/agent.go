// Package agent is mpfleet's agent: one per host (per network namespace), it
// connects to the controller, renders its group's policy against the local
// interfaces (policy.Render), reconciles the kernel through netlink
// (reconcile.Plan and Apply: endpoints, limits, sysctls, policy routing),
// keeps it so as addresses and links change and the kernel drifts, and
// reports state, MPTCP health and events of note.
//
// On AgentService.Connect the agent sends a hello (host id, labels, facts,
// the group and revision it applied last, dry run), then a report of its
// current state; the controller answers with the desired configuration at
// once and again on every change. MANAGED: the policy is validated
// (policy.ValidatePolicy; a bad one is rejected with a FAILED report and an
// APPLY_FAILED event, nothing applied), rendered, planned and applied under
// an undo journal. A new revision is reported APPLYING with its plan, then
// confirmed: the agent sends Confirm{nonce} and the controller must echo it
// within the confirm timeout, else the agent reverts the kernel to what it
// read before the apply, reports ROLLED_BACK and does not apply that
// revision again until another comes. A confirmed revision is reported
// IN_SYNC with an APPLIED event and saved in the state dir (atomically), from
// which it is re-applied at the next start before the controller is reached
// (a RESTORED event once connected). UNMANAGED and CONFLICT leave the kernel
// as it is. A failed apply is rolled back by the journal: FAILED and
// APPLY_FAILED with the reason; a new revision that failed is not tried
// again until another comes, and meanwhile the last good one is kept.
// Address and link changes (rtnetlink) trigger a
// reconcile within milliseconds; a periodic resync catches what nothing
// announces, and a change to the kernel under an unchanged configuration is
// reported DRIFTED, repaired and reported DRIFT_REPAIRED. A link that goes
// down loses its policy routing (the kernel drops its routes) but keeps its
// endpoints, so that subflows over it survive a flap; when it returns the
// routing is restored at once, and its "subflow" endpoints are re-created so
// that the in-kernel path manager opens subflows over it again where they
// were lost ("signal" endpoints are not: see recreate). No
// op that would delete the rule or routes the controller connection leaves by
// is applied. A rule or route inside the routing range that mpfleet did not
// make (it lacks route.Protocol) is never changed or deleted: the agent keeps
// its own out of that table and priority and reports it (CODE_ROUTING_CONFLICT,
// DEGRADED); what an agent made before route.Protocol is adopted when it is
// exactly what the policy wants (see foreign.go). Reports follow every change of state and come every report
// interval with fresh health. A lost connection is retried with full-jitter
// exponential backoff; the kernel is never flushed on a disconnect or at
// exit.
//
// The Agent takes its kernel (a reconcile.Kernel per owned routing range)
// and its view of the host (System) as options, so that tests run many
// agents in-process against reconcile.FakeKernel and a fake System, and the
// real program (Run) against NetlinkSystem and reconcile.NetlinkKernel.
package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/mpfleet/mpfleet/internal/mptcp"
	"github.com/mpfleet/mpfleet/internal/policy"
	"github.com/mpfleet/mpfleet/internal/reconcile"
	"github.com/mpfleet/mpfleet/internal/route"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/proto"
)

// Version is the agent's version, as reported in its hello. Set it at build
// time with -ldflags "-X github.com/mpfleet/mpfleet/agent.Version=v1.2.3".
var Version = "dev"

// KernelOpener opens the reconcile.Kernel of the agent's namespace for an
// owned routing range. The agent opens a new one when a policy moves the
// range, and closes a kernel that implements io.Closer when done with it.
type KernelOpener func(rng route.Range) (reconcile.Kernel, error)

// Options configure an Agent. HostID, Controller, Kernel and System are
// required; zero durations take the defaults.
type Options struct {
	// HostID names the host in the fleet: lower-case letters, digits, '-'
	// and '.'.
	HostID string
	// Labels are what groups select the host by.
	Labels map[string]string
	// Controller is the controller's address, host:port.
	Controller string
	// Credentials secure the connection (TLS, mutual TLS); nil is plaintext.
	Credentials credentials.TransportCredentials
	// Token is a bearer token sent with the stream; over plaintext it is
	// only allowed to a loopback controller.
	Token string
	// StateDir keeps the last good configuration; "" keeps nothing.
	StateDir string
	// DryRun computes and reports plans and touches nothing.
	DryRun bool
	// ResyncInterval is how often the kernel is compared with the desired
	// state when nothing announced a change (default 30s).
	ResyncInterval time.Duration
	// ConfirmTimeout is how long the controller has to echo the confirm
	// after a new revision was applied before the agent reverts it
	// (default 10s).
	ConfirmTimeout time.Duration
	// ReportInterval is how often health is reported (default 10s).
	ReportInterval time.Duration
	// Debounce is how long after an address or link change the agent waits
	// for more before it reconciles (default 1ms): the messages of one change
	// come within microseconds of each other.
	Debounce time.Duration
	// BackoffMin and BackoffMax bound the reconnect backoff (default 200ms
	// and 30s, full jitter).
	BackoffMin, BackoffMax time.Duration
	// ConnectTimeout bounds one connection attempt (default 10s).
	ConnectTimeout time.Duration
	// Kernel opens the kernel to reconcile.
	Kernel KernelOpener
	// System observes the host.
	System System
	// Logger receives the agent's log; nil discards it.
	Logger *slog.Logger
	// Version is reported in the hello (default: the package's Version).
	Version string
}

var hostIDRe = regexp.MustCompile(`^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$`)

// ValidateHostID checks a host id as the controller does.
func ValidateHostID(id string) error {
	if !hostIDRe.MatchString(id) {
		return fmt.Errorf("host id %q: use 1-253 lower-case letters, digits, '-' and '.', starting and ending with a letter or digit", id)
	}
	return nil
}

// Agent is one host's agent. Create it with New and run it with Run.
type Agent struct {
	opts Options
	log  *slog.Logger

	sessionC chan *session // connectLoop → loop: a new session
	confirmC chan uint64   // echoed nonces

	desiredMu sync.Mutex
	desired   *pb.DesiredConfig // offered by the controller, not yet taken
	desiredC  chan struct{}     // cap 1: desired was set

	problemMu sync.Mutex
	problems  []error       // connection-level rejections to report
	problemC  chan struct{} // cap 1

	trigger chan struct{} // cap 1: an address or link changed

	downMu sync.Mutex
	down   map[int]bool // links seen going down since the last reconcile

	applied atomic.Pointer[appliedRevision] // what the hello says is applied

	prober *prober

	// localAddr, if set, replaces the controller connection's local
	// address (tests).
	localAddr func() netip.Addr
}

type appliedRevision struct {
	group    string
	revision int64
}

// New checks opts and returns an agent.
func New(opts Options) (*Agent, error) {
	if err := ValidateHostID(opts.HostID); err != nil {
		return nil, err
	}
	var vs policy.Violations
	policy.ValidateLabels(&vs, "labels", opts.Labels)
	if err := vs.Err(); err != nil {
		return nil, err
	}
	switch {
	case opts.Controller == "":
		return nil, errors.New("agent: no controller address")
	case opts.Kernel == nil:
		return nil, errors.New("agent: no kernel")
	case opts.System == nil:
		return nil, errors.New("agent: no system")
	case opts.Token != "" && opts.Credentials == nil && !isLoopback(opts.Controller):
		return nil, fmt.Errorf("agent: refusing to send a bearer token in plaintext to %s: use TLS", opts.Controller)
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&opts.ResyncInterval, 30*time.Second)
	def(&opts.ConfirmTimeout, 10*time.Second)
	def(&opts.ReportInterval, 10*time.Second)
	def(&opts.Debounce, time.Millisecond)
	def(&opts.BackoffMin, 200*time.Millisecond)
	def(&opts.BackoffMax, 30*time.Second)
	def(&opts.ConnectTimeout, 10*time.Second)
	if opts.Version == "" {
		opts.Version = Version
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Agent{
		opts: opts, log: log.With("host", opts.HostID),
		sessionC: make(chan *session),
		confirmC: make(chan uint64, 16),
		desiredC: make(chan struct{}, 1),
		problemC: make(chan struct{}, 1),
		trigger:  make(chan struct{}, 1),
		down:     map[int]bool{},
		prober:   newProber(opts.System),
	}, nil
}

// isLoopback reports whether host:port names a loopback address or
// "localhost".
func isLoopback(hostport string) bool {
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		host = hostport
	}
	if host == "localhost" {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.IsLoopback()
}

// Run runs the agent until ctx ends: it re-applies the last good
// configuration from the state dir, then connects to the controller (and
// reconnects with backoff), follows address and link changes and resyncs
// periodically. It leaves the kernel as it is when it returns. It returns
// nil when ctx ends.
func (a *Agent) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	l := &loop{a: a, log: a.log, flapped: map[int]bool{}, results: pathResults{}}
	defer l.closeKernel()
	var wg sync.WaitGroup
	wg.Go(func() { a.prober.run(ctx) })
	l.boot(ctx)
	wg.Go(func() { a.watchLoop(ctx) })
	wg.Go(func() { a.connectLoop(ctx) })
	l.run(ctx)
	cancel()
	wg.Wait()
	return nil
}

// watchLoop follows address and link changes; when the subscription
// breaks it forces a reconcile (changes may have been missed) and
// subscribes again.
func (a *Agent) watchLoop(ctx context.Context) {
	for {
		err := a.opts.System.Watch(ctx, a.notifyChange)
		if ctx.Err() != nil {
			return
		}
		a.log.Warn("address and link watch broke; resubscribing", "err", err)
		a.kick()
		t := time.NewTimer(time.Second)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return
		}
	}
}

func (a *Agent) notifyChange(c Change) {
	if !c.Addr && c.Down {
		a.downMu.Lock()
		a.down[c.Link] = true
		a.downMu.Unlock()
	}
	a.kick()
}

func (a *Agent) kick() {
	select {
	case a.trigger <- struct{}{}:
	default:
	}
}

func (a *Agent) takeDown() map[int]bool {
	a.downMu.Lock()
	defer a.downMu.Unlock()
	d := a.down
	a.down = map[int]bool{}
	return d
}

// offerDesired hands the controller's latest desired configuration to the
// loop; one not yet taken is replaced.
func (a *Agent) offerDesired(d *pb.DesiredConfig) {
	a.desiredMu.Lock()
	a.desired = d
	a.desiredMu.Unlock()
	select {
	case a.desiredC <- struct{}{}:
	default:
	}
}

func (a *Agent) takeDesired() *pb.DesiredConfig {
	a.desiredMu.Lock()
	defer a.desiredMu.Unlock()
	d := a.desired
	a.desired = nil
	return d
}

func (a *Agent) offerProblem(err error) {
	a.problemMu.Lock()
	a.problems = append(a.problems, err)
	a.problemMu.Unlock()
	select {
	case a.problemC <- struct{}{}:
	default:
	}
}

func (a *Agent) takeProblems() []error {
	a.problemMu.Lock()
	defer a.problemMu.Unlock()
	p := a.problems
	a.problems = nil
	return p
}

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

	sess  *session
	local netip.Addr // local address of the last controller connection

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
	pending     []*pb.AgentEvent
	chase       int // reconciles in a row that left something to do

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
}

// maxChase bounds the reconciles in a row that a kernel still differing
// after an apply triggers.
const maxChase = 3

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
		l.local = s.local
	}
	l.sentFacts = nil
	pending := l.pending
	l.pending = nil
	for _, ev := range pending {
		l.sendEvent(ev)
	}
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

// boot re-applies the last good configuration from the state dir, before
// and without the controller.
func (l *loop) boot(ctx context.Context) {
	if l.a.opts.StateDir == "" {
		return
	}
	d, err := loadState(l.a.opts.StateDir)
	if err != nil {
		l.log.Error("cannot read the state dir; starting without a last good configuration", "err", err)
		l.setState(pb.SyncState_SYNC_STATE_FAILED, err.Error())
		return
	}
	if d == nil || d.GetAssignment() != pb.DesiredConfig_ASSIGNMENT_MANAGED {
		return
	}
	l.log.Info("restoring the last good configuration", "group", d.GetGroup(), "revision", d.GetRevision())
	l.lastGood, l.effective = d, d
	l.publishApplied()
	l.reconcile(ctx, reasonRestore)
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
		l.refused = msg
		l.setState(pb.SyncState_SYNC_STATE_FAILED, msg)
		l.event(pb.AgentEvent_KIND_APPLY_FAILED, d, msg, nil)
		l.lastFailMsg = msg
		l.sendReport(ctx)
		return
	}
	switch d.GetAssignment() {
	case pb.DesiredConfig_ASSIGNMENT_UNMANAGED, pb.DesiredConfig_ASSIGNMENT_CONFLICT:
		// Leave the kernel as it is, and do not restore anything at boot.
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
		l.refused = msg
		l.setState(pb.SyncState_SYNC_STATE_FAILED, msg)
		if msg != l.lastFailMsg {
			l.event(pb.AgentEvent_KIND_APPLY_FAILED, nil, msg, nil)
			l.lastFailMsg = msg
		}
	}
}

// readApplied reads what the kernel holds now, for a report.
func (l *loop) readApplied(ctx context.Context) {
	rng := l.krange
	if l.kernel == nil {
		rng = route.DefaultRange
	}
	k, err := l.kernelFor(ctx, rng)
	if err != nil {
		return
	}
	facts, err := l.a.opts.System.Facts(ctx)
	if err == nil {
		l.facts = facts
	}
	if st, err := k.Read(ctx, reconcile.HostConfig{Range: rng}); err == nil {
		l.applied = policy.AppliedFromState(st, policy.InterfacesFromFacts(l.facts))
	}
}

// kernelFor returns the kernel for the owned range rng, opening it if the
// range changed; the old range's rules and routes are then removed.
func (l *loop) kernelFor(ctx context.Context, rng route.Range) (reconcile.Kernel, error) {
	if l.kernel != nil && l.krange == rng {
		return l.kernel, nil
	}
	k, err := l.a.opts.Kernel(rng)
	if err != nil {
		return nil, fmt.Errorf("open the kernel: %w", err)
	}
	if old := l.kernel; old != nil {
		// The range of a configuration this agent brought about is
		// cleaned; one it left alone (unmanaged) stays as it is.
		if !l.a.opts.DryRun && l.lastRendered != nil {
			l.cleanRange(ctx, old, l.krange)
		}
		closeKernel(old)
	}
	l.kernel, l.krange = k, rng
	return k, nil
}

// cleanRange removes the rules and routes of a range the policy left.
func (l *loop) cleanRange(ctx context.Context, k reconcile.Kernel, rng route.Range) {
	st, err := k.Read(ctx, reconcile.HostConfig{Range: rng})
	if err != nil {
		l.log.Warn("clean the old routing range", "range", rng, "err", err)
		return
	}
	st.Endpoints = explicitEndpoints(st.Endpoints)
	ops, err := reconcile.Plan(reconcile.HostConfig{Range: rng, Endpoints: st.Endpoints}, st)
	if err == nil {
		ops, _ = protect(ops, st, l.localAddr())
		err = reconcile.Apply(ctx, k, ops)
	}
	if err != nil {
		l.log.Warn("clean the old routing range", "range", rng, "err", err)
		return
	}
	l.log.Info("removed the old routing range's rules and routes", "range", rng, "ops", len(ops))
}

func explicitEndpoints(eps []mptcp.Endpoint) []mptcp.Endpoint {
	return slices.DeleteFunc(slices.Clone(eps), func(e mptcp.Endpoint) bool { return e.Flags&mptcp.FlagImplicit != 0 })
}

func closeKernel(k reconcile.Kernel) {
	if c, ok := k.(io.Closer); ok {
		_ = c.Close()
	}
}

func (l *loop) closeKernel() {
	if l.kernel != nil {
		closeKernel(l.kernel)
		l.kernel = nil
	}
}

func (l *loop) localAddr() netip.Addr {
	if l.a.localAddr != nil {
		return l.a.localAddr()
	}
	return l.local
}

// reconcile brings the kernel to the effective configuration rendered
// against the interfaces present now: render, read, plan, apply (journaled),
// confirm a new revision with the controller, read back, report.
func (l *loop) reconcile(ctx context.Context, why reason) {
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
	l.excluded = r.Excluded

	if l.a.opts.DryRun {
		l.pushProbes()
		l.lastPlan = ops
		l.applied = policy.AppliedFromState(actual, ifaces)
		l.dryRevision = 0
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

	l.lastPlan = ops
	switch {
	case newRev:
		l.setState(pb.SyncState_SYNC_STATE_APPLYING, "")
		l.sendReport(ctx)
	case drift:
		l.setState(pb.SyncState_SYNC_STATE_DRIFTED, "")
		l.sendReport(ctx)
	}
	// Probe rounds begun against the kernel as it was are dropped; the
	// paths are probed again once it holds the new state.
	l.probeGen++
	err = reconcile.Apply(ctx, k, ops)
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
		actual, ops = now, again
		l.lastPlan = ops
		err = reconcile.Apply(ctx, k, ops)
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
	}
	if newRev && !l.confirm(ctx) {
		l.rollBack(ctx, d, k, cfg, actual, ifaces)
		l.pushProbes()
		return
	}
	l.lastRendered = rendered
	l.clearFlapped(ifaces)
	switch {
	case why == reasonRestore:
		l.event(pb.AgentEvent_KIND_RESTORED, d, fmt.Sprintf("%s revision %d re-applied from the state dir at start", d.GetGroup(), d.GetRevision()), ops)
	case newRev:
		l.commit(d)
		l.event(pb.AgentEvent_KIND_APPLIED, d, fmt.Sprintf("%s revision %d applied", d.GetGroup(), d.GetRevision()), ops)
	case drift:
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
	notes := slices.Concat(held, policy.ProblemMessages(l.problems()))
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
