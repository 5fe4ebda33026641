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
// which it is re-applied at the next start before the controller is reached,
// and confirmed like a new revision (a RESTORED event once confirmed;
// reverted and ROLLED_BACK if not). UNMANAGED and CONFLICT leave the kernel
// as it is (a host whose group is deleted keeps what it was last given; see
// Cleanup for removing it). A failed apply is rolled back by the journal: FAILED and
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
// is applied, and no plan that would move its route lookup (mgmtpath.go). A rule or route inside the routing range that mpfleet did not
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
// agents in-process against fakekernel.Kernel and a fake System, and the
// real program (Run) against NetlinkSystem and nlkernel.Kernel.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mpfleet/mpfleet/internal/policy"
	"github.com/mpfleet/mpfleet/internal/reconcile"
	"github.com/mpfleet/mpfleet/internal/route"
	"github.com/mpfleet/mpfleet/internal/version"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/credentials"
)

// Version is the agent's version, as reported in its hello: the build's,
// which make build stamps from git (package internal/version).
var Version = version.Get().Version

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
	// Controller is the controller's address, host:port, or the addresses
	// of several replicas separated by commas; a name may resolve to
	// several. The agent holds one stream, to one replica at a time, and
	// moves to another when its replica goes away (controllers.go).
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
	// LookupHost resolves a controller name to the addresses of its
	// replicas, afresh for every round through them (default: the system
	// resolver).
	LookupHost func(ctx context.Context, host string) ([]netip.Addr, error)
	// Kernel opens the kernel to reconcile.
	Kernel KernelOpener
	// System observes the host.
	System System
	// Logger receives the agent's log; nil discards it.
	Logger *slog.Logger
	// Version is reported in the hello (default: the package's Version).
	Version string
	// OnReconcile, if set, is called on the agent's loop at the end of
	// every reconcile pass with its outcome, so that a caller (a test) can
	// wait for passes rather than for time. It must return at once and not
	// call into the agent.
	OnReconcile func(Pass)
	// Metrics, if set, gets the agent's Prometheus collectors
	// (mpfleet_agent_*, metrics.go); New fails if they cannot be
	// registered there. Run registers them in the registry it serves on
	// --metrics-listen.
	Metrics prometheus.Registerer
}

// ValidateHostID checks a host id as the controller does (policy.ValidHostID).
func ValidateHostID(id string) error {
	if !policy.ValidHostID(id) {
		return fmt.Errorf("host id %q: use 1-253 lower-case letters, digits, '-' and '.', starting and ending with a letter or digit", id)
	}
	return nil
}

// Agent is one host's agent. Create it with New and run it with Run.
type Agent struct {
	opts Options
	log  *slog.Logger

	controllers []string     // Options.Controller, parsed
	lookup      lookupFunc   // resolves controller names
	drains      atomic.Int64 // drains that moved the agent (tests)

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

	hot hotplugBox // the fast path for added addresses (hotplug.go)

	applied atomic.Pointer[appliedRevision] // what the hello says is applied

	evlog eventLog // numbers the events, and what the controller acknowledged (report.go)

	metrics  *agentMetrics
	streamUp atomic.Bool            // a stream to a controller is up (ready.go)
	failure  atomic.Pointer[string] // why the last pass failed; nil: it did not

	prober *prober

	// localAddr, if set, replaces the controller connection's local
	// address (tests).
	localAddr func() netip.Addr
	// dialHook, if set, dials the controller instead of d (tests).
	dialHook func(ctx context.Context, d *net.Dialer, addr string) (net.Conn, error)
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
	if opts.Controller == "" {
		return nil, errors.New("agent: no controller address")
	}
	controllers, err := parseControllers(opts.Controller)
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	switch {
	case opts.Kernel == nil:
		return nil, errors.New("agent: no kernel")
	case opts.System == nil:
		return nil, errors.New("agent: no system")
	case opts.Token != "" && opts.Credentials == nil && !allLoopback(controllers):
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
	lookup := lookupFunc(defaultLookup)
	if opts.LookupHost != nil {
		lookup = opts.LookupHost
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m := newAgentMetrics(opts.System, log.With("host", opts.HostID))
	if opts.Metrics != nil {
		if err := m.register(opts.Metrics); err != nil {
			return nil, fmt.Errorf("agent: metrics: %w", err)
		}
	}
	return &Agent{
		opts: opts, log: log.With("host", opts.HostID),
		controllers: controllers, lookup: lookup,
		sessionC: make(chan *session),
		confirmC: make(chan uint64, 16),
		desiredC: make(chan struct{}, 1),
		problemC: make(chan struct{}, 1),
		trigger:  make(chan struct{}, 1),
		down:     map[int]bool{},
		prober:   newProber(opts.System),
		metrics:  m,
	}, nil
}

// Run runs the agent until ctx ends: it re-applies the last good
// configuration from the state dir while it connects to the controller
// (which must confirm it), stays connected (reconnecting with backoff),
// follows address and link changes and resyncs periodically. It leaves the kernel as it is when it returns. It returns
// nil when ctx ends. Unless it is a dry run, it holds the state dir's lock
// while it runs, and fails at once, wrapping ErrStateDirInUse, when another
// agent holds it.
func (a *Agent) Run(ctx context.Context) error {
	if a.opts.StateDir != "" && !a.opts.DryRun {
		release, err := lockStateDir(a.opts.StateDir, true)
		if err != nil {
			return fmt.Errorf("agent: %w", err)
		}
		defer release()
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	l := &loop{a: a, log: a.log, flapped: map[int]bool{}, results: pathResults{}}
	defer l.closeKernel()
	var wg sync.WaitGroup
	wg.Go(func() { a.prober.run(ctx) })
	restore := l.boot()
	l.publish()
	wg.Go(func() { a.watchLoop(ctx) })
	wg.Go(func() { a.pathEventLoop(ctx) })
	wg.Go(func() { a.connectLoop(ctx) })
	if restore {
		// Applied while the controller is being reached, and confirmed by
		// it like a new revision (see confirm.go).
		l.reconcile(ctx, reasonRestore)
	}
	l.run(ctx)
	cancel()
	wg.Wait()
	return nil
}
