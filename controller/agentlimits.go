package controller

// What an agent may send, and how fast: the bounds a hello, a report and an
// event must keep before anything is stored, and the rate limits of each
// host, kept across its streams.

import (
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/mpfleet/mpfleet/internal/policy"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"golang.org/x/time/rate"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// hostLimits are the rate limits of one host, kept across its streams.
type hostLimits struct {
	events  *rate.Limiter  // audit events
	connect *connectBudget // new streams
	seen    time.Time
}

// connectBudget is a host's budget of new streams: a token bucket, like
// rate.Limiter, that can also give a token back. A stream refused because
// another stream holds the host (ALREADY_EXISTS: another replica's session,
// or a live anonymous stream here) gives its token back: a host that moves
// between replicas after a crash is refused until the dead replica's hold
// expires, and must not be throttled for trying meanwhile.
type connectBudget struct {
	mu     sync.Mutex
	tokens float64
	last   time.Time
}

func newConnectBudget() *connectBudget { return &connectBudget{tokens: connectBurst} }

// take takes a token at now, if there is one.
func (b *connectBudget) take(now time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.last.IsZero() && now.After(b.last) {
		b.tokens = min(connectBurst, b.tokens+float64(now.Sub(b.last))/float64(connectEvery))
	}
	if now.After(b.last) {
		b.last = now
	}
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// giveBack returns a token taken.
func (b *connectBudget) giveBack() {
	b.mu.Lock()
	b.tokens = min(connectBurst, b.tokens+1)
	b.mu.Unlock()
}

// allowConnect takes a token of host id's budget of new streams, and
// reports whether there was one.
func (h *hub) allowConnect(id string) bool { return h.limitsOf(id).connect.take(time.Now()) }

// refused gives back the token of host id's stream when err refused it
// because another stream holds the host, and returns err.
func (h *hub) refused(id string, err error) error {
	if status.Code(err) == codes.AlreadyExists {
		h.limitsOf(id).connect.giveBack()
	}
	return err
}

// Per-host limits: events 5/s (bursts of 20); new streams 1 every 2 s
// (bursts of 10), far above what a healthy agent's backoff makes.
const (
	eventRate     = 5
	eventBurst    = 20
	connectEvery  = 2 * time.Second
	connectBurst  = 10
	maxHostLimits = 200000
)

// limitsOf returns the limits of host id, making them on first use.
func (h *hub) limitsOf(id string) *hostLimits {
	h.limMu.Lock()
	defer h.limMu.Unlock()
	if h.limits == nil {
		h.limits = map[string]*hostLimits{}
	}
	l := h.limits[id]
	if l == nil {
		if len(h.limits) >= maxHostLimits {
			// Forget those not seen for longest: a bound, not a cache.
			for k, v := range h.limits {
				if time.Since(v.seen) > time.Hour {
					delete(h.limits, k)
				}
			}
		}
		l = &hostLimits{events: rate.NewLimiter(eventRate, eventBurst), connect: newConnectBudget()}
		h.limits[id] = l
	}
	l.seen = time.Now()
	return l
}

func validateHello(hello *pb.AgentHello) error {
	var vs policy.Violations
	if hello == nil {
		return invalid("hello", "the first message must be hello")
	}
	policy.ValidateHostID(&vs, "hello.host_id", hello.GetHostId())
	policy.ValidateLabels(&vs, "hello.labels", hello.GetLabels())
	validateFacts(&vs, "hello.facts", hello.GetFacts())
	if len(hello.GetAgentVersion()) > 128 {
		vs = append(vs, policy.FieldViolation{Field: "hello.agent_version", Description: "longer than 128 bytes"})
	}
	return vs.Err()
}

// validateFacts bounds what an agent says of its host, in a hello or a
// report alike.
func validateFacts(vs *policy.Violations, field string, f *pb.HostFacts) {
	add := func(sub, format string, args ...any) {
		*vs = append(*vs, policy.FieldViolation{Field: field + sub, Description: fmt.Sprintf(format, args...)})
	}
	if n := len(f.GetInterfaces()); n > 1024 {
		add(".interfaces", "has %d interfaces; at most 1024", n)
	}
	for _, s := range []struct {
		name string
		v    string
	}{{".hostname", f.GetHostname()}, {".kernel_version", f.GetKernelVersion()}} {
		if len(s.v) > 256 {
			add(s.name, "longer than 256 bytes")
		}
	}
	for _, l := range []struct {
		name string
		v    []string
	}{{".available_sysctls", f.GetAvailableSysctls()}, {".available_schedulers", f.GetAvailableSchedulers()}, {".available_path_managers", f.GetAvailablePathManagers()}} {
		if len(l.v) > 64 {
			add(l.name, "has %d entries; at most 64", len(l.v))
		}
		for _, x := range l.v {
			if len(x) > 64 {
				add(l.name, "has an entry longer than 64 bytes")
				break
			}
		}
	}
	for i, ifc := range f.GetInterfaces() {
		if len(ifc.GetName()) > 64 || len(ifc.GetAddresses()) > 256 || len(ifc.GetGateways()) > 64 {
			add(fmt.Sprintf(".interfaces[%d]", i), "name over 64 bytes, or over 256 addresses or 64 gateways")
			continue
		}
		for _, a := range slices.Concat(ifc.GetAddresses(), ifc.GetGateways()) {
			if len(a) > 64 {
				add(fmt.Sprintf(".interfaces[%d]", i), "has an address or gateway longer than 64 bytes")
				break
			}
		}
	}
}

// validateEvent bounds an agent event before it reaches the audit log.
func validateEvent(ev *pb.AgentEvent) error {
	var vs policy.Violations
	if len(ev.GetMessage()) > 4096 {
		vs = append(vs, policy.FieldViolation{Field: "event.message", Description: "longer than 4096 bytes"})
	}
	if len(ev.GetGroup()) > 80 {
		vs = append(vs, policy.FieldViolation{Field: "event.group", Description: "longer than 80 bytes"})
	}
	if n := len(ev.GetOperations()); n > 1024 {
		vs = append(vs, policy.FieldViolation{Field: "event.operations", Description: fmt.Sprintf("has %d entries; at most 1024", n)})
	}
	for _, op := range ev.GetOperations() {
		if len(op.GetKind()) > 64 || len(op.GetDescription()) > 512 {
			vs = append(vs, policy.FieldViolation{Field: "event.operations", Description: "an operation's kind is over 64 bytes or its description over 512"})
			break
		}
	}
	return vs.Err()
}

// maxHostStatusSize bounds a host's status as stored (proto.Size of
// pb.Host): a hello or a report that would make it larger is refused. The
// bounds of each field allow more; a real host's status is a few KiB.
const maxHostStatusSize = 64 << 10

// maxReportProblems bounds AgentReport.problems: every path (at most 8
// endpoints) and every sysctl and held op, with room to spare.
const maxReportProblems = 64

func validateReport(r *pb.AgentReport) error {
	var vs policy.Violations
	if _, ok := pb.SyncState_name[int32(r.GetSyncState())]; !ok {
		vs = append(vs, policy.FieldViolation{Field: "report.sync_state", Description: "unknown state"})
	}
	if n := len(r.GetApplied().GetEndpoints()); n > 64 {
		vs = append(vs, policy.FieldViolation{Field: "report.applied.endpoints", Description: fmt.Sprintf("has %d entries; at most 64", n)})
	}
	if n := len(r.GetLastPlan()); n > 1024 {
		vs = append(vs, policy.FieldViolation{Field: "report.last_plan", Description: fmt.Sprintf("has %d entries; at most 1024", n)})
	}
	if len(r.GetLastError()) > 4096 {
		vs = append(vs, policy.FieldViolation{Field: "report.last_error", Description: "longer than 4096 bytes"})
	}
	if r.GetFacts() != nil {
		validateFacts(&vs, "report.facts", r.GetFacts())
	}
	if n := len(r.GetExcludedAddresses()); n > 256 {
		vs = append(vs, policy.FieldViolation{Field: "report.excluded_addresses", Description: fmt.Sprintf("has %d entries; at most 256", n)})
	}
	if n := len(r.GetProblems()); n > maxReportProblems {
		vs = append(vs, policy.FieldViolation{Field: "report.problems", Description: fmt.Sprintf("has %d entries; at most %d", n, maxReportProblems)})
	}
	for i, p := range r.GetProblems() {
		if len(p.GetMessage()) > 1024 || len(p.GetInterface()) > 64 || len(p.GetAddress()) > 64 {
			vs = append(vs, policy.FieldViolation{Field: fmt.Sprintf("report.problems[%d]", i), Description: "message over 1024 bytes, or interface or address over 64"})
		}
	}
	if n := len(r.GetHealth().GetPaths()); n > 64 {
		vs = append(vs, policy.FieldViolation{Field: "report.health.paths", Description: fmt.Sprintf("has %d entries; at most 64", n)})
	}
	for i, p := range r.GetHealth().GetPaths() {
		if len(p.GetMessage()) > 1024 || len(p.GetInterface()) > 64 || len(p.GetAddress()) > 64 || len(p.GetGateway()) > 64 {
			vs = append(vs, policy.FieldViolation{Field: fmt.Sprintf("report.health.paths[%d]", i), Description: "message over 1024 bytes, or interface, address or gateway over 64"})
		}
	}
	return vs.Err()
}
